"""Kernels: each reference against a naive per-instance/per-pixel loop, each Triton kernel against
its reference on fresh random inputs.

Without CUDA the Triton kernels run in Triton's CPU interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before triton is imported); with CUDA they run compiled on the GPU, and the
CUDA-only tests (no host synchronisation, CUDA-graph capture, a Cityscapes-sized frame) run too.
The interpreter is slow (its custom scan runs element by element), so images here are small.

Tolerances:
  instance mean, fp32 out: rtol = atol = 1e-5. Both sides accumulate in fp32, in different orders
    (atomics of per-run sums vs index_add_); over <= 4096 N(0,1) values that moves a mean by
    ~1e-7 typically, far below 1e-5, while a wrong id/sample mix-up moves it by ~0.1 or more.
  fp16 / bf16 out: one unit in the last place of the output (fp16 1e-3, bf16 8e-3 at |x| <= 1):
    the two fp32 means can round to neighbouring values.
  feature scatter: exact. It compares integers and copies table entries; no arithmetic happens.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from p2phd_infer.kernels import (feature_scatter, feature_scatter_reference, instance_mean,
                                 instance_mean_reference)
from p2phd_infer.kernels._backend import triton, triton_device
from p2phd_infer.kernels.instance_mean import _instance_mean_triton

CUDA = torch.cuda.is_available()
DEV, WHY = triton_device()
needs_triton = pytest.mark.skipif(DEV is None, reason=WHY)
needs_cuda = pytest.mark.skipif(not CUDA or triton is None,
                                reason="needs a CUDA GPU and triton (compiled kernels, graphs)")

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=1e-3, atol=1e-3),
       torch.bfloat16: dict(rtol=8e-3, atol=8e-3)}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def scene(B: int, H: int, W: int, ids: list[int], g: torch.Generator, n_boxes: int = 12,
          dtype=torch.int32) -> torch.Tensor:
    """Cityscapes-like instance map: stuff bands (ids[0..2]) and boxes of ids[3:], so rows hold
    long runs that cross kernel blocks. The same ids appear in every sample, at other places."""
    inst = torch.empty(B, 1, H, W, dtype=torch.int64)
    for b in range(B):
        inst[b, 0, : H // 3] = ids[0]
        inst[b, 0, H // 3: 2 * H // 3] = ids[1]
        inst[b, 0, 2 * H // 3:] = ids[2]
        for _ in range(n_boxes):
            y0, x0 = torch.randint(0, H, (2,), generator=g).tolist()
            y0, x0 = y0 % H, (x0 * W // H) % W
            h, w = torch.randint(1, max(2, H // 2), (2,), generator=g).tolist()
            k = ids[3 + int(torch.randint(0, len(ids) - 3, (1,), generator=g))]
            inst[b, 0, y0:y0 + h, x0:x0 + w] = k
    return inst.to(dtype)


# ---------------------------------------------------------------- naive definitions (loops)

def naive_instance_mean(feat: torch.Tensor, inst: torch.Tensor) -> torch.Tensor:
    out = torch.empty(feat.shape, dtype=torch.float64)
    for b in range(feat.shape[0]):
        for i in inst[b].unique().tolist():
            m = inst[b, 0] == i
            for c in range(feat.shape[1]):
                out[b, c][m] = feat[b, c][m].double().mean()
    return out


def naive_feature_scatter(inst, inst_ids, table):
    B, _, H, W = inst.shape
    out = torch.zeros(B, table.shape[2], H, W, dtype=table.dtype)
    for b in range(B):
        for k in reversed(range(inst_ids.shape[1])):  # earlier listings overwrite later ones
            m = inst[b, 0] == int(inst_ids[b, k])
            out[b][:, m] = table[b, k][:, None]
    return out


# ---------------------------------------------------------------- references vs naive loops

def test_instance_mean_reference_matches_loop():
    g = gen(0)
    inst = scene(3, 12, 20, [7, 11, 23, 26001, 26002, 24001, 2**31 - 1], g)
    inst[1, 0, 0, 0] = 32768  # a one-pixel instance
    feat = torch.randn(3, 4, 12, 20, generator=g)
    torch.testing.assert_close(instance_mean_reference(feat, inst).double(),
                               naive_instance_mean(feat, inst), rtol=1e-5, atol=1e-6)


def test_feature_scatter_reference_matches_loop():
    g = gen(2)
    inst = scene(2, 10, 14, [7, 11, 23, 26001, 26002, 26003, 2**31 - 1], g, n_boxes=5)
    ids = torch.tensor([[26002, 7, 26001, 2**31 - 1, 26002, 5],      # 26002 twice: first wins
                        [23, 11, 11, 26003, 99, 7]])
    table = torch.randn(2, 6, 3, generator=g)
    assert torch.equal(feature_scatter_reference(inst, ids, table),
                       naive_feature_scatter(inst, ids, table))


# ---------------------------------------------------------------- Triton instance mean

def _check_mean(feat, inst, **kw):
    got = _instance_mean_triton(feat.to(DEV), inst.to(DEV), **kw).cpu()
    want = instance_mean_reference(feat, inst)
    assert got.dtype == feat.dtype and got.shape == feat.shape
    torch.testing.assert_close(got, want, **TOL[feat.dtype])


@needs_triton
def test_instance_mean_one_instance():
    feat = torch.randn(1, 3, 16, 16, generator=gen(3))
    inst = torch.full((1, 1, 16, 16), 7, dtype=torch.int32)
    _check_mean(feat, inst)
    got = instance_mean(feat.to(DEV), inst.to(DEV), backend="triton").cpu()
    want = feat.mean((2, 3), keepdim=True).expand_as(feat)
    torch.testing.assert_close(got, want, **TOL[feat.dtype])


@needs_triton
def test_instance_mean_thousands_of_instances():
    g = gen(4)
    feat = torch.randn(1, 3, 64, 64, generator=g)
    inst = (torch.randint(0, 2000, (1, 1, 64, 64), generator=g) + 26001).to(torch.int32)
    assert inst.unique().numel() > 1500
    _check_mean(feat, inst)


@needs_triton
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
def test_instance_mean_large_ids(id_dtype):
    g = gen(5)
    ids = [7, 32768, 2**31 - 1, 2**31 - 2, 40000, 65535, 65536, 2**31 - 3, -5, -(2**31) + 1]
    inst = scene(2, 12, 20, ids, g, dtype=id_dtype)
    feat = torch.randn(2, 3, 12, 20, generator=g)
    _check_mean(feat, inst)
    # int16 would wrap 32768 negative and fp16 would merge 2**31-1 with 2**31-2: make sure these
    # ids really are told apart by checking an instance's mean against its own pixels.
    m = inst[0, 0] == 2**31 - 1
    if m.any():
        got = instance_mean(feat.to(DEV), inst.to(DEV), backend="triton").cpu()
        torch.testing.assert_close(got[0, :, m][:, 0], feat[0, :, m].mean(1), rtol=1e-5, atol=1e-5)


@needs_triton
def test_instance_mean_batch_keeps_samples_apart():
    g = gen(6)
    inst = scene(3, 12, 20, [7, 11, 23, 26001, 26002, 26003], g)
    feat = torch.randn(3, 3, 12, 20, generator=g) + torch.arange(3.0).view(3, 1, 1, 1) * 10
    _check_mean(feat, inst)
    got = instance_mean(feat.to(DEV), inst.to(DEV), backend="triton").cpu()
    # Sample b's road (id 7) mean sits near 10*b: pooling over the batch would give ~10.
    for b in range(3):
        assert abs(float(got[b, 0][inst[b, 0] == 7].mean()) - 10 * b) < 1.0


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("C", [1, 3, 5])
def test_instance_mean_dtypes_and_channels(dtype, C):
    g = gen(7 + C)
    inst = scene(2, 10, 12, [7, 11, 23, 26001, 26002, 2**31 - 1], g)
    feat = torch.randn(2, C, 10, 12, generator=g).to(dtype)
    _check_mean(feat, inst)


@needs_triton
def test_instance_mean_runs_cross_blocks():
    # Small blocks make every run of a row span several programs and every id reach many of them.
    g = gen(8)
    inst = scene(2, 12, 30, [7, 11, 23, 26001, 26002, 26003, 24001], g)
    feat = torch.randn(2, 3, 12, 30, generator=g)
    _check_mean(feat, inst, block=16)


@needs_triton
def test_instance_mean_gradient():
    g = gen(9)
    inst = scene(2, 8, 12, [7, 11, 23, 26001, 26002], g).to(DEV)
    feat = torch.randn(2, 3, 8, 12, generator=g).to(DEV)
    grad = torch.randn(2, 3, 8, 12, generator=g).to(DEV)
    grads = []
    for backend in ("triton", "torch"):
        x = feat.clone().requires_grad_(True)
        instance_mean(x, inst, backend=backend).backward(grad)
        grads.append(x.grad.cpu())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)


@needs_triton
@pytest.mark.skipif(DEV != "cpu", reason="watches the atomics of Triton's CPU interpreter")
@pytest.mark.parametrize("B,H,W", [(1, 1, 1), (1, 1, 3), (1, 3, 5), (2, 3, 5), (2, 1, 15)])
def test_instance_mean_tiny_frames_stay_in_table(monkeypatch, B, H, W):
    """Frames of 1, 3, 15 pixels: a block (16 lanes) outgrows the hash table (P slots); the no-op
    compare-and-swap of the idle lanes must still address a slot of the table."""
    from triton.runtime import interpreter

    im = importlib.import_module("p2phd_infer.kernels.instance_mean")
    cas_addrs, tables = [], []
    builder = interpreter.InterpreterBuilder
    orig_cas, orig_insert = builder.create_atomic_cas, im._insert_kernel

    def cas(self, ptr, cmp, val, sem, scope):
        cas_addrs.append(np.array(ptr.data, dtype=np.uint64).reshape(-1))
        return orig_cas(self, ptr, cmp, val, sem, scope)

    class Insert:  # the real kernel, its hash table (the keys argument) noted
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                tables.append(args[1])
                return orig_insert[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(builder, "create_atomic_cas", cas)
    monkeypatch.setattr(im, "_insert_kernel", Insert())
    g = gen(40 + H * W)
    inst = torch.randint(0, 3, (B, 1, H, W), generator=g, dtype=torch.int32) + 26000
    feat = torch.randn(B, 3, H, W, generator=g)
    _check_mean(feat, inst)
    (keys,) = tables
    lo = keys.data_ptr()
    hi = lo + keys.numel() * keys.element_size()
    addrs = np.concatenate(cas_addrs)
    assert addrs.size > 0
    outside = addrs[(addrs < lo) | (addrs >= hi)]
    assert outside.size == 0, f"{outside.size} of {addrs.size} CAS addresses outside the table"


def test_instance_mean_rejects_bad_input():
    feat = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="integer ids"):
        instance_mean(feat, torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"\[1,1,4,4\]"):
        instance_mean(feat, torch.zeros(1, 1, 4, 5, dtype=torch.int32))
    with pytest.raises(ValueError, match="backend"):
        instance_mean(feat, torch.zeros(1, 1, 4, 4, dtype=torch.int32), backend="cuda")


def test_auto_backend_uses_reference_on_cpu():
    # 'auto' never sends CPU tensors to the (slow) interpreter.
    g = gen(10)
    inst = scene(1, 6, 6, [1, 2, 3, 4], g)
    feat = torch.randn(1, 2, 6, 6, generator=g)
    assert torch.equal(instance_mean(feat, inst), instance_mean_reference(feat, inst))


# ---------------------------------------------------------------- Triton feature scatter

@needs_triton
@pytest.mark.parametrize("dtype,F", [(torch.float32, 3), (torch.float16, 5), (torch.float32, 1)])
def test_feature_scatter_matches_reference(dtype, F):
    g = gen(13 + F)
    ids = [7, 11, 23, 26001, 26002, 26003, 32768, 2**31 - 1, 2**31 - 2]
    inst = scene(3, 14, 22, ids, g)
    # Listed per sample: some present ids, some absent (-> zeros), a repeat (first wins), and ids
    # of another dtype than the map's.
    inst_ids = torch.tensor([[26002, 7, 2**31 - 1, 26002, 5, 11, 23],
                             [2**31 - 2, 2**31 - 2, 26001, 99, 32768, 23, 7],
                             [26003, 11, 7, 7, 7, 7, 7]], dtype=torch.int64)
    table = torch.randn(3, 7, F, generator=g).to(dtype)
    got = feature_scatter(inst.to(DEV), inst_ids.to(DEV), table.to(DEV), backend="triton").cpu()
    want = feature_scatter_reference(inst, inst_ids, table)
    assert got.dtype == dtype and torch.equal(got, want)
    assert torch.equal(want, naive_feature_scatter(inst, inst_ids, table))


@needs_triton
@pytest.mark.parametrize("K", [0, 1, 2, 300])
def test_feature_scatter_table_sizes(K):
    g = gen(20 + K)
    inst = (torch.randint(0, 400, (2, 1, 12, 16), generator=g) + 26000).to(torch.int32)
    inst_ids = (torch.randperm(400, generator=g)[:K] + 26000).to(torch.int32).expand(2, K)
    table = torch.randn(2, K, 3, generator=g)
    got = feature_scatter(inst.to(DEV), inst_ids.to(DEV), table.to(DEV), backend="triton").cpu()
    assert torch.equal(got, feature_scatter_reference(inst, inst_ids, table))


def test_feature_scatter_rejects_bad_input():
    inst = torch.zeros(2, 1, 4, 4, dtype=torch.int32)
    with pytest.raises(ValueError, match="inst_ids"):
        feature_scatter(inst, torch.zeros(1, 3, dtype=torch.int32), torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="table"):
        feature_scatter(inst, torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, 4, 3))


# ---------------------------------------------------------------- CUDA only

def _frame(B=1, H=512, W=1024, n=100, seed=30):
    g = gen(seed)
    ids = [7, 11, 23] + [26001 + i for i in range(n // 2)] + [24001 + i for i in range(n - n // 2)]
    return scene(B, H, W, ids, g, n_boxes=n).cuda()


@needs_cuda
def test_cuda_no_host_sync():
    inst = _frame()
    feat = torch.randn(1, 3, *inst.shape[-2:], device="cuda")
    table = torch.randn(1, 8, 3, device="cuda")
    inst_ids = torch.arange(26001, 26009, device="cuda")[None]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")   # any synchronising call raises
    try:
        instance_mean(feat, inst)
        feature_scatter(inst, inst_ids, table)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@needs_cuda
def test_cuda_graph_capture_instance_mean():
    inst = _frame()
    feat = torch.randn(1, 3, *inst.shape[-2:], device="cuda")
    instance_mean(feat, inst)                 # compile before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = instance_mean(feat, inst)
    inst2 = _frame(seed=31)
    feat.copy_(torch.randn_like(feat))
    inst.copy_(inst2)
    graph.replay()
    torch.testing.assert_close(out, instance_mean_reference(feat, inst), rtol=1e-5, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_cityscapes_sized_frame(dtype):
    inst = _frame(B=2, H=1024, W=2048)
    feat = torch.randn(2, 3, 1024, 2048, device="cuda").to(dtype)
    torch.testing.assert_close(instance_mean(feat, inst), instance_mean_reference(feat, inst),
                               **TOL[dtype])
