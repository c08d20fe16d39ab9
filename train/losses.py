"""pix2pixHD objective (Eq. 4): least-squares GAN + discriminator feature matching + VGG19
perceptual loss, with the reference's weights."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from p2phd_infer.checkpoint import check_state, torch_load
from p2phd_infer.errors import CheckpointError, MissingDependency

VGG19_FILE = "vgg19-dcbb9e9d.pth"      # torchvision's ImageNet VGG19 weights file name
# relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 as slices of torchvision's vgg19().features.
VGG_SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))
VGG_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


def gan_loss(preds: list[list[torch.Tensor]], target_is_real: bool, lsgan: bool = True
             ) -> torch.Tensor:
    """Summed over scales, on each scale's last output, the mean over its elements of:
    LSGAN (the default): the squared distance to 1 (real) or 0 (fake);
    vanilla GAN (`--no-lsgan`): binary cross-entropy of sigmoid(score) against 1 or 0.

    The official code puts a Sigmoid at the end of D and uses BCELoss; BCE with logits on the raw
    score is the same function (BCE(sigmoid(s), t) = softplus(s) - t*s), computed without
    rounding sigmoid(s) to 0 or 1 first, so large scores give finite losses and gradients
    (BCELoss clamps log(0) to -100 instead). The scores D returns are raw in both modes. (With
    its feature-matching loss on, the official MultiscaleDiscriminator does not copy that Sigmoid
    into its scales, so its BCELoss is fed raw scores; here the sigmoid is always applied, once.)"""
    loss = 0.0
    for scale in preds:
        p = scale[-1].float()
        target = torch.full_like(p, 1.0 if target_is_real else 0.0)
        loss = loss + (F.mse_loss(p, target) if lsgan else
                       F.binary_cross_entropy_with_logits(p, target))
    return loss


def feature_matching_loss(fake: list[list[torch.Tensor]], real: list[list[torch.Tensor]],
                          n_layers: int, lambda_feat: float) -> torch.Tensor:
    """L1 between D's intermediate outputs (all but the last) on fake and (detached) real,
    weighted (1/num_D) * (4/(n_layers+1)) * lambda_feat."""
    w = (1.0 / len(fake)) * (4.0 / (n_layers + 1)) * lambda_feat
    loss = 0.0
    for f_scale, r_scale in zip(fake, real):
        for f, r in zip(f_scale[:-1], r_scale[:-1]):
            loss = loss + w * F.l1_loss(f.float(), r.detach().float())
    return loss


def default_vgg_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE


class VGGWeightsMissing(MissingDependency, FileNotFoundError):
    """No VGG19 weights file (also a FileNotFoundError, for callers that catch that)."""


def find_vgg_weights(path: str | os.PathLike | None) -> Path:
    """The VGG19 weights file: --vgg-weights, else torch's hub cache. Never downloads."""
    p = Path(path) if path else default_vgg_path()
    if not p.is_file():
        what = "no such VGG19 weights file" if path else \
            "no VGG19 weights in the torch hub cache"
        raise VGGWeightsMissing(
            p, f"{what}: pass --vgg-weights PATH to torchvision's {VGG19_FILE}, or train "
               f"without the perceptual loss with --no-vgg")
    return p


def read_vgg_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """torchvision's VGG19 state dict -> the features.* weights of the first 30 layers, keyed as
    in vgg19().features; CheckpointError naming the file for anything else."""
    state = torch_load(path, "VGG19 weights file")
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(path, "not torchvision VGG19 weights (expected a state dict)")
    out = {}
    for k, v in state.items():
        parts = k.split(".")
        if len(parts) == 3 and parts[0] == "features" and parts[1].isdigit() and \
                int(parts[1]) < 30:
            if not isinstance(v, torch.Tensor) or not v.is_floating_point():
                raise CheckpointError(path, f"{k}: expected floating-point weights")
            out[f"{parts[1]}.{parts[2]}"] = v
    return out


def _vgg19_features() -> nn.Sequential:
    """torchvision's vgg19().features (same module indices, so its weights load by key), without
    building the 100M-parameter classifier that the loss never uses."""
    try:
        from torchvision.models.vgg import cfgs, make_layers
        return make_layers(cfgs["E"], batch_norm=False)
    except ImportError:
        from torchvision.models import vgg19
        return vgg19(weights=None).features


class VGG19Features(nn.Module):
    """Frozen VGG19 cut into the five slices the perceptual loss compares."""

    def __init__(self, weights_path: str | os.PathLike | None = None):
        super().__init__()
        path = find_vgg_weights(weights_path)    # fail before building
        features = _vgg19_features()[:30]
        if path is not None:
            state = read_vgg_state(path)
            try:
                check_state(features, state, "VGG19 features")
            except CheckpointError as e:
                raise CheckpointError(path, f"not torchvision VGG19 weights: {e}") from None
            features.load_state_dict(state)
        self.slices = nn.ModuleList(features[a:b] for a, b in VGG_SLICES)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)       # always frozen, always eval

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for s in self.slices:
            x = s(x)
            outs.append(x)
        return outs


class VGGLoss(nn.Module):
    """sum_i w_i * L1(VGG_i(fake), VGG_i(real)) * lambda; images fed in [-1,1] as the reference."""

    def __init__(self, vgg: VGG19Features, lambda_feat: float = 10.0):
        super().__init__()
        self.vgg, self.lambda_feat = vgg, lambda_feat

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        both = self.vgg(torch.cat([fake, real], 0))
        n = fake.shape[0]
        loss = 0.0
        for w, f in zip(VGG_WEIGHTS, both):
            loss = loss + w * F.l1_loss(f[:n].float(), f[n:].detach().float())
        return loss * self.lambda_feat
