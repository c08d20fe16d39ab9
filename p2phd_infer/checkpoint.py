"""The project checkpoint `model.pt`: one dict, loadable with torch.load(weights_only=True).

{format, version, config, generator, encoder?, features?, label_names?}; generator and encoder
state dicts use NVIDIA's key layout, so official checkpoints import by key.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .config import ModelConfig
from .errors import CheckpointError
from .files import write_atomic
from .networks import build_encoder, build_generator

FORMAT = "p2phd-infer"
VERSION = 1


@dataclass
class Checkpoint:
    config: ModelConfig
    generator: dict[str, torch.Tensor]
    encoder: dict[str, torch.Tensor] | None = None
    features: dict[int, torch.Tensor] | None = None   # label id -> float32 [k, feat_num] centres
    label_names: dict[int, str] | None = None
    extra: dict = field(default_factory=dict)

    def build_generator(self) -> nn.Module:
        return _build_loaded(build_generator, self.config, self.generator, "generator")

    def build_encoder(self) -> nn.Module | None:
        if self.encoder is None:
            return None
        return _build_loaded(build_encoder, self.config, self.encoder, "encoder")


def check_state(net: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Raise CheckpointError naming the key and both shapes where `state` does not fit `net`."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise CheckpointError(f"{what}: keys do not fit the architecture; missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{what}: {k} has shape {tuple(state[k].shape)}, the architecture "
                                  f"needs {tuple(v.shape)}")


def _build_loaded(build, cfg: ModelConfig, state: dict[str, torch.Tensor], what: str) -> nn.Module:
    # Built on the meta device and given the loaded tensors: no random init of 183 M parameters
    # only to overwrite them.
    with torch.device("meta"):
        net = build(cfg)
    check_state(net, state, what)
    net.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    return net


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike) -> None:
    """Atomic: written to a temporary name beside the target, then renamed."""
    data = {
        "format": FORMAT, "version": VERSION, "config": ckpt.config.to_dict(),
        "generator": {k: v.detach().cpu().contiguous() for k, v in ckpt.generator.items()},
        "encoder": None if ckpt.encoder is None else
        {k: v.detach().cpu().contiguous() for k, v in ckpt.encoder.items()},
        "features": None if ckpt.features is None else
        {int(k): torch.as_tensor(v, dtype=torch.float32).cpu() for k, v in ckpt.features.items()},
        "label_names": None if ckpt.label_names is None else
        {int(k): str(v) for k, v in ckpt.label_names.items()},
        **ckpt.extra,
    }
    write_atomic(path, lambda tmp: torch.save(data, tmp))


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, f"no such checkpoint file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling fault is a bad file
        raise CheckpointError(path, f"not a readable torch checkpoint ({e.__class__.__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        hint = (" (an official pix2pixHD state dict? convert it with `p2phd-infer import-official`)"
                if isinstance(data, dict) and any(k.startswith("model.") for k in data) else "")
        raise CheckpointError(path, f"not a {FORMAT} checkpoint{hint}")
    if data.get("version") != VERSION:
        raise CheckpointError(path, f"checkpoint version {data.get('version')}, this release "
                              f"reads {VERSION}")
    try:
        cfg = ModelConfig.from_dict(data["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(path, f"bad architecture config: {e}") from None
    known = {"format", "version", "config", "generator", "encoder", "features", "label_names"}
    ckpt = Checkpoint(cfg, data["generator"], data.get("encoder"), data.get("features"),
                      data.get("label_names"), {k: v for k, v in data.items() if k not in known})
    # Check the architecture now (on the meta device: shapes only, no memory), so a bad file fails
    # at load and not mid-run.
    try:
        with torch.device("meta"):
            check_state(build_generator(cfg), ckpt.generator, "generator")
            if ckpt.encoder is not None:
                check_state(build_encoder(cfg), ckpt.encoder, "encoder")
    except CheckpointError as e:
        raise CheckpointError(path, f"{e}") from None
    return ckpt
