"""pix2pixHD networks (Wang et al. 2018, Fig. 3), with NVIDIA's state-dict key layout.

Module indices inside each nn.Sequential are part of the checkpoint format (`model.16.conv_block.1`),
so layers are appended in exactly the official order, activations and paddings included.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .kernels.instance_mean import instance_mean


def _norm(channels: int) -> nn.Module:
    # Per-sample statistics, no affine, no running stats: batching never changes a result.
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def _conv7(cin: int, cout: int) -> list[nn.Module]:
    return [nn.ReflectionPad2d(3), nn.Conv2d(cin, cout, kernel_size=7, padding=0)]


def _down(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel_size=3, stride=2, padding=1), _norm(cout), nn.ReLU(True)]


def _up(cin: int, cout: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(cin, cout, kernel_size=3, stride=2, padding=1, output_padding=1),
            _norm(cout), nn.ReLU(True)]


def downsample_2x(x: torch.Tensor) -> torch.Tensor:
    """The pyramid step between stages and discriminator scales (edge pixels average fewer taps)."""
    return nn.functional.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)


class ResnetBlock(nn.Module):
    """x + [pad, conv3, IN, ReLU, pad, conv3, IN](x); no activation after the sum."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0), _norm(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0), _norm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def global_generator_layers(input_nc: int, output_nc: int, ngf: int, n_downsample: int,
                            n_blocks: int, with_output: bool = True) -> list[nn.Module]:
    """G1 as one flat layer list: c7s1-ngf, d*(conv s2), b*residual, d*(convT s2), c7s1-3, tanh."""
    layers: list[nn.Module] = [*_conv7(input_nc, ngf), _norm(ngf), nn.ReLU(True)]
    for i in range(n_downsample):
        layers += _down(ngf * 2**i, ngf * 2**(i + 1))
    layers += [ResnetBlock(ngf * 2**n_downsample) for _ in range(n_blocks)]
    for i in range(n_downsample):
        mult = 2 ** (n_downsample - i)
        layers += _up(ngf * mult, ngf * mult // 2)
    if with_output:
        layers += [*_conv7(ngf, output_nc), nn.Tanh()]
    return layers


class GlobalGenerator(nn.Module):
    """G1, the global generator, trained alone at half resolution."""

    def __init__(self, input_nc: int, output_nc: int = 3, ngf: int = 64, n_downsample: int = 4,
                 n_blocks: int = 9):
        super().__init__()
        self.model = nn.Sequential(*global_generator_layers(input_nc, output_nc, ngf, n_downsample,
                                                            n_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LocalEnhancer(nn.Module):
    """G = {G1, G2}: G1 runs on the input pooled 2**n times; each enhancer n adds its front half's
    features to the previous stage's output, then its back half upsamples."""

    def __init__(self, input_nc: int, output_nc: int = 3, ngf: int = 32, n_downsample_global: int = 4,
                 n_blocks_global: int = 9, n_local_enhancers: int = 1, n_blocks_local: int = 3):
        super().__init__()
        self.n_local_enhancers = n_local_enhancers
        ngf_global = ngf * 2**n_local_enhancers
        # G1 without its output layers (pad, conv7, tanh): the enhancer takes its last features.
        self.model = nn.Sequential(*global_generator_layers(
            input_nc, output_nc, ngf_global, n_downsample_global, n_blocks_global, with_output=False))
        for n in range(1, n_local_enhancers + 1):
            ngf_n = ngf * 2 ** (n_local_enhancers - n)
            front = [*_conv7(input_nc, ngf_n), _norm(ngf_n), nn.ReLU(True), *_down(ngf_n, 2 * ngf_n)]
            back: list[nn.Module] = [ResnetBlock(2 * ngf_n) for _ in range(n_blocks_local)]
            back += _up(2 * ngf_n, ngf_n)
            if n == n_local_enhancers:
                back += [*_conv7(ngf, output_nc), nn.Tanh()]
            setattr(self, f"model{n}_1", nn.Sequential(*front))
            setattr(self, f"model{n}_2", nn.Sequential(*back))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pyramid = [x]
        for _ in range(self.n_local_enhancers):
            pyramid.append(downsample_2x(pyramid[-1]))
        out = self.model(pyramid[-1])
        for n in range(1, self.n_local_enhancers + 1):
            front = getattr(self, f"model{n}_1")
            back = getattr(self, f"model{n}_2")
            out = back(front(pyramid[self.n_local_enhancers - n]) + out)
        return out


class Encoder(nn.Module):
    """E: image -> feat_num channels, then the instance-wise mean (every pixel gets its instance's
    average), so each object carries one style vector."""

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 16, n_downsample: int = 4):
        super().__init__()
        layers: list[nn.Module] = [*_conv7(input_nc, ngf), _norm(ngf), nn.ReLU(True)]
        for i in range(n_downsample):
            layers += _down(ngf * 2**i, ngf * 2**(i + 1))
        for i in range(n_downsample):
            mult = 2 ** (n_downsample - i)
            layers += _up(ngf * mult, ngf * mult // 2)
        layers += [*_conv7(ngf, output_nc), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, inst: torch.Tensor) -> torch.Tensor:
        return instance_mean(self.model(image), inst)


def build_generator(cfg: ModelConfig) -> nn.Module:
    if cfg.netG == "global":
        return GlobalGenerator(cfg.input_nc, cfg.output_nc, cfg.ngf, cfg.n_downsample_global,
                               cfg.n_blocks_global)
    return LocalEnhancer(cfg.input_nc, cfg.output_nc, cfg.ngf, cfg.n_downsample_global,
                         cfg.n_blocks_global, cfg.n_local_enhancers, cfg.n_blocks_local)


def build_encoder(cfg: ModelConfig) -> Encoder:
    if cfg.feat_num <= 0:
        raise ValueError("this model has no encoder (feat_num is 0)")
    return Encoder(3, cfg.feat_num, cfg.nef, cfg.n_downsample_E)
