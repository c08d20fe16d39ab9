"""The inference graph every engine computes: ids in, image out.

label int32 [B,1,H,W], inst int32 [B,1,H,W], feat float [B,F,H,W] (features models only)
-> image float [B,3,H,W] in [-1,1]. Label encoding happens inside, so an exported graph takes ids,
never a one-hot (ids are 36x fewer bytes to move).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig
from .labels import encode_labels
from .networks import build_generator


class Synthesizer(nn.Module):
    def __init__(self, cfg: ModelConfig, generator: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.generator = generator if generator is not None else build_generator(cfg)

    def forward(self, label: torch.Tensor, inst: torch.Tensor,
                feat: torch.Tensor | None = None) -> torch.Tensor:
        dtype = next(self.generator.parameters()).dtype
        if self.cfg.feat_num > 0 and feat is None:
            B, _, H, W = label.shape
            feat = torch.zeros(B, self.cfg.feat_num, H, W, dtype=dtype, device=label.device)
        x = encode_labels(label, inst, self.cfg.label_nc, self.cfg.use_instance,
                          feat if self.cfg.feat_num > 0 else None, dtype=dtype)
        return self.generator(x)


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """[-1,1] float [B,3,H,W] -> uint8 [B,H,W,3]: round((x+1)/2*255), clipped."""
    x = torch.round((image.float() + 1.0) * 127.5).clamp_(0, 255)
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def from_uint8(image: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (any layout) -> float in [-1,1]: x/127.5 - 1, how photos and RGB inputs enter
    the networks (the inverse of to_uint8 up to its rounding)."""
    return image.float() / 127.5 - 1.0


def psnr(image: torch.Tensor, reference: torch.Tensor, peak: float = 2.0) -> float:
    """PSNR in dB between two images. Images in [-1,1] (peak-to-peak 2, the default) are measured
    on the [0,1] scale; uint8 images take peak=255."""
    return psnr_of_mse(float(((image.double() - reference.double()) ** 2).mean()), peak)


def psnr_of_mse(mse: float, peak: float = 2.0) -> float:
    """PSNR in dB of a mean squared error (pooled over many images, say) at that peak."""
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)
