"""Fused InstanceNorm (+ ReLU) (+ residual add) (+ reflection padding of the result).

pix2pixHD normalises every conv output with InstanceNorm2d (no affine, eps 1e-5, biased
variance, statistics per sample and channel), then ReLU, except the second norm of a residual
block, whose result is added to the block input. The next layer is often ReflectionPad2d, so the
kernel can write its result straight into the padded buffer, borders included:

    out = pad_reflect( act((x - mean) * rsqrt(var + eps)) + residual, pad )

with act = ReLU or identity (the add comes after the activation, matching both uses: a residual
block ends in IN + add with no ReLU; the local enhancer adds G1's features after its front's
IN + ReLU). Statistics are fp32 whatever the I/O dtype (fp16, bf16, fp32). Any strides work, so
NCHW, channels_last and views (the interior of a padded buffer) all go through without copies; the
output keeps x's memory format. Addresses are int64 (index.to(int64) * stride): a 1024-channel map
of 2048x1024 pixels has 2^31 elements, past int32; pixel indices within a sample stay int32
(checked: fewer than 2^31 pixels per sample). Three launches, all sizes fixed by the shapes
(sync-free, CUDA graph capturable):
  1. partial statistics: each program reduces a chunk of pixels for a block of channels to
     (mean, M2) with Chan's parallel merge, which stays accurate where sum/sum-of-squares would
     cancel (large mean, small variance);
  2. finalize: combine the chunks per (sample, channel) into mean and 1/sqrt(var + eps), each
     program all the chunks of a few channels in one tile (no loop: up to 1024 chunks x 2
     channels, or 64 x 32), so the tail of every norm is one round of loads, not 32;
  3. apply: normalise, activate, add, store (and the mirrored copies that reflection padding
     needs, for pixels near the border).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._backend import check_index_range, index64, jit, next_pow2, tl, use_triton

MAX_CHUNKS = 1024     # partial statistics per (sample, channel block); finalize takes them at once
FINALIZE_TILE = 2048  # chunks x channels one finalize program holds


def instance_norm_act_reference(x: torch.Tensor, relu: bool = False,
                                residual: torch.Tensor | None = None, pad: int = 0,
                                eps: float = 1e-5) -> torch.Tensor:
    """The definition: F.instance_norm, then ReLU, then + residual, then reflection padding.
    Keeps x's dtype and memory format."""
    y = F.instance_norm(x, eps=eps)
    if relu:
        y = torch.relu(y)
    if residual is not None:
        y = y + residual
    if pad:
        y = F.pad(y, (pad, pad, pad, pad), mode="reflect")
    return y.contiguous(memory_format=memory_format_of(x))


