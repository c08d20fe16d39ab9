"""Running the feature encoder E on a photo and reading off one feature vector per instance.

Shared by the `features` command (the per-class dictionary) and style control (`--style-image`),
so both see E exactly as the generator saw it in training.

Resolution: E runs at the resolution it was trained at. E is trained with G1 (the global stage);
when the local enhancer is trained at 2x that resolution, pix2pixHD feeds E the photo downsampled
2x and upsamples its output (nearest) to full resolution. This is the
trainer's rule (train/trainer.py encode_features), computed the same way here: for a model with n
local enhancers, E sees the photo after n steps of the generator's 2x pyramid step
(`downsample_2x`) with the instance map subsampled to match ([::2, ::2] per step), takes its
instance mean there, its output is upsampled nearest to full resolution, and the instance mean is
taken again over the full-resolution instance map, so every instance carries one vector (thin
instances that vanish at E's resolution take the mean of what their pixels were upsampled from).
A global model runs E at the input resolution.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from .errors import InputError
from .config import ModelConfig
from .kernels.instance_mean import instance_mean
from .networks import Encoder, downsample_2x


def encoder_multiple(cfg: ModelConfig) -> int:
    """H and W of a photo given to `encode_photo` must be multiples of this."""
    return 2 ** (cfg.n_downsample_E + cfg.enhancers)


def encode_photo(encoder: Encoder, cfg: ModelConfig, image: torch.Tensor,
                 inst: torch.Tensor) -> torch.Tensor:
    """image float [B,3,H,W] in [-1,1], inst int [B,1,H,W] -> instance-mean features
    float32 [B,F,H,W]: every pixel carries its instance's mean of E's output."""
    B, _, H, W = image.shape
    m = encoder_multiple(cfg)
    if H % m or W % m:
        raise InputError(f"photo size {W}x{H} is not a multiple of {m} (the encoder's "
                         f"{cfg.n_downsample_E} downsamplings at 1/{2 ** cfg.enhancers} resolution)")
    if tuple(inst.shape) != (B, 1, H, W):
        raise InputError(f"instance map {tuple(inst.shape)} does not match the photo {(B, 1, H, W)}")
    return encoder_features(encoder, image.float(), inst, cfg.enhancers).float()


def encoder_features(encoder: Encoder, image: torch.Tensor, inst: torch.Tensor,
                     enhancers: int) -> torch.Tensor:
    """E's per-instance features at the generator's full resolution, the one rule training,
    `features` and `--style-image` share. With local enhancers, E runs at G1's resolution (the
    image pooled 2**enhancers times, instance ids subsampled), as it was trained in the global
    stage; its output is upsampled nearest and averaged per full-resolution instance again, so
    every instance carries one constant vector."""
    if enhancers == 0:
        return encoder(image, inst)
    small, small_inst = image, inst
    for _ in range(enhancers):
        small, small_inst = downsample_2x(small), small_inst[..., ::2, ::2]
    feat = encoder(small, small_inst)
    feat = F.interpolate(feat, size=image.shape[-2:], mode="nearest")
    return instance_mean(feat, inst)


def instance_table(feat: torch.Tensor, inst: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sample: feat [F,H,W] (an instance-mean map), inst [1,H,W] -> (ids int64 [N] sorted,
    means float32 [N,F], pixel counts int64 [N]). Host-synchronising (unique): for offline use
    (the dictionary, a style photo), never the per-frame path."""
    Fdim = feat.shape[0]
    ids, inv = torch.unique(inst.reshape(-1).long(), return_inverse=True)
    counts = torch.bincount(inv, minlength=ids.numel())
    pix = feat.reshape(Fdim, -1).t().float()
    sums = torch.zeros(ids.numel(), Fdim, dtype=torch.float32, device=feat.device)
    sums.index_add_(0, inv, pix)
    # The map is already constant per instance; averaging again reads it off robustly.
    return ids, sums / counts[:, None].float(), counts
