"""Engines: one interface over every backend, chosen by the file a user passes to `--engine`.

| file             | engine          | module     |
| ---------------- | --------------- | ---------- |
| `.pt`            | TorchEngine     | pytorch.py |
| `.onnx`          | OnnxEngine      | onnx.py    |
| `.pt2`           | AotiEngine      | aoti.py    |
| `.plan/.engine`  | TensorRTEngine  | tensorrt.py|
| `.xml` (+`.bin`) | OpenvinoEngine  | openvino.py|

backend="openvino" runs an `.onnx` on OpenVINO's CPU plugin instead of onnxruntime, and a model.pt
through OpenvinoModelEngine (converted per frame size and cached: openvino.open_openvino).

base.py holds what they share (Engine, EngineInfo, the metadata document, feed checks, devices).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import EngineError
from .base import (MAX_INSTANCE_ID, PRECISIONS, Engine, EngineInfo, info_from_json, info_to_json,
                   resolve_device, sidecar_path)
from .pytorch import MODES, FastPathWarning, TorchEngine

SUFFIXES = {".pt": "torch", ".onnx": "onnx", ".pt2": "aoti", ".plan": "tensorrt",
            ".engine": "tensorrt", ".xml": "openvino"}
BACKENDS = ("auto", "torch", "openvino")


def default_engine_path() -> Path:
    """The demo model shipped in the package (trained on synthetic street scenes)."""
    # Beside the package, not importlib.resources: under an editable install with mapped package
    # folders, resources.files() gives a MultiplexedPath that does not convert to a real path.
    return Path(__file__).resolve().parent.parent / "assets" / "demo" / "model.pt"


def open_engine(path: str | Path | None = None, device=None, *, precision: str = "fp32",
                compile: bool | str | None = None, mode: str = "auto",
                backend: str = "auto") -> Engine:
    """The engine for a file (None: the bundled demo model). precision, compile and mode are the
    PyTorch engine's; an exported file carries its own precision, except on OpenVINO, which
    takes fp32 or bf16 at load. backend: auto (by the file), torch, or openvino (an .onnx, an
    .xml, or a model.pt converted once per frame size and cached)."""
    from ..errors import OptionError
    if backend not in BACKENDS:
        raise OptionError("--backend", f"{backend!r}: one of {', '.join(BACKENDS)}")
    path = Path(path) if path is not None else default_engine_path()
    if not path.is_file():
        raise EngineError(path, "no such engine file" if not path.exists() else "not a file")
    suffix = path.suffix.lower()
    kind = SUFFIXES.get(suffix)
    if kind is None:
        hint = (": an official pix2pixHD state dict? convert it with `p2phd-infer import-official`"
                if suffix == ".pth" else f" ({', '.join(SUFFIXES)})")
        raise EngineError(path, f"unknown engine type {suffix!r}{hint}")
    if backend == "torch" and kind != "torch":
        raise OptionError("--backend", f"torch runs a model.pt; {path.name} is a {kind} engine")
    if backend == "openvino" and kind not in ("torch", "onnx", "openvino"):
        raise OptionError("--backend", f"openvino runs a model.pt, an .onnx or an .xml, not a "
                                       f"{kind} engine")
    if kind == "openvino" or (backend == "openvino" and kind == "onnx"):
        from .openvino import OpenvinoEngine
        return OpenvinoEngine(path, device, precision=precision)
    if kind == "torch" and backend == "openvino":
        from .openvino import open_openvino
        return open_openvino(path, device, precision=precision)
    if kind == "torch":
        return TorchEngine(path, device, precision=precision, compile=compile, mode=mode)
    if kind == "onnx":
        from .onnx import OnnxEngine
        return OnnxEngine(path, device)
    if kind == "aoti":
        from .aoti import AotiEngine
        return AotiEngine(path, device)
    from .tensorrt import TensorRTEngine
    return TensorRTEngine(path, device)


__all__ = ["BACKENDS", "MAX_INSTANCE_ID", "MODES", "PRECISIONS", "Engine", "EngineError",
           "EngineInfo", "FastPathWarning", "TorchEngine", "default_engine_path", "info_from_json",
           "info_to_json", "open_engine", "resolve_device", "sidecar_path"]
