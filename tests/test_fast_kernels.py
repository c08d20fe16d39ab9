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
  dense encoding (encode_codes): atol 1e-6 on values in [0, 1]. It counts 0/1 hits and divides
    by the window's pixel count as AvgPool2d does (exact on the CPU; a GPU's fp32 division may
    land an ulp away); a wrong channel, pixel or count is off by 1/9 or more.
  finalize alone: 1e-5 relative, on statistics of O(10) means rounded once to fp32.
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

from p2phd_infer.kernels._backend import INDEX_LIMIT, check_index_range, index64, triton_device
from p2phd_infer.kernels.feature_scatter import _feature_scatter_triton
from p2phd_infer.kernels.instance_mean import _instance_mean_triton
from p2phd_infer.kernels.instance_norm import (MAX_CHUNKS, finalize_stats, instance_norm_act,
                                               instance_norm_act_reference,
                                               instance_norm_act_triton)
from p2phd_infer.kernels.label_conv import (LabelConv, build_table, encode_codes, label_codes,
                                            label_conv, label_conv_reference, label_conv_triton,
                                            pooled_size)
from p2phd_infer.labels import edge_map, encode_labels

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
@pytest.mark.parametrize("use_instance", [True, False])
def test_encode_codes_channel_blocks(gen, pool, use_instance):
    """The dense encoding in programs of 16 channels (the GPU tiling: 40 channels padded to 48,
    the last 8 masked), and in one program of all of them (the CPU tiling): both the one-hot
    (+ edge), pooled as AvgPool2d(3, 2, 1, count_include_pad=False), zeros after."""
    B, H, W, L = 2, 9, 11, 35
    lab, inst = _labels(gen, B, H, W, L)
    edge = edge_map(inst) if use_instance else None
    ref = encode_labels(lab, inst, L, use_instance)
    if pool:
        ref = torch.nn.functional.avg_pool2d(ref, 3, 2, 1, count_include_pad=False)
    ref = torch.nn.functional.pad(ref, (0, 0, 0, 0, 0, 40 - ref.shape[1]))
    code = label_codes(lab, edge, L).to(DEV)
    for tiles in ({"tile_c": 16, "tile_p": 16}, {}):
        for cl in (True, False):
            out = encode_codes(code, L, use_instance, 40, pool, torch.float32, cl, **tiles)
            assert out.shape == ref.shape and out.is_contiguous(
                memory_format=torch.channels_last if cl else torch.contiguous_format)
            err = (out.cpu() - ref).abs().max().item()
            assert err <= 1e-6, f"{tiles} cl={cl}: {err:.3g} (seed {gen.initial_seed()})"


def test_fast_generator_first_layers_stay_channels_last(gen, monkeypatch):
    """G1's first layer (the dense path: encode_codes + a cuDNN convolution) and its
    InstanceNorm keep channels_last: the padded input and the weight of every convolution in a
    first layer are channels_last (a reflection pad may return NCHW, and one NCHW operand makes
    the convolution NCHW), and so are the layer's output and its norm's. The image still equals
    the Synthesizer's (1e-4, as tests/test_fast_generator.py)."""
    import copy

    from p2phd_infer.config import ModelConfig
    from p2phd_infer.engines.fast import FastGenerator
    from p2phd_infer.networks import build_generator
    from p2phd_infer.synthesizer import Synthesizer

    cfg = ModelConfig(label_nc=5, netG="local", ngf=4, n_downsample_global=1, n_blocks_global=1,
                      n_local_enhancers=1, n_blocks_local=1, feat_num=2)
    torch.manual_seed(gen.initial_seed())
    g = build_generator(cfg).eval()
    lab, inst = _labels(gen, 1, 24, 20, cfg.label_nc)
    feat = torch.randn(1, 2, 24, 20, generator=gen)
    fast = FastGenerator(cfg, copy.deepcopy(g), DEV, torch.float32, channels_last=True,
                         backend="triton", lookup_pooled=False)
    cl = torch.channels_last
    convs, layers, norms = [], {}, []
    conv2d = torch.nn.functional.conv2d

    def spy_conv(x, w, *a, **k):
        convs.append((tuple(x.shape), x.is_contiguous(memory_format=cl),
                      w.is_contiguous(memory_format=cl)))
        return conv2d(x, w, *a, **k)

    first, norm = fast._first_layer, fast._norm

    def spy_first(name, *a):
        monkeypatch.setattr(torch.nn.functional, "conv2d", spy_conv)
        try:
            out = first(name, *a)
        finally:
            monkeypatch.setattr(torch.nn.functional, "conv2d", conv2d)
        layers[name] = out.is_contiguous(memory_format=cl)
        return out

    def spy_norm(x, *a):
        out = norm(x, *a)
        norms.append(out.is_contiguous(memory_format=cl))
        return out

    monkeypatch.setattr(fast, "_first_layer", spy_first)
    monkeypatch.setattr(fast, "_norm", spy_norm)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        ref = Synthesizer(cfg, g)(lab, inst, feat)
        out = fast(lab.to(DEV), inst.to(DEV), feat.to(DEV))
    assert not fast._first["model"].lookup          # G1: the dense path
    assert len(convs) >= 2                           # its one-hot conv and its feature conv
    assert all(x_cl and w_cl for _, x_cl, w_cl in convs), convs
    assert layers == {"model": True, "model1_1": True}, layers
    assert norms[0], "G1's first InstanceNorm is not channels_last"
    err = (out.cpu() - ref).abs().max().item()
    assert err <= 1e-4, f"max |fast - synthesizer| = {err:.3g} (seed {gen.initial_seed()})"


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


