"""Instance-wise mean: every pixel gets the per-channel mean of its instance id in its own sample.

This is the last step of pix2pixHD's feature encoder E: each object ends up carrying one style
vector. The reference below defines the function; the Triton version computes the same thing
without a host synchronisation, so it can sit inside a CUDA graph.

Triton design (three launches after one memset, all sizes fixed by the shapes):
  keys   [B, P] ids, P = next power of two >= H*W, filled with the dtype's minimum ("empty");
  values [B, P, C+1] fp32 per-slot channel sums and the pixel count (last column).
  1. insert: the last pixel of every run of equal ids in a block claims a slot for its id by
     linear probing with compare-and-swap, and the winner zeroes that slot's values (so only the
     slots in use are ever written; P >= H*W >= distinct ids, so the table never fills).
  2. accumulate: a segmented scan sums each run inside the block (pixels along a row mostly share
     an id), then one fp32 atomic add per run and channel, instead of one per pixel; this keeps the
     atomics off the hot addresses of large regions such as road and sky.
  3. gather: every pixel probes its id's slot and writes sums / count in the feature dtype.
Ids may be anything of their dtype but its minimum (-2**31 for int32), which marks empty slots.
"""
from __future__ import annotations

import contextlib

import torch

from ._backend import check_index_range, jit, next_pow2, tl, triton, use_triton


def instance_mean_reference(feat: torch.Tensor, inst: torch.Tensor) -> torch.Tensor:
    """feat float [B,C,H,W], inst int [B,1,H,W] -> [B,C,H,W]; fp32 accumulation, one pass."""
    B, C, H, W = feat.shape
    ids = inst.reshape(B, H * W).long()
    uniq, inv = torch.unique(ids, return_inverse=True)
    # One segment per (sample, id): the same id in two samples is two instances.
    seg = (inv + torch.arange(B, device=feat.device)[:, None] * uniq.numel()).reshape(-1)
    nseg = B * uniq.numel()
    pix = feat.permute(0, 2, 3, 1).reshape(-1, C).float()
    sums = torch.zeros(nseg, C, dtype=torch.float32, device=feat.device).index_add_(0, seg, pix)
    counts = torch.bincount(seg, minlength=nseg).clamp_min(1).to(torch.float32)
    means = sums / counts[:, None]
    return means[seg].reshape(B, H, W, C).permute(0, 3, 1, 2).to(feat.dtype).contiguous()


@jit
def _segmented_sum(av, af, bv, bf):
    # Scan combine for (value, run-start flag): a run start restarts the sum.
    return tl.where(bf != 0, bv, av + bv), af | bf


@jit
def _home_slot(x, P):
    # Integer mix of the id (fold the high half, two multiply-xorshift rounds; int64 wraps), then
    # the table mask: ids that are multiples of P must not all land on slot 0.
    h = x.to(tl.int64)
    h = h ^ (h >> 31)
    h = h * 0x45D9F3B
    h = h ^ (h >> 16)
    h = h * 0x45D9F3B
    h = h ^ (h >> 16)
    return h & (P - 1)


@jit
def _find(keys, slot, x, need, P, empty):
    # Linear probing for ids already in the table (after the insert pass): the slot holding x.
    while tl.max(need.to(tl.int32), axis=0) > 0:
        k = tl.load(keys + slot, mask=need, other=empty)
        need = need & (k != x)
        slot = tl.where(need, (slot + 1) & (P - 1), slot)
    return slot


