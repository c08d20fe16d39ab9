"""Label-aware first layers and fused InstanceNorm: each Triton kernel against its plain-torch
reference on fresh random inputs (seed printed on failure).

Without CUDA the kernels run in Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1
before triton is imported), with CUDA compiled on the GPU. Shapes are tiny and odd on purpose:
every reflection border, partial blocks, blocks spanning two samples, several programs.

Tolerances:
  label conv, fp32 out, fp32 table: rtol 1e-5 of max|ref|. The lookup sums the same products as
    the convolution (weight x 1), in another order; over 49 taps (441 for the pooled one) of
    N(0,1) weights fp32 reordering moves a sum by ~1e-6 relative. A wrong tap, class, edge or
    border index moves it by a whole weight, ~1/10 of max|ref| or more.
  label conv, fp16 out with fp16 table: 3e-3 of max|ref|: each table entry rounds once (2^-11
    relative) and the output rounds once; 49 independent roundings add ~7x one.
  instance norm, fp32: atol 2e-5 on outputs of order 1-4 (fp32 statistics over <= 600 values in
    another order, ~1e-6); the large-mean case (mean 100, std 0.1) is held to 4x the error of
    torch's own fp32 instance_norm against a float64 one, since there the input's own rounding
    dominates.
  instance norm, fp16 / bf16 out: one unit in the last place at |x| <= 4 (fp16 4e-3, bf16 3e-2):
    both sides compute in fp32 and round once at the end.
"""
from __future__ import annotations

import random

import pytest
import torch

from p2phd_infer.kernels._backend import triton_device
from p2phd_infer.kernels.instance_norm import (instance_norm_act, instance_norm_act_reference,
                                               instance_norm_act_triton)
from p2phd_infer.kernels.label_conv import (LabelConv, build_table, label_codes, label_conv,
                                            label_conv_reference, label_conv_triton, pooled_size)
from p2phd_infer.labels import edge_map

CUDA = torch.cuda.is_available()
DEV, WHY = triton_device()
pytestmark = pytest.mark.skipif(DEV is None, reason=WHY)


@pytest.fixture
def gen():
    # A fresh seed every run; failures print it (gen.initial_seed()) to replay.
    return torch.Generator().manual_seed(random.randrange(2**31))