@jit
def _stats_kernel(x_ptr, part_ptr, C, W, HW, CHUNK, NCHUNK, sxb, sxc, sxh, sxw,
                  BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    chunk = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    start = chunk * CHUNK
    end = tl.minimum(start + CHUNK, HW)
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    base = x_ptr + b * sxb + index64(cs, sxc)[None, :]
    for p0 in range(start, end, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        pm = ps < end
        m = pm[:, None] & cmask[None, :]
        v = tl.load(base + index64(ps // W, sxh)[:, None] + index64(ps % W, sxw)[:, None],
                    mask=m, other=0.0).to(tl.float32)
        nb = tl.sum(pm.to(tl.float32), axis=0)
        mb = tl.sum(v, axis=0) / nb
        d = tl.where(m, v - mb[None, :], 0.0)
        m2b = tl.sum(d * d, axis=0)
        # Chan et al.: merge (na, mean, m2) with the tile's (nb, mb, m2b); every earlier tile
        # of this chunk was full, so na is the distance from the chunk start.
        na = (p0 - start).to(tl.float32)
        n = na + nb
        delta = mb - mean
        mean = mean + delta * (nb / n)
        m2 = m2 + m2b + delta * delta * (na * nb / n)
    out = part_ptr + (b * NCHUNK + chunk) * 2 * C
    tl.store(out + cs, mean, mask=cmask)
    tl.store(out + C + cs, m2, mask=cmask)


@jit
def _finalize_kernel(part_ptr, stats_ptr, C, HW, CHUNK, NCHUNK, eps,
                     BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    # One program: BLOCK_C channels of one sample, all NCHUNK <= BLOCK_K chunks in one tile. The
    # mean of the chunk means weighted by their pixel counts, then M2 = sum_k M2_k +
    # n_k (mean_k - mean)^2 (exact, and stable since every deviation is taken from the final
    # mean), both from the registers.
    b = tl.program_id(0).to(tl.int64)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    k = tl.arange(0, BLOCK_K).to(tl.int64)
    m = (k < NCHUNK)[:, None] & cmask[None, :]
    nk = tl.minimum(tl.maximum(HW - k * CHUNK, 0), CHUNK).to(tl.float32)
    rows = part_ptr + index64(b * NCHUNK + k, 2 * C)[:, None] + cs[None, :]
    mk = tl.load(rows, mask=m, other=0.0)
    m2k = tl.load(rows + C, mask=m, other=0.0)
    mean = tl.sum(nk[:, None] * mk, axis=0) / HW
    d = tl.where(m, mk - mean[None, :], 0.0)
    m2 = tl.sum(m2k + nk[:, None] * d * d, axis=0)
    rstd = 1.0 / tl.sqrt(m2 / HW + eps)   # biased variance, as nn.InstanceNorm2d
    tl.store(stats_ptr + b * 2 * C + cs, mean, mask=cmask)
    tl.store(stats_ptr + b * 2 * C + C + cs, rstd, mask=cmask)


@jit
def _apply_kernel(x_ptr, stats_ptr, res_ptr, out_ptr, C, H, W,
                  sxb, sxc, sxh, sxw, srb, src, srh, srw, sob, soc, soh, sow,
                  PAD: tl.constexpr, RELU: tl.constexpr, HAS_RES: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    ps = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    b = tl.program_id(1).to(tl.int64)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    pm = ps < H * W
    m = pm[:, None] & cmask[None, :]
    # int64 from here on: they multiply strides, the mirrored ones too.
    y = (ps // W).to(tl.int64)
    x = (ps % W).to(tl.int64)
    c64 = cs.to(tl.int64)
    mean = tl.load(stats_ptr + b * 2 * C + cs, mask=cmask, other=0.0)
    rstd = tl.load(stats_ptr + b * 2 * C + C + cs, mask=cmask, other=0.0)
    v = tl.load(x_ptr + b * sxb + c64[None, :] * sxc + y[:, None] * sxh + x[:, None] * sxw,
                mask=m, other=0.0).to(tl.float32)
    v = (v - mean[None, :]) * rstd[None, :]
    if RELU:
        v = tl.maximum(v, 0.0)
    if HAS_RES:
        v += tl.load(res_ptr + b * srb + c64[None, :] * src + y[:, None] * srh
                     + x[:, None] * srw, mask=m, other=0.0).to(tl.float32)
    v = v.to(out_ptr.dtype.element_ty)
    obase = out_ptr + b * sob + c64[None, :] * soc
    tl.store(obase + (y + PAD)[:, None] * soh + (x + PAD)[:, None] * sow, v, mask=m)
    if PAD > 0:
        # Reflection: padded row PAD - y mirrors rows 1..PAD, row 2(H-1) + PAD - y mirrors rows
        # H-1-PAD..H-2 (the caller guarantees H, W >= 2 PAD + 2, so the two never overlap).
        my = tl.where((y >= 1) & (y <= PAD), PAD - y,
                      tl.where((y >= H - 1 - PAD) & (y <= H - 2), 2 * (H - 1) + PAD - y, -1))
        mx = tl.where((x >= 1) & (x <= PAD), PAD - x,
                      tl.where((x >= W - 1 - PAD) & (x <= W - 2), 2 * (W - 1) + PAD - x, -1))
        ry = my >= 0
        rx = mx >= 0
        tl.store(obase + my[:, None] * soh + (x + PAD)[:, None] * sow, v, mask=m & ry[:, None])
        tl.store(obase + (y + PAD)[:, None] * soh + mx[:, None] * sow, v, mask=m & rx[:, None])
        tl.store(obase + my[:, None] * soh + mx[:, None] * sow, v,
                 mask=m & (ry & rx)[:, None])


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def instance_norm_act_triton(x: torch.Tensor, relu: bool = False,
                             residual: torch.Tensor | None = None, pad: int = 0,
                             eps: float = 1e-5, tile_p: int | None = None,
                             tile_c: int | None = None,
                             max_chunks: int = MAX_CHUNKS) -> torch.Tensor:
    """tile_p, tile_c (powers of two >= 16) and max_chunks (<= MAX_CHUNKS) override the tiling:
    tests use them to reach the multi-tile, multi-chunk and multi-channel-block paths on small
    inputs."""
    B, C, H, W = x.shape
    if not 1 <= max_chunks <= MAX_CHUNKS:
        raise ValueError(f"max_chunks must be in 1..{MAX_CHUNKS}, got {max_chunks}")
    if pad and (H < 2 * pad + 2 or W < 2 * pad + 2):
        # Too small for the one-mirror-per-side store; pad afterwards (tiny maps only).
        y = instance_norm_act_triton(x, relu, residual, 0, eps, tile_p, tile_c, max_chunks)
        return F.pad(y, (pad, pad, pad, pad), mode="reflect").contiguous(
            memory_format=memory_format_of(x))
    if residual is not None and tuple(residual.shape) != tuple(x.shape):
        raise ValueError(f"residual has shape {tuple(residual.shape)}, expected {tuple(x.shape)}")
    HW = H * W
    # Pixel indices within a sample are int32 (addresses are int64).
    check_index_range("instance_norm_act: pixels per sample", (H + 2 * pad) * (W + 2 * pad))
    block_c = min(64, max(16, next_pow2(C)))
    block_p = max(16, 4096 // block_c)
    if x.device.type == "cpu":
        # Triton's interpreter pays per operation, not per element: few, large programs.
        block_c = max(16, next_pow2(C))
        block_p = max(16, min(next_pow2(HW), 16384 // block_c))
    block_c = tile_c or block_c
    block_p = tile_p or block_p
    ncb = _cdiv(C, block_c)
    tiles = _cdiv(HW, block_p)
    # The chunking depends on the per-sample shape only, never on B, so a frame's statistics
    # (to the last bit) do not depend on its batch-mates.
    nchunk = max(1, min(tiles, max_chunks // ncb))
    chunk = _cdiv(tiles, nchunk) * block_p
    nchunk = _cdiv(HW, chunk)
    part = torch.empty(B, nchunk, 2, C, dtype=torch.float32, device=x.device)
    _stats_kernel[(nchunk, B, ncb)](
        x, part, C, W, HW, chunk, nchunk, x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        BLOCK_C=block_c, BLOCK_P=block_p, num_warps=4)
    stats = finalize_stats(part, HW, chunk, eps)
    out = torch.empty(B, C, H + 2 * pad, W + 2 * pad, dtype=x.dtype, device=x.device,
                      memory_format=memory_format_of(x))
    r = residual if residual is not None else x
    _apply_kernel[(tiles, B, ncb)](
        x, stats, r, out, C, H, W, x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        r.stride(0), r.stride(1), r.stride(2), r.stride(3),
        out.stride(0), out.stride(1), out.stride(2), out.stride(3),
        PAD=pad, RELU=relu, HAS_RES=residual is not None, BLOCK_C=block_c, BLOCK_P=block_p,
        num_warps=4)
    return out


def finalize_stats(part: torch.Tensor, HW: int, chunk: int, eps: float = 1e-5) -> torch.Tensor:
    """Partial statistics [B, NCHUNK, 2 (mean, M2), C] of chunks of `chunk` pixels (the last
    one shorter) -> [B, 2 (mean, 1/sqrt(var + eps)), C], fp32."""
    B, nchunk, _, C = part.shape
    if not 1 <= nchunk <= MAX_CHUNKS or _cdiv(HW, chunk) != nchunk:
        raise ValueError(f"{nchunk} chunks of {chunk} pixels for {HW} pixels "
                         f"(at most {MAX_CHUNKS} chunks)")
    stats = torch.empty(B, 2, C, dtype=torch.float32, device=part.device)
    # All chunks of a channel in one finalize tile; as many channels per program as fit.
    block_k = next_pow2(nchunk)
    fin_c = max(2, min(next_pow2(C), FINALIZE_TILE // block_k))
    _finalize_kernel[(B, _cdiv(C, fin_c))](part, stats, C, HW, chunk, nchunk, eps,
                                           BLOCK_C=fin_c, BLOCK_K=block_k, num_warps=4)
    return stats


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    # channels_last when x is laid out so (and not also plain contiguous, as for C == 1).
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous():
        return torch.channels_last
    if x.dim() == 4 and x.stride(1) == 1 and x.shape[1] > 1:
        return torch.channels_last   # a channels_last view (the interior of a padded buffer)
    return torch.contiguous_format


def instance_norm_act(x: torch.Tensor, relu: bool = False,
                      residual: torch.Tensor | None = None, pad: int = 0, eps: float = 1e-5,
                      backend: str = "auto") -> torch.Tensor:
    """x [B,C,H,W] (any layout) -> reflect_pad(act(IN(x)) + residual, pad), x's dtype."""
    tensors = (x,) if residual is None else (x, residual)
    if use_triton(backend, *tensors):
        return instance_norm_act_triton(x, relu, residual, pad, eps)
    return instance_norm_act_reference(x, relu, residual, pad, eps)
