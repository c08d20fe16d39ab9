"""Multi-scale PatchGAN discriminators (pix2pixHD Sec. 3.2): num_D NLayer discriminators of the
same architecture, D_k seeing the input average-pooled k times, so the coarsest one judges global
layout and the finest one detail.

State-dict keys are NVIDIA's, so an official `latest_net_D.pth` loads for fine-tuning:
  - with intermediate features (the feature-matching loss on, the official getIntermFeat):
    `scale{i}_layer{j}.{m}` where layer j is one group [conv, (IN), LReLU] and m indexes inside it;
  - without (`--no-ganFeat-loss`): `layer{i}.{m}`, each scale one flat Sequential.
The official forward runs the scale stored LAST (`scale{num_D-1}`) on the full-resolution input
and `scale0` on the most pooled one; this does the same, so imported weights judge the resolution
they were trained at. Outputs are raw scores (no Sigmoid): the vanilla GAN loss applies the sigmoid
itself (train/losses.py), and a Sigmoid has no weights, so the keys are the same either way.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from p2phd_infer.checkpoint import check_state
from p2phd_infer.errors import CheckpointError
from p2phd_infer.networks import downsample_2x


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def layer_groups(input_nc: int, ndf: int = 64, n_layers: int = 3) -> list[list[nn.Module]]:
    """conv k4 pad 2: [ndf s2, LReLU], (n_layers-1) x [2x s2, IN, LReLU] (at most 512 filters),
    [s1, IN, LReLU], [1 s1]: n_layers + 2 groups."""
    groups = [[nn.Conv2d(input_nc, ndf, 4, stride=2, padding=2), nn.LeakyReLU(0.2, True)]]
    nf = ndf
    for _ in range(1, n_layers):
        prev, nf = nf, min(nf * 2, 512)
        groups.append([nn.Conv2d(prev, nf, 4, stride=2, padding=2), _norm(nf),
                       nn.LeakyReLU(0.2, True)])
    prev, nf = nf, min(nf * 2, 512)
    groups.append([nn.Conv2d(prev, nf, 4, stride=1, padding=2), _norm(nf), nn.LeakyReLU(0.2, True)])
    groups.append([nn.Conv2d(nf, 1, 4, stride=1, padding=2)])
    return groups


class NLayerDiscriminator(nn.Module):
    """One scale. intermediate=True: groups `model0..model{n_layers+1}`, forward returns every
    group's output (the last is the real/fake map, the others are matched by the feature-matching
    loss); intermediate=False: one flat Sequential `model`, forward returns [scores]."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3,
                 intermediate: bool = True):
        super().__init__()
        self.n_layers, self.intermediate = n_layers, intermediate
        groups = layer_groups(input_nc, ndf, n_layers)
        if intermediate:
            for j, g in enumerate(groups):
                setattr(self, f"model{j}", nn.Sequential(*g))
        else:
            self.model = nn.Sequential(*[m for g in groups for m in g])

    def groups(self) -> list[nn.Module]:
        if self.intermediate:
            return [getattr(self, f"model{j}") for j in range(self.n_layers + 2)]
        return [self.model]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return run_groups(self.groups(), x)