def _labels(gen, B, H, W, label_nc):
    """Every class 0..label_nc-1 appears (the last one too), plus ids outside the range (-1,
    label_nc, 255), which the one-hot encodes as all zeros."""
    lab = torch.randint(0, label_nc, (B, 1, H, W), generator=gen, dtype=torch.int32)
    flat = lab.view(-1)
    perm = torch.randperm(flat.numel(), generator=gen)
    extra = torch.tensor(list(range(label_nc)) + [-1, label_nc, 255], dtype=torch.int32)
    flat[perm[:extra.numel()]] = extra
    # Blobs too, so edges and uniform windows both occur.
    lab[:, :, : H // 2, : W // 2] = label_nc - 1
    inst = torch.randint(0, 3, (B, 1, H, W), generator=gen, dtype=torch.int32)
    inst[:, :, H // 2:, :] = 26001
    return lab, inst


def _close(out, ref, rel, seed, what=""):
    scale = ref.abs().max().item()
    err = (out.double() - ref.double()).abs().max().item()
    assert err <= rel * scale, f"{what} max err {err:.3g} > {rel} x {scale:.3g} (seed {seed})"


# --- label conv ------------------------------------------------------------------------------

def test_table_rows_are_weight_columns(gen):
    w = torch.randn(5, 4 + 1 + 2, 7, 7, generator=gen)
    t = build_table(w, 4, True)
    assert t.shape == (49, (4 + 1) * 2, 16)
    tap = 3 * 7 + 5
    assert torch.equal(t[tap, 2 * 2 + 0, :5], w[:, 2, 3, 5])               # class 2, no edge
    assert torch.allclose(t[tap, 2 * 2 + 1, :5], w[:, 2, 3, 5] + w[:, 4, 3, 5])  # + edge
    assert torch.equal(t[tap, 2 * 4 + 0, :5], torch.zeros(5))              # no class
    assert torch.equal(t[tap, 2 * 4 + 1, :5], w[:, 4, 3, 5])               # no class, edge
    assert torch.equal(t[..., 5:], torch.zeros(49, 10, 11))                # channel padding


def test_codes():
    lab = torch.tensor([[[[0, 3, -1, 4, 200]]]], dtype=torch.int32)
    edge = torch.tensor([[[[True, False, True, False, True]]]])
    assert label_codes(lab, edge, 4).view(-1).tolist() == [1, 6, 9, 8, 9]
    assert label_codes(lab, None, 4).view(-1).tolist() == [0, 3, 4, 4, 4]


CASES = [  # (pool, use_instance, feat_num, B, H, W, label_nc, O, channels_last)
    (False, True, 0, 2, 11, 9, 6, 5, False),
    (False, False, 2, 1, 8, 13, 4, 20, True),
    (True, True, 2, 2, 9, 10, 5, 7, True),
    (True, False, 0, 1, 8, 8, 3, 33, False),
]


@pytest.mark.parametrize("pool,use_instance,feat_num,B,H,W,label_nc,O,cl", CASES)
def test_label_conv_fp32(gen, pool, use_instance, feat_num, B, H, W, label_nc, O, cl):
    lab, inst = _labels(gen, B, H, W, label_nc)
    cin = label_nc + int(use_instance) + feat_num
    w = torch.randn(O, cin, 7, 7, generator=gen)
    b = torch.randn(O, generator=gen)
    feat = torch.randn(B, feat_num, H, W, generator=gen) if feat_num else None
    ref = label_conv_reference(lab, inst, w, b, label_nc, use_instance, feat, pool)
    to = (lambda t: None if t is None else t.to(DEV))
    lc = LabelConv(w.to(DEV), b.to(DEV), label_nc, use_instance, pool).to(DEV, torch.float32)
    edge = edge_map(inst.to(DEV)) if use_instance else None
    out = lc(lab.to(DEV), edge, to(feat), channels_last=cl)
    assert out.shape == ref.shape
    assert out.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    _close(out.cpu(), ref, 1e-5, gen.initial_seed(), f"cl={cl}")
    # Several programs, blocks that span two samples; the one-call helper too.
    code = label_codes(lab.to(DEV), edge, label_nc)
    add = lc.feature_part(to(feat)) if feat is not None else None
    tile_p = 32 if pool else 16    # the pooled lookup is 9x the work: fewer programs
    out = label_conv_triton(code, lc.table, lc.bias, O, pool, add, tile_p=tile_p)
    _close(out.cpu(), ref, 1e-5, gen.initial_seed(), f"tile_p={tile_p}")


def test_label_conv_one_call_and_dense_path(gen):
    lab, inst = _labels(gen, 2, 10, 12, 4)
    w = torch.randn(6, 4 + 1 + 1, 7, 7, generator=gen)
    b = torch.randn(6, generator=gen)
    feat = torch.randn(2, 1, 10, 12, generator=gen)
    for pool in (False, True):
        ref = label_conv_reference(lab, inst, w, b, 4, True, feat, pool)
        out = label_conv(lab.to(DEV), inst.to(DEV), w.to(DEV), b.to(DEV), 4, True, feat.to(DEV),
                         pool, backend="triton") if not pool else None
        if out is not None:
            _close(out.cpu(), ref, 1e-5, gen.initial_seed(), "label_conv()")
        # lookup=False: one-pass dense encoding (pooled when asked) + convolution.
        dense = LabelConv(w.to(DEV), b.to(DEV), 4, True, pool, lookup=False).to(DEV,
                                                                                torch.float32)
        out = dense(lab.to(DEV), edge_map(inst.to(DEV)), feat.to(DEV), channels_last=True)
        _close(out.cpu(), ref, 1e-5, gen.initial_seed(), f"dense pool={pool}")
    assert torch.equal(label_conv(lab, inst, w, b, 4, True, feat, backend="torch"),
                       label_conv_reference(lab, inst, w, b, 4, True, feat))


@pytest.mark.parametrize("pool", [False, True])
def test_label_conv_fp16(gen, pool):
    B, H, W, L = 1, 12, 10, 5
    lab, inst = _labels(gen, B, H, W, L)
    w = torch.randn(16, L + 1, 7, 7, generator=gen) * 0.1
    b = torch.randn(16, generator=gen) * 0.1
    ref = label_conv_reference(lab, inst, w, b, L, True, None, pool)
    lc = LabelConv(w.to(DEV), b.to(DEV), L, True, pool,
                   table_dtype=torch.float16).to(DEV, torch.float16)
    out = lc(lab.to(DEV), edge_map(inst.to(DEV)), out_dtype=torch.float16, channels_last=True)
    assert out.dtype == torch.float16
    _close(out.float().cpu(), ref, 3e-3, gen.initial_seed(), "fp16")


def test_label_conv_bad_input():
    w = torch.randn(4, 3, 7, 7)
    with pytest.raises(ValueError, match="7x7"):
        build_table(torch.randn(4, 3, 3, 3), 2, True)
    with pytest.raises(ValueError, match="at least 4x4"):
        lc = LabelConv(w.to(DEV), None, 2, True).to(DEV, torch.float32)
        lc(torch.zeros(1, 1, 3, 8, dtype=torch.int32, device=DEV),
           torch.zeros(1, 1, 3, 8, dtype=torch.bool, device=DEV))
    assert pooled_size(1024) == 512 and pooled_size(15) == 8


# --- instance norm ---------------------------------------------------------------------------

IN_CASES = [  # (relu, residual, pad)
    (True, False, 0), (False, True, 0), (True, False, 1), (False, True, 1), (True, True, 3),
]


@pytest.mark.parametrize("relu,res,pad", IN_CASES)
@pytest.mark.parametrize("cl", [False, True])
def test_instance_norm_fp32(gen, relu, res, pad, cl):
    B, C, H, W = 2, 5, 9, 12
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = (torch.randn(B, C, H, W, generator=gen) * 2 + 1).contiguous(memory_format=fmt)
    r = torch.randn(B, C, H, W, generator=gen).contiguous(memory_format=fmt) if res else None
    ref = instance_norm_act_reference(x, relu, r, pad)
    out = instance_norm_act(x.to(DEV), relu, None if r is None else r.to(DEV), pad,
                            backend="triton")
    assert out.shape == (B, C, H + 2 * pad, W + 2 * pad)
    assert out.is_contiguous(memory_format=fmt)
    err = (out.cpu() - ref).abs().max().item()
    assert err <= 2e-5, f"max err {err:.3g} (seed {gen.initial_seed()})"


# Two units in the last place of the output, relative to its magnitude (at least 1): the kernel
# and the fp32 reference differ only by the final rounding to the half type and fp32 sum order.
# (An absolute bound fails for honest reasons: bf16's ulp at 8..16 is 0.0625.)
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2.0**-9), (torch.bfloat16, 2.0**-6)])
def test_instance_norm_half(gen, dtype, tol):
    B, C, H, W = 1, 7, 10, 11
    x = (torch.randn(B, C, H, W, generator=gen) * 3 + 2).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    r = torch.randn(B, C, H, W, generator=gen).to(dtype)          # NCHW residual, NHWC x
    ref = instance_norm_act_reference(x.float(), True, r.float(), 1)
    out = instance_norm_act_triton(x.to(DEV), True, r.to(DEV), 1)
    assert out.dtype == dtype
    err = ((out.float().cpu() - ref).abs() / ref.abs().clamp_min(1)).max().item()
    assert err <= tol, f"max relative err {err:.3g} (seed {gen.initial_seed()})"


