"""The one device rule, in the model layer so that everything above it (styles, engines, export,
the Ray executor) resolves devices the same way.

parse_device: the syntax alone (cpu, cuda, cuda:N, auto), without asking whether this process
sees a GPU: the Ray driver may have none while its workers do. resolve_device: the device this
process will run on, checked against what PyTorch sees.
"""
from __future__ import annotations

import torch

from .errors import MissingDependency, OptionError

DEVICE_HELP = "cpu, cuda, cuda:N or auto"


def parse_device(device: str | torch.device | None) -> torch.device | None:
    """None/"auto" -> None (decided where it runs); "cpu", "cuda", "cuda:N" -> torch.device.
    OptionError for anything else (an empty string, "mps", "gpu", "cuda:x")."""
    if device is None:
        return None
    if isinstance(device, str):
        if device.strip() == "":
            raise OptionError("--device", f"empty; give {DEVICE_HELP}")
        if device.strip() == "auto":
            return None
    try:
        dev = torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, TypeError, ValueError):
        raise OptionError("--device", f"{device!r} is not a device ({DEVICE_HELP})") from None
    if dev.type not in ("cpu", "cuda"):
        raise OptionError("--device", f"{device!r}: this project runs on cpu or cuda")
    return dev


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None/"auto" -> cuda if present, else cpu; "cuda" -> "cuda:N" (the current device), so
    tensors compare equal and set_device has an index. OptionError for a device this PyTorch
    cannot run on (MissingDependency when it sees no CUDA device at all)."""
    dev = parse_device(device)
    if dev is None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MissingDependency("--device", f"{str(device)!r} asked for, but this PyTorch "
                                                f"sees no CUDA device")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        elif dev.index >= torch.cuda.device_count():
            raise OptionError("--device", f"{str(device)!r}: there are "
                                          f"{torch.cuda.device_count()} CUDA devices")
    return dev


__all__ = ["DEVICE_HELP", "parse_device", "resolve_device"]
