"""Per-instance feature scatter: a table of one feature vector per instance -> the feature map.

Style control picks one vector per instance (a cluster centre of its label, or an example photo's
instance mean) and the generator needs it at every pixel of that instance. Contract:

  feature_scatter(inst, inst_ids, table) -> feat
    inst      int   [B,1,H,W]  instance ids
    inst_ids  int   [B,K]      each sample's listed instance ids (any order)
    table     float [B,K,F]    table[b, k] is the feature vector of id inst_ids[b, k] in sample b
    feat      [B,F,H,W] in table's dtype: pixel (b, y, x) gets table[b, k] where
              inst_ids[b, k] == inst[b, 0, y, x]; pixels whose id is not listed get zeros.
  An id listed twice in a row takes its first listing, so rows of different lengths can be padded
  to K by repeating a listed id (or with any id absent from the map). Both implementations sort
  each row's ids (stable) and binary-search every pixel's id: no host synchronisation.
"""
from __future__ import annotations

import contextlib

import torch

from ._backend import check_index_range, jit, next_pow2, tl, triton, use_triton


def _sorted_rows(inst_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Stable, so among equal ids the first listing comes first and a lower-bound search finds it.
    return torch.sort(inst_ids, dim=1, stable=True)


def feature_scatter_reference(inst: torch.Tensor, inst_ids: torch.Tensor,
                              table: torch.Tensor) -> torch.Tensor:
    """The definition (see the module docstring), in plain torch."""
    B, _, H, W = inst.shape
    K, F = table.shape[1], table.shape[2]
    if K == 0:
        return torch.zeros(B, F, H, W, dtype=table.dtype, device=table.device)
    ids, perm = _sorted_rows(inst_ids.long())
    q = inst.reshape(B, H * W).long()
    pos = torch.searchsorted(ids, q).clamp_max_(K - 1)        # first listed id >= q
    found = ids.gather(1, pos) == q
    rows = perm.gather(1, pos)
    feat = table.gather(1, rows[..., None].expand(B, H * W, F))  # [B, HW, F]
    feat = torch.where(found[..., None], feat, torch.zeros((), dtype=table.dtype,
                                                           device=table.device))
    return feat.permute(0, 2, 1).reshape(B, F, H, W).contiguous()


@jit
def _feature_scatter_kernel(inst_ptr, ids_ptr, perm_ptr, table_ptr, out_ptr, N, K, F, STEPS,
                            F_PAD: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inb = p < N
    x = tl.load(inst_ptr + b * N + p, mask=inb, other=0)
    ids = ids_ptr + b * K
    # Lower bound of x in the sorted row: STEPS = bit_length(K) halvings close every interval.
    lo = tl.zeros([BLOCK], dtype=tl.int32)
    hi = lo + K
    for _ in range(0, STEPS):
        active = inb & (lo < hi)
        mid = (lo + hi) >> 1
        v = tl.load(ids + mid, mask=active, other=0)
        lo = tl.where(active & (v < x), mid + 1, lo)
        hi = tl.where(active & (v >= x), mid, hi)
    pos = tl.minimum(lo, K - 1)
    found = inb & (lo < K) & (tl.load(ids + pos, mask=inb, other=0) == x)
    row = tl.load(perm_ptr + b * K + pos, mask=found, other=0)
    cols = tl.arange(0, F_PAD)
    vals = tl.load(table_ptr + (b * K + row)[:, None] * F + cols[None, :],
                   mask=found[:, None] & (cols[None, :] < F), other=0.0)
    tl.store(out_ptr + b * F * N + cols[None, :].to(tl.int64) * N + p[:, None],
             vals.to(out_ptr.dtype.element_ty), mask=inb[:, None] & (cols[None, :] < F))


def _feature_scatter_triton(inst, inst_ids, table):
    B, _, H, W = inst.shape
    K, F = table.shape[1], table.shape[2]
    N = H * W
    if K == 0:
        return torch.zeros(B, F, H, W, dtype=table.dtype, device=table.device)
    out = torch.empty(B, F, H, W, dtype=table.dtype, device=table.device)
    if out.numel() == 0:
        return out
    ids, perm = _sorted_rows(inst_ids)
    f_pad = next_pow2(F)
    block = max(16, min(1024, 4096 // f_pad, next_pow2(N)))
    grid = (triton.cdiv(N, block), B)
    # Pixel indices are int32, the last block's lanes included.
    check_index_range("feature_scatter: pixels per sample", grid[0] * block)
    dev = inst.device
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        _feature_scatter_kernel[grid](inst.contiguous(), ids.contiguous(), perm.contiguous(),
                                      table.contiguous(), out, N, K, F, K.bit_length(),
                                      F_PAD=f_pad, BLOCK=block,
                                      num_warps=8 if block >= 512 else 4)
    return out


def _is_int(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def feature_scatter(inst: torch.Tensor, inst_ids: torch.Tensor, table: torch.Tensor, *,
                    backend: str = "auto") -> torch.Tensor:
    """inst int [B,1,H,W], inst_ids int [B,K], table float [B,K,F] -> feat [B,F,H,W] in table's
    dtype; pixel gets its id's row of the table, zeros when the id is not listed (first listing
    wins for repeated ids). See the module docstring for the full contract."""
    if inst.dim() != 4 or inst.shape[1] != 1 or not _is_int(inst):
        raise ValueError(f"inst must be integer [B,1,H,W], got {inst.dtype} {tuple(inst.shape)}")
    B = inst.shape[0]
    if inst_ids.dim() != 2 or inst_ids.shape[0] != B or not _is_int(inst_ids):
        raise ValueError(f"inst_ids must be integer [{B},K], got {inst_ids.dtype} "
                         f"{tuple(inst_ids.shape)}")
    K = inst_ids.shape[1]
    if table.dim() != 3 or tuple(table.shape[:2]) != (B, K) or not table.is_floating_point():
        raise ValueError(f"table must be float [{B},{K},F] to match inst_ids, got {table.dtype} "
                         f"{tuple(table.shape)}")
    if not use_triton(backend, inst, inst_ids, table):
        return feature_scatter_reference(inst, inst_ids, table)
    return _feature_scatter_triton(inst, inst_ids, table)
