"""Reading a network's weights file (Inception, LPIPS, DeepLabV3): checkpoint.torch_load, the
project's one torch.load(weights_only=True), then a check that it is a state dict."""
from __future__ import annotations

import os

import torch

from ..checkpoint import torch_load
from ..errors import InputError


def read_state_dict(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """{name: tensor} from FILE; one-line errors naming it (missing, unreadable, unsafe pickle,
    not a state dict). `what` names the file in messages ("FID Inception weights")."""
    if not os.path.exists(path):
        raise InputError(path, f"no such {what} file")
    sd = torch_load(path, what)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]            # torchvision's reference training scripts save {"model": ...}
    if not isinstance(sd, dict) or not sd or \
            not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise InputError(path, f"not a state dict (names -> tensors) of {what}")
    return sd