@jit
def _insert_kernel(inst_ptr, keys_ptr, vals_ptr, N, P, empty,
                   CV, CV_PAD: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    lane = tl.arange(0, BLOCK)
    p = tl.program_id(0) * BLOCK + lane
    inb = p < N
    ids = inst_ptr + b * N
    x = tl.load(ids + p, mask=inb, other=0)
    nxt = tl.load(ids + p + 1, mask=inb & (lane < BLOCK - 1) & (p + 1 < N), other=0)
    run_end = inb & ((lane == BLOCK - 1) | (p == N - 1) | (x != nxt))

    slot = _home_slot(x, P)

    keys = keys_ptr + b * P
    empties = x * 0 + empty
    need = run_end
    won = run_end & (lane < 0)
    while tl.max(need.to(tl.int32), axis=0) > 0:
        k = tl.load(keys + slot, mask=need, other=empty)
        free = need & (k == empty)
        if tl.max(free.to(tl.int32), axis=0) > 0:
            # atomic_cas takes no mask, so lanes with nothing to claim swap empty for empty: a
            # no-op, on their own pixel's slot (no contention). Wrapped into the table: lanes
            # past the last pixel exist when a frame has fewer pixels than a block (16), and
            # their p is past this sample's P slots (past the whole table, for the last sample).
            target = tl.where(free, slot, (p & (P - 1)).to(tl.int64))
            old = tl.atomic_cas(keys + target, empties, tl.where(free, x, empties))
            claimed = free & (old == empty)
            won = won | claimed
            k = tl.where(free, tl.where(claimed, x, old), k)
        need = need & (k != x)
        slot = tl.where(need, (slot + 1) & (P - 1), slot)

    cols = tl.arange(0, CV_PAD)
    zeros = tl.zeros([BLOCK, CV_PAD], dtype=tl.float32)
    row = (b * P + slot)[:, None] * CV + cols[None, :]
    tl.store(vals_ptr + row, zeros, mask=won[:, None] & (cols[None, :] < CV))


@jit
def _accumulate_kernel(feat_ptr, inst_ptr, keys_ptr, vals_ptr, N, P, empty,
                       C, CV, CV_PAD: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    lane = tl.arange(0, BLOCK)
    p = tl.program_id(0) * BLOCK + lane
    inb = p < N
    ids = inst_ptr + b * N
    x = tl.load(ids + p, mask=inb, other=0)
    prv = tl.load(ids + p - 1, mask=inb & (lane > 0), other=0)
    nxt = tl.load(ids + p + 1, mask=inb & (lane < BLOCK - 1) & (p + 1 < N), other=0)
    run_start = (lane == 0) | (x != prv)
    run_end = inb & ((lane == BLOCK - 1) | (p == N - 1) | (x != nxt))

    slot = _home_slot(x, P)
    keys = keys_ptr + b * P
    slot = _find(keys, slot, x, run_end, P, empty)

    cols = tl.arange(0, CV_PAD)
    f = tl.load(feat_ptr + b * C * N + cols[None, :].to(tl.int64) * N + p[:, None],
                mask=inb[:, None] & (cols[None, :] < C), other=0.0).to(tl.float32)
    v = tl.where(cols[None, :] == C, 1.0, f)  # the count column
    flags = tl.broadcast_to(run_start.to(tl.int32)[:, None], [BLOCK, CV_PAD])
    run_sum, _ = tl.associative_scan((v, flags), 0, _segmented_sum)
    row = (b * P + slot)[:, None] * CV + cols[None, :]
    tl.atomic_add(vals_ptr + row, run_sum, mask=run_end[:, None] & (cols[None, :] < CV))


@jit
def _gather_kernel(inst_ptr, keys_ptr, vals_ptr, out_ptr, N, P, empty,
                   C, CV, CV_PAD: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    lane = tl.arange(0, BLOCK)
    p = tl.program_id(0) * BLOCK + lane
    inb = p < N
    x = tl.load(inst_ptr + b * N + p, mask=inb, other=0)

    slot = _home_slot(x, P)
    keys = keys_ptr + b * P
    slot = _find(keys, slot, x, inb, P, empty)

    cols = tl.arange(0, CV_PAD)
    v = tl.load(vals_ptr + (b * P + slot)[:, None] * CV + cols[None, :],
                mask=inb[:, None] & (cols[None, :] < CV), other=0.0)
    count = tl.sum(tl.where(cols[None, :] == C, v, 0.0), axis=1)
    count = tl.where(inb, count, 1.0)
    mean = v / count[:, None]
    tl.store(out_ptr + b * C * N + cols[None, :].to(tl.int64) * N + p[:, None],
             mean.to(out_ptr.dtype.element_ty), mask=inb[:, None] & (cols[None, :] < C))


def _instance_mean_triton(feat: torch.Tensor, inst: torch.Tensor,
                          block: int | None = None) -> torch.Tensor:
    # block: pixels per program, a power of two; tests pass small ones to cross many blocks.
    B, C, H, W = feat.shape
    N = H * W
    out = torch.empty_like(feat, memory_format=torch.contiguous_format)
    if B == 0 or C == 0 or N == 0:
        return out
    feat = feat.contiguous()
    ids = inst.reshape(B, N)
    if ids.dtype not in (torch.int32, torch.int64):
        ids = ids.to(torch.int32)  # uint8/int16 ids widen losslessly
    ids = ids.contiguous()
    P = max(2, next_pow2(N))
    check_index_range("instance_mean: hash slots per sample", P)   # int32 pixel indices
    empty = torch.iinfo(ids.dtype).min
    keys = torch.full((B * P,), empty, dtype=ids.dtype, device=feat.device)
    vals = torch.empty((B * P, C + 1), dtype=torch.float32, device=feat.device)
    cv_pad = next_pow2(C + 1)
    # At most ~4096 elements per program; no wider than the image (matters to the interpreter).
    if block is None:
        block = max(16, min(1024, 4096 // cv_pad, next_pow2(N)))
    grid = (triton.cdiv(N, block), B)
    warps = 8 if block >= 512 else 4  # 8 warps: ~80 registers/thread, not ~130 (sm_90)
    dev = feat.device
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        _insert_kernel[grid](ids, keys, vals, N, P, empty, C + 1,
                             CV_PAD=cv_pad, BLOCK=block, num_warps=warps)
        _accumulate_kernel[grid](feat, ids, keys, vals, N, P, empty, C, C + 1,
                                 CV_PAD=cv_pad, BLOCK=block, num_warps=warps)
        _gather_kernel[grid](ids, keys, vals, out, N, P, empty, C, C + 1,
                             CV_PAD=cv_pad, BLOCK=block, num_warps=warps)
    return out


class _InstanceMeanTriton(torch.autograd.Function):
    # The instance mean is a symmetric projection (each output is an average over its instance),
    # so its gradient is the instance mean of the incoming gradient.
    @staticmethod
    def forward(ctx, feat, inst):
        ctx.save_for_backward(inst)
        return _instance_mean_triton(feat, inst)

    @staticmethod
    def backward(ctx, grad):
        (inst,) = ctx.saved_tensors
        return _instance_mean_triton(grad, inst), None


def _check(feat: torch.Tensor, inst: torch.Tensor) -> None:
    if feat.dim() != 4 or not feat.is_floating_point():
        raise ValueError(f"feat must be float [B,C,H,W], got {feat.dtype} {tuple(feat.shape)}")
    B, _, H, W = feat.shape
    if tuple(inst.shape) != (B, 1, H, W):
        raise ValueError(f"inst must be [{B},1,{H},{W}] to match feat, got {tuple(inst.shape)}")
    if inst.is_floating_point() or inst.is_complex() or inst.dtype == torch.bool:
        raise ValueError(f"inst must hold integer ids (float merges ids such as 26001..26007), "
                         f"got {inst.dtype}")


def instance_mean(feat: torch.Tensor, inst: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """feat float [B,C,H,W] (fp16/bf16/fp32), inst int [B,1,H,W] -> [B,C,H,W] in feat's dtype:
    every pixel gets the per-channel mean of its instance id within its own sample (the same id
    in two samples is two instances). fp32 accumulation. Differentiable. On CUDA the Triton path
    makes no host synchronisation (CUDA-graph safe); its ids must not be the dtype's minimum."""
    _check(feat, inst)
    if not use_triton(backend, feat, inst):
        return instance_mean_reference(feat, inst)
    if torch.is_grad_enabled() and feat.requires_grad:
        return _InstanceMeanTriton.apply(feat, inst)
    return _instance_mean_triton(feat, inst)