@pytest.mark.parametrize("B,C,chunk,nchunk", [(1, 5, 7, MAX_CHUNKS), (2, 37, 3, 37)])
def test_instance_norm_finalize_takes_every_chunk(gen, B, C, chunk, nchunk):
    """finalize on partials of its most chunks (MAX_CHUNKS = 1024 in one tile, 2 channels per
    program) and an odd count of them over several channel programs, the last chunk short: the
    mean and 1/sqrt(var + eps) of all the pixels (statistics the stats pass would have made,
    formed here in float64 and rounded once)."""
    HW = chunk * nchunk - 2
    x = torch.randn(B, C, HW, generator=gen, dtype=torch.float64) * 3 + 10
    part = torch.empty(B, nchunk, 2, C, dtype=torch.float64)
    for k in range(nchunk):
        xs = x[:, :, k * chunk:(k + 1) * chunk]
        part[:, k, 0] = xs.mean(2)
        part[:, k, 1] = ((xs - xs.mean(2, keepdim=True)) ** 2).sum(2)
    stats = finalize_stats(part.float().to(DEV), HW, chunk).cpu().double()
    mean, var = x.mean(2), x.var(2, unbiased=False)
    assert (stats[:, 0] - mean).abs().max().item() <= 1e-5 * mean.abs().max().item()
    rstd = 1 / torch.sqrt(var + 1e-5)
    assert ((stats[:, 1] - rstd) / rstd).abs().max().item() <= 1e-5, f"seed {gen.initial_seed()}"
    with pytest.raises(ValueError, match="chunks"):
        finalize_stats(part.float().to(DEV), HW, chunk + 1)
    with pytest.raises(ValueError, match="max_chunks"):
        instance_norm_act_triton(torch.zeros(1, 1, 4, 4, device=DEV), max_chunks=MAX_CHUNKS + 1)


# --- int32 / int64 indexing ------------------------------------------------------------------

try:
    import triton
    import triton.language as tl

    @triton.jit
    def _offsets_kernel(i_ptr, wide_ptr, narrow_ptr, stride, N: tl.constexpr):
        k = tl.arange(0, N)
        i = tl.load(i_ptr + k)
        tl.store(wide_ptr + k, index64(i, stride))
        tl.store(narrow_ptr + k, (i * stride).to(tl.int64))   # the int32 product, for contrast
except ImportError:
    triton = None


@pytest.mark.skipif(DEV != "cpu", reason="runs a probe kernel in Triton's CPU interpreter")
def test_index64_products_pass_2_31():
    """The kernels' address helper gives the exact int64 product where the int32 one wraps (a
    1024-channel 2048x1024 map: channel 1023 x stride 2^21 = 2^31 - 2^21; row 1023 x 2^21 ...).
    The plain int32 product, computed alongside, wraps in the interpreter as on the GPU, so this
    tells the two apart."""
    idx = [0, 1, 1023, 1024, 70000, 2**31 - 1, 5, 3]
    i = torch.tensor(idx, dtype=torch.int32)
    wide = torch.empty(8, dtype=torch.int64)
    narrow = torch.empty(8, dtype=torch.int64)
    stride = 2**21                                  # W x C of a channels_last 2048x1024x1024 map
    _offsets_kernel[(1,)](i, wide, narrow, stride, N=8)
    exact = [v * stride for v in idx]
    assert wide.tolist() == exact
    assert narrow.tolist() != exact                 # int32 wraps: what index64 is for
    assert max(exact) >= INDEX_LIMIT


def test_launchers_refuse_int32_overflow_before_launch():
    """Where an index stays int32 (pixels of a launch or of a sample), a launch that would pass
    2^31 raises first, naming the kernel. Meta tensors: nothing is allocated, nothing runs."""
    meta = torch.device("meta")
    check_index_range("x", INDEX_LIMIT - 1)
    with pytest.raises(ValueError, match="int32 index range"):
        check_index_range("x", INDEX_LIMIT)
    code = torch.empty(2, 1, 32768, 32768, dtype=torch.uint8, device=meta)    # 2^31 pixels
    table = torch.empty(49, 12, 16, device=meta)
    with pytest.raises(ValueError, match="label_conv: pixels per launch"):
        label_conv_triton(code, table, torch.empty(16, device=meta), 16)
    with pytest.raises(ValueError, match="encode_codes: pixels per launch"):
        encode_codes(code, 5, True, 8, pool=True)
    x = torch.empty(1, 1, 46341, 46341, device=meta)                         # > 2^31 pixels
    with pytest.raises(ValueError, match="instance_norm_act: pixels per sample"):
        instance_norm_act_triton(x)
    feat = torch.empty(1, 1, 32768, 32769, device=meta)                       # > 2^30: P = 2^31
    with pytest.raises(ValueError, match="instance_mean: hash slots per sample"):
        _instance_mean_triton(feat, torch.empty(1, 1, 32768, 32769, dtype=torch.int32,
                                                device=meta))
    inst = torch.empty(1, 1, 46341, 46341, dtype=torch.int32, device=meta)
    with pytest.raises(ValueError, match="feature_scatter: pixels per sample"):
        _feature_scatter_triton(inst, torch.empty(1, 4, dtype=torch.int32, device=meta),
                                torch.empty(1, 4, 3, device=meta))