def run_groups(groups: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    outs = []
    for g in groups:
        x = g(x)
        outs.append(x)
    return outs


class _Scale:
    """A view of one scale of a MultiscaleDiscriminator (callable like an NLayerDiscriminator),
    not a registered module: the state-dict keys stay the official ones."""

    def __init__(self, groups: list[nn.Module]):
        self.groups = groups

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        return run_groups(self.groups, x)


class MultiscaleDiscriminator(nn.Module):
    """forward(x) -> [outputs of the full-resolution scale, the scale pooled once, ...], each a
    list of group outputs (just [scores] with intermediate=False)."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, num_D: int = 3,
                 intermediate: bool = True):
        super().__init__()
        self.num_D, self.n_layers, self.intermediate = num_D, n_layers, intermediate
        for i in range(num_D):
            d = NLayerDiscriminator(input_nc, ndf, n_layers, intermediate)
            if intermediate:
                for j, g in enumerate(d.groups()):
                    setattr(self, f"scale{i}_layer{j}", g)
            else:
                setattr(self, f"layer{i}", d.model)

    @property
    def scales(self) -> list[_Scale]:
        """The scales in forward order: [0] sees the full resolution (stored as the last one)."""
        views = []
        for k in range(self.num_D):
            i = self.num_D - 1 - k
            groups = ([getattr(self, f"scale{i}_layer{j}") for j in range(self.n_layers + 2)]
                      if self.intermediate else [getattr(self, f"layer{i}")])
            views.append(_Scale(groups))
        return views

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        results = []
        for k, scale in enumerate(self.scales):
            if k > 0:
                x = downsample_2x(x)
            results.append(scale(x))
        return results


# ----------------------------------------------------------------------------- loading weights

# Where each group of an NLayer discriminator starts in the flat (no intermediate features)
# layout: group 0 is [conv, LReLU], the middle ones [conv, IN, LReLU], the last [conv].
def _flat_offsets(n_layers: int) -> list[int]:
    sizes = [2] + [3] * n_layers + [1]
    return [sum(sizes[:j]) for j in range(len(sizes))]


_INTERM = re.compile(r"scale(\d+)_layer(\d+)\.(\d+)\.(weight|bias)$")
_FLAT = re.compile(r"layer(\d+)\.(\d+)\.(weight|bias)$")


def to_layout(state: dict[str, torch.Tensor], D: MultiscaleDiscriminator
              ) -> dict[str, torch.Tensor]:
    """A discriminator state dict in either official layout (with intermediate features, or
    flat) -> D's own keys, so a D trained with the feature-matching loss can fine-tune without it
    and the other way round. Keys that match neither are kept as they are (check_state then
    names them)."""
    offsets = _flat_offsets(D.n_layers)
    out = {}
    for key, value in state.items():
        group = None          # (official scale index, group, index in group, weight|bias)
        if (m := _INTERM.match(key)):
            group = (int(m[1]), int(m[2]), int(m[3]), m[4])
        elif (m := _FLAT.match(key)):
            flat = int(m[2])
            j = max((j for j, o in enumerate(offsets) if o <= flat), default=0)
            group = (int(m[1]), j, flat - offsets[j], m[3])
        if group is None:
            out[key] = value
            continue
        i, j, idx, kind = group
        if D.intermediate:
            out[f"scale{i}_layer{j}.{idx}.{kind}"] = value
        elif j < len(offsets):
            out[f"layer{i}.{offsets[j] + idx}.{kind}"] = value
        else:
            out[key] = value
    return out


def fit_discriminator(D: MultiscaleDiscriminator, state: dict[str, torch.Tensor],
                      path: str) -> dict[str, torch.Tensor]:
    """An official latest_net_D.pth's state dict (either layout) in D's keys, or CheckpointError
    naming the file, the key and both shapes (and what the file's shapes imply). D may be on the
    meta device (a check before any work)."""
    from p2phd_infer.official import infer_discriminator_shape
    mapped = to_layout(state, D)
    try:
        check_state(D, mapped, "discriminator")
    except CheckpointError as e:
        hint = ""
        try:
            shape = infer_discriminator_shape(state)
        except CheckpointError:
            shape = None
        if shape is not None:
            hint = (f" (the file holds num_D {shape['num_D']}, n_layers {shape['n_layers']}, "
                    f"ndf {shape['ndf']}, {shape['input_nc']} input channels: pass --num-d "
                    f"{shape['num_D']} --n-layers-d {shape['n_layers']} --ndf {shape['ndf']}, "
                    f"and label/instance options giving {shape['input_nc']} D inputs)")
        raise CheckpointError(path, f"{e}{hint}") from None
    return mapped


def load_discriminator(D: MultiscaleDiscriminator, state: dict[str, torch.Tensor],
                       path: str) -> None:
    """Load an official latest_net_D.pth's weights into D (see fit_discriminator)."""
    mapped = fit_discriminator(D, state, path)
    D.load_state_dict({k: v.float() for k, v in mapped.items()})
