"""Multi-scale PatchGAN discriminators (pix2pixHD Sec. 3.2): num_D NLayer discriminators of the
same architecture, D_k seeing the input average-pooled k times, so the coarsest one judges global
layout and the finest one detail. Each returns all its layer outputs: the last is the real/fake map,
the others are the features matched by the feature-matching loss.
"""
from __future__ import annotations

import torch
from torch import nn

from p2phd_infer.networks import downsample_2x


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class NLayerDiscriminator(nn.Module):
    """conv k4 pad 2: [ndf s2, LReLU], (n_layers-1) x [2x s2, IN, LReLU] (at most 512 filters),
    [s1, IN, LReLU], [1 s1]. Each group is its own module so its output can be matched."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        self.n_layers = n_layers
        groups = [[nn.Conv2d(input_nc, ndf, 4, stride=2, padding=2), nn.LeakyReLU(0.2, True)]]
        nf = ndf
        for _ in range(1, n_layers):
            prev, nf = nf, min(nf * 2, 512)
            groups.append([nn.Conv2d(prev, nf, 4, stride=2, padding=2), _norm(nf),
                           nn.LeakyReLU(0.2, True)])
        prev, nf = nf, min(nf * 2, 512)
        groups.append([nn.Conv2d(prev, nf, 4, stride=1, padding=2), _norm(nf), nn.LeakyReLU(0.2, True)])
        groups.append([nn.Conv2d(nf, 1, 4, stride=1, padding=2)])
        self.layers = nn.ModuleList(nn.Sequential(*g) for g in groups)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return outs


class MultiscaleDiscriminator(nn.Module):
    """forward(x) -> [outputs of D_0 (full res), D_1 (pooled once), ...], each a list of layer
    outputs."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, num_D: int = 3):
        super().__init__()
        self.num_D, self.n_layers = num_D, n_layers
        self.scales = nn.ModuleList(NLayerDiscriminator(input_nc, ndf, n_layers) for _ in range(num_D))

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        results = []
        for k, d in enumerate(self.scales):
            if k > 0:
                x = downsample_2x(x)
            results.append(d(x))
        return results
