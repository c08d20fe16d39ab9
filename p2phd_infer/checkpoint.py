"""The project checkpoint `model.pt`: one dict, loadable with torch.load(weights_only=True).

{format, version, config, generator, encoder?, features?, label_names?}; generator and encoder
state dicts use NVIDIA's key layout, so official checkpoints import by key.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .config import ModelConfig
from .errors import CheckpointError
from .files import write_atomic
from .networks import build_encoder, build_generator
from .label_names import check_colors
from .locations import check_regular

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


def _all_finite(v: torch.Tensor) -> bool:
    # numpy for fp32/fp64 (every checkpoint here): one pass, no intra-op thread pool. Measured
    # on 2 busy cores: 4 ms for the demo model's 4.5 M weights, against 1.2 s for torch.isfinite
    # with 2 threads (each of its 69 calls waits for the pool).
    if v.dtype in (torch.float32, torch.float64) and v.device.type == "cpu":
        import numpy as np
        return bool(np.isfinite(v.detach().numpy()).all())
    return bool(torch.isfinite(v).all())


def check_finite(tensors: dict, what: str) -> None:
    """CheckpointError naming the first tensor that holds NaN or infinite values: weights like
    that give black images with nothing to say why."""
    for k, v in tensors.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not _all_finite(v):
            n = int(v.numel() - torch.isfinite(v).sum())
            raise CheckpointError(f"{what}.{k} holds {n:,} NaN or infinite value"
                                  f"{'s' if n > 1 else ''} (of {v.numel():,}): the weights are "
                                  f"damaged (a diverged training run?)")


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


def torch_load(path: str | os.PathLike, what: str = "file"):
    """torch.load(weights_only=True) of a file we are given, every fault a one-line
    CheckpointError naming it: not a torch file (an ONNX or TensorRT engine, random bytes), a
    truncated one, or a pickle that names a class or function the weights-only loader refuses.
    torch's own message for these suggests turning the weights-only loader off: that advice is
    never passed on (such a file can run code when loaded)."""
    path = Path(path)
    check_regular(path, what, CheckpointError)       # a FIFO or device: said so, never opened
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e.strerror or e})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # pickle-protocol notes: the error says it all
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling fault is a bad file
        raise CheckpointError(path, f"not a readable torch {what}: {_load_fault(path, head, e)}") \
            from None


def _load_fault(path: Path, head: bytes, error: Exception) -> str:
    """What is wrong with a file torch.load refused, in our words (torch's message is many lines
    and advises turning the weights-only loader off)."""
    refused = re.search(r"GLOBAL ([\w.]+)", str(error))
    if refused is not None:
        return (f"it holds a pickled {refused.group(1)}, which is refused (a checkpoint holds "
                f"only tensors, numbers, strings and containers of them)")
    suffix = path.suffix.lower()
    if suffix in (".onnx", ".plan", ".engine", ".pt2"):
        return f"an exported engine ({suffix} file); give the model.pt it was exported from"
    if not head:
        return "the file is empty"
    if head.startswith(b"PK"):
        return "a truncated or damaged torch zip archive"
    return "neither a torch zip archive nor a torch pickle"


def _check_state_dict(state, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a file: str keys, floating-point tensors; else CheckpointError."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{what}: expected a state dict, got {type(state).__name__}")
    for k, v in state.items():
        if not isinstance(k, str):
            raise CheckpointError(f"{what}: key {k!r} is not a string")
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{what}.{k}: expected a tensor, got {type(v).__name__}")
        if not v.is_floating_point():
            raise CheckpointError(f"{what}.{k}: expected floating-point weights, got {v.dtype}")
    return state


def _check_features(features, feat_num: int) -> dict[int, torch.Tensor] | None:
    if features is None:
        return None
    if not isinstance(features, dict):
        raise CheckpointError(f"features: expected a dict {{label: centres}}, got "
                              f"{type(features).__name__}")
    for k, v in features.items():
        if isinstance(k, bool) or not isinstance(k, int):
            raise CheckpointError(f"features: label {k!r} is not an integer")
        if not isinstance(v, torch.Tensor) or not v.is_floating_point() or v.dim() != 2 or \
                v.shape[1] != feat_num:
            desc = (f"a {v.dtype} tensor of shape {tuple(v.shape)}" if isinstance(v, torch.Tensor)
                    else type(v).__name__)
            raise CheckpointError(f"features: label {k}: expected float centres [k, {feat_num}], "
                                  f"got {desc}")
    return features


def _check_label_names(names) -> dict[int, str] | None:
    if names is None:
        return None
    if not isinstance(names, dict) or not all(
            isinstance(k, int) and not isinstance(k, bool) and isinstance(v, str)
            for k, v in names.items()):
        raise CheckpointError("label_names: expected a dict {label id: name}")
    return names


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """model.pt -> Checkpoint, or CheckpointError naming the file and the field at fault. Every
    field is checked here, and the architecture against the weights' shapes on the meta device
    (no memory): a bad file fails at load, never mid-run, and never by allocating."""
    path = Path(path)
    data = torch_load(path, "checkpoint file")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        hint = (" (an official pix2pixHD state dict? convert it with `p2phd-infer import-official`)"
                if isinstance(data, dict) and any(str(k).startswith("model.") for k in data)
                else "")
        raise CheckpointError(path, f"not a {FORMAT} checkpoint{hint}")
    if data.get("version") != VERSION:
        raise CheckpointError(path, f"checkpoint version {data.get('version')!r}, this release "
                              f"reads {VERSION}")
    for key in ("config", "generator"):
        if key not in data:
            raise CheckpointError(path, f"no `{key}` in the checkpoint")
    try:
        cfg = ModelConfig.from_dict(data["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(path, f"bad architecture config: {e}") from None
    known = {"format", "version", "config", "generator", "encoder", "features", "label_names"}
    try:
        generator = _check_state_dict(data["generator"], "generator")
        encoder = None if data.get("encoder") is None else \
            _check_state_dict(data["encoder"], "encoder")
        check_finite(generator, "generator")
        if encoder is not None:
            check_finite(encoder, "encoder")
        features = _check_features(data.get("features"), cfg.feat_num)
        if features is not None:
            check_finite(features, "features")
        names = _check_label_names(data.get("label_names"))
        if data.get("label_colors") is not None:     # palette.py would index a short colour
            check_colors(data["label_colors"], "label_colors", CheckpointError)
        ckpt = Checkpoint(cfg, generator, encoder, features, names,
                          {k: v for k, v in data.items() if k not in known})
        with torch.device("meta"):
            check_state(build_generator(cfg), ckpt.generator, "generator")
            if ckpt.encoder is not None:
                check_state(build_encoder(cfg), ckpt.encoder, "encoder")
    except CheckpointError as e:
        raise CheckpointError(path, f"{e}") from None
    return ckpt
