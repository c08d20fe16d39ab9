"""Label encoding in one pass: class ids + instance ids -> one-hot(label_nc) and the edge map.

The definition is p2phd_infer.labels.encode_labels (one-hot as an equality against a range, then
the 4-neighbour instance edge map; image borders are not marked). The Triton kernel reads each
pixel's label and its instance id with the 4 neighbours once, and writes its label_nc + 1 output
values, instead of materialising the range comparison, four shifted comparisons and a concat.
"""
from __future__ import annotations

import contextlib

import torch

from ..labels import encode_labels
from ._backend import jit, next_pow2, tl, triton, use_triton


def label_encode_reference(label: torch.Tensor, inst: torch.Tensor | None, label_nc: int,
                           use_instance: bool, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The definition: encode_labels without features."""
    return encode_labels(label, inst, label_nc, use_instance, None, dtype=dtype)


@jit
def _label_encode_kernel(label_ptr, inst_ptr, out_ptr, H, W, N, LABEL_NC,
                         USE_INSTANCE: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inb = p < N
    lab = tl.load(label_ptr + b * N + p, mask=inb, other=0)
    out = out_ptr + b * (LABEL_NC + USE_INSTANCE) * N + p
    for c in range(0, LABEL_NC):
        # Labels outside [0, label_nc) match no class and leave the pixel all zeros.
        # (Via fp32: Triton's interpreter turns bool -> bf16 into garbage.)
        tl.store(out + c * N, (lab == c).to(tl.float32).to(out_ptr.dtype.element_ty), mask=inb)
    if USE_INSTANCE:
        ids = inst_ptr + b * N + p
        row = p // W
        col = p - row * W
        x = tl.load(ids, mask=inb, other=0)
        left = tl.load(ids - 1, mask=inb & (col > 0), other=0)
        right = tl.load(ids + 1, mask=inb & (col < W - 1), other=0)
        up = tl.load(ids - W, mask=inb & (row > 0), other=0)
        down = tl.load(ids + W, mask=inb & (row < H - 1), other=0)
        edge = (((col > 0) & (left != x)) | ((col < W - 1) & (right != x))
                | ((row > 0) & (up != x)) | ((row < H - 1) & (down != x)))
        tl.store(out + LABEL_NC * N, edge.to(tl.float32).to(out_ptr.dtype.element_ty), mask=inb)


def _label_encode_triton(label, inst, label_nc, use_instance, dtype):
    B, _, H, W = label.shape
    N = H * W
    out = torch.empty(B, label_nc + int(use_instance), H, W, dtype=dtype, device=label.device)
    if out.numel() == 0:
        return out
    label = label.contiguous()
    inst = inst.contiguous() if use_instance else label  # never read without instances
    block = max(16, min(1024, next_pow2(N)))
    grid = (triton.cdiv(N, block), B)
    dev = label.device
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        _label_encode_kernel[grid](label, inst, out, H, W, N, label_nc,
                                   USE_INSTANCE=int(use_instance), BLOCK=block,
                                   num_warps=8 if block >= 512 else 4)
    return out


def _is_int(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def label_encode(label: torch.Tensor, inst: torch.Tensor | None, label_nc: int,
                 use_instance: bool, dtype: torch.dtype = torch.float32, *,
                 backend: str = "auto") -> torch.Tensor:
    """label int [B,1,H,W], inst int [B,1,H,W] (needed when use_instance) ->
    [B, label_nc (+1 edge channel when use_instance), H, W] in dtype (fp16/bf16/fp32):
    one-hot of the class ids, then 1 where a 4-neighbour has another instance id (both sides of a
    boundary; image borders unmarked). Same function as p2phd_infer.labels.encode_labels."""
    if label.dim() != 4 or label.shape[1] != 1 or not _is_int(label):
        raise ValueError(f"label must be integer [B,1,H,W], got {label.dtype} {tuple(label.shape)}")
    if label_nc < 1:
        raise ValueError(f"label_nc must be >= 1, got {label_nc}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a float type, got {dtype}")
    if use_instance:
        if inst is None:
            raise ValueError("this model needs an instance map")
        if tuple(inst.shape) != tuple(label.shape) or not _is_int(inst):
            raise ValueError(f"inst must be integer {tuple(label.shape)} like label, "
                             f"got {inst.dtype} {tuple(inst.shape)}")
    tensors = (label, inst) if use_instance else (label,)
    if not use_triton(backend, *tensors):
        return label_encode_reference(label, inst, label_nc, use_instance, dtype)
    return _label_encode_triton(label, inst, label_nc, use_instance, dtype)
