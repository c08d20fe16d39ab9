"""Engines: one interface over every backend, chosen by the file a user passes to `--engine`.

| file             | engine          | module     |
| ---------------- | --------------- | ---------- |
| `.pt`            | TorchEngine     | pytorch.py |
| `.onnx`          | OnnxEngine      | onnx.py    |
| `.pt2`           | AotiEngine      | aoti.py    |
| `.plan/.engine`  | TensorRTEngine  | tensorrt.py|
| `.xml` (+`.bin`) | OpenvinoEngine  | openvino.py|

A model.pt runs on OpenVINO on a CPU (OpenvinoModelEngine: converted per frame size and cached),
else on PyTorch: choice.py decides, for every command. backend="openvino" runs an `.onnx` on
OpenVINO's CPU plugin instead of onnxruntime.

base.py holds what they share (Engine, EngineInfo, the metadata document, feed checks); the
OpenVINO engine is openvino.py (engines), openvino_cpu.py (the plugin, what the CPU can run),
openvino_convert.py (model -> IR), openvino_cache.py (the per-user cache).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import EngineError
from .base import (MAX_INSTANCE_ID, PRECISIONS, Engine, EngineInfo, info_from_json, info_to_json,
                   resolve_device, sidecar_path)
from .choice import BACKENDS, choose_backend, describe_engine
from .demo import default_engine_path
from .pytorch import MODES, FastPathWarning, TorchEngine

SUFFIXES = {".pt": "torch", ".onnx": "onnx", ".pt2": "aoti", ".plan": "tensorrt",
            ".engine": "tensorrt", ".xml": "openvino"}


def open_engine(path: str | Path | None = None, device=None, *, precision: str = "fp32",
                compile: bool | str | None = None, mode: str = "auto",
                backend: str = "auto", log: Callable[[str], None] | None = None,
                calibration: str | Path | None = None) -> Engine:
    """The engine for a file (None: the bundled demo model), for every command and the API.

    A model.pt runs where choice.choose_backend says (OpenVINO on a CPU, else PyTorch); an
    exported file on the engine its suffix names. precision: fp32, fp16 (CUDA), bf16, or int8
    (OpenVINO, calibrated on `calibration`, a folder of label maps; default: the bundled
    samples); compile and mode are the PyTorch engine's; an exported file carries its own
    precision, except on OpenVINO, which takes fp32 or bf16 at load. backend: auto, torch, or
    openvino (an .onnx, an .xml, or a model.pt converted once per frame size and cached).
    log(message): told before a conversion. The engine's info.extra says what runs
    ("engine": describe_engine's line) and why ("chosen_because")."""
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
    if calibration is not None and not (kind == "torch" and precision == "int8"):
        raise OptionError("--calibration", "calibrates --precision int8 of a model.pt")
    if kind == "torch":
        engine = _open_checkpoint(path, device, precision, compile, mode, backend, log,
                                  calibration)
    else:
        engine = _open_file(path, kind, device, precision, backend)
        engine.info.extra["chosen_because"] = ("an exported engine file" if backend == "auto"
                                               else f"--backend {backend}")
    engine.info.extra["engine"] = describe_engine(engine)
    return engine


def _open_checkpoint(path: Path, device, precision, compile, mode, backend, log, calibration):
    from ..checkpoint import load_checkpoint
    from ..errors import OptionError
    # A model.pt that OpenVINO has opened before: its recorded metadata, so that a run whose
    # IR and blob are cached never reads the checkpoint's weights.
    recorded = _recorded_checkpoint(path) if backend != "torch" else None
    identity = None
    if recorded is None:
        if backend != "torch":
            from .openvino_cache import _identity
            identity = _identity(path.resolve())
        ckpt = load_checkpoint(path)
    else:
        ckpt = None
    label_nc = ckpt.config.label_nc if ckpt is not None else recorded.config.label_nc
    chosen, why = choose_backend(device, precision=precision, mode=mode, compile=compile,
                                 backend=backend, label_nc=label_nc)
    if chosen != "openvino" and ckpt is None:
        ckpt = load_checkpoint(path)
    if chosen == "openvino":
        if mode == "fast" or compile:
            raise OptionError("--backend", "openvino takes neither --mode fast nor --compile "
                                           "(PyTorch engine options)")
        if label_nc == 0:
            raise OptionError("--backend", "openvino converts id-map models; a label_nc 0 "
                                           "(RGB input) model runs on torch")
        from .openvino import open_openvino
        engine = open_openvino(path, device, precision=precision, log=log, checkpoint=ckpt,
                               calibration=calibration, identity=identity)
    else:
        if precision == "int8":
            raise OptionError("--precision", f"int8 runs on the OpenVINO CPU engine, and this "
                                             f"one runs on PyTorch ({why})")
        engine = TorchEngine(ckpt, device, precision=precision, compile=compile, mode=mode)
        engine.path = path
    engine.info.extra["chosen_because"] = why
    return engine


def _recorded_checkpoint(path: Path):
    """The EngineInfo OpenVINO recorded of this file as it is now (None: none, or no OpenVINO)."""
    try:
        from .openvino import recorded_checkpoint
    except ImportError:
        return None
    recorded, _ = recorded_checkpoint(path)
    return None if recorded is None else recorded[0]


def _open_file(path: Path, kind: str, device, precision: str, backend: str) -> Engine:
    if kind == "openvino" or (backend == "openvino" and kind == "onnx"):
        from .openvino import OpenvinoEngine
        return OpenvinoEngine(path, device, precision=precision)
    if kind == "onnx":
        from .onnx import OnnxEngine
        return OnnxEngine(path, device)
    if kind == "aoti":
        from .aoti import AotiEngine
        return AotiEngine(path, device)
    from .tensorrt import TensorRTEngine
    return TensorRTEngine(path, device)


__all__ = ["BACKENDS", "MAX_INSTANCE_ID", "MODES", "PRECISIONS", "Engine", "EngineError",
           "EngineInfo", "FastPathWarning", "TorchEngine", "choose_backend", "default_engine_path",
           "describe_engine", "info_from_json",
           "info_to_json", "open_engine", "resolve_device", "sidecar_path"]