@pytest.mark.parametrize("cl", [False, True])
def test_instance_norm_tiles_chunks_views(gen, cl):
    """Many tiles, several chunks merged, two channel blocks, a padded-buffer view as input and
    residual (what the generator feeds it), and a large mean with a small spread."""
    B, C, H, W = 2, 37, 7, 9
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = (torch.randn(B, C, H, W, generator=gen) * 0.1 + 100).contiguous(memory_format=fmt)
    ref64 = instance_norm_act_reference(x.double(), True, None, 1)
    torch_err = (instance_norm_act_reference(x, True, None, 1).double() - ref64).abs().max()
    for tile_p, max_chunks in [(16, 1024), (16, 2)]:
        out = instance_norm_act_triton(x.to(DEV), True, None, 1, tile_p=tile_p, tile_c=16,
                                       max_chunks=max_chunks)
        err = (out.cpu().double() - ref64).abs().max().item()
        assert err <= 4 * torch_err + 1e-6, \
            f"tile_p={tile_p} chunks={max_chunks}: {err:.3g} vs torch {torch_err:.3g} " \
            f"(seed {gen.initial_seed()})"
    buf = torch.randn(B, C, H + 2, W + 2, generator=gen).contiguous(memory_format=fmt)
    xin, res = buf[:, :, 1:-1, 1:-1], buf.flip(1)[:, :, 1:-1, 1:-1]
    ref = instance_norm_act_reference(xin, False, res, 1)
    out = instance_norm_act_triton(xin.to(DEV), False, res.to(DEV), 1, tile_p=16, tile_c=16)
    err = (out.cpu() - ref).abs().max().item()
    assert err <= 2e-5, f"views: {err:.3g} (seed {gen.initial_seed()})"


def test_instance_norm_small_maps_and_errors(gen):
    # Maps smaller than 2*pad+2 take the pad-afterwards path.
    x = torch.randn(1, 3, 4, 5, generator=gen)
    for pad in (1, 3):
        ref = instance_norm_act_reference(x, True, None, pad)
        out = instance_norm_act_triton(x.to(DEV), True, None, pad)
        assert (out.cpu() - ref).abs().max().item() <= 2e-5
    with pytest.raises(ValueError, match="residual"):
        instance_norm_act_triton(x.to(DEV), False, torch.zeros(1, 3, 4, 4, device=DEV))
    with pytest.raises(ValueError, match="backend"):
        instance_norm_act(x, backend="cuda")
