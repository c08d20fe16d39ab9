"""Which engine runs a file, decided once for run, serve, edit, the embedding API and --ray, and
the one line that says which engine ran.

An exported file runs on the engine its suffix names (engines/__init__.SUFFIXES), or on OpenVINO
with backend="openvino" (an .onnx). A model.pt runs on OpenVINO's CPU plugin when the device is
the CPU and nothing asks for PyTorch: about twice as fast as PyTorch eager in fp32
(benchmarks/RESULTS.md) and within 1e-4 of it (tests/test_engine_openvino.py), so every command
gives the same image as `run`. PyTorch instead for --mode plain/fast, --compile, --precision
fp16, a model with RGB input (label_nc 0: the conversion traces label ids), a precision this CPU
does not run natively, or without the openvino package.
"""
from __future__ import annotations

from .base import Engine

BACKENDS = ("auto", "torch", "openvino")


def choose_backend(device, *, precision: str = "fp32", mode: str = "auto",
                   compile: bool | str | None = None, backend: str = "auto",
                   label_nc: int | None = None) -> tuple[str, str]:
    """("openvino" or "torch", why) for a model.pt. label_nc: the model's (None: unknown)."""
    if backend != "auto":
        return backend, f"--backend {backend}"
    from ..devices import resolve_device
    if resolve_device(device).type != "cpu":
        return "torch", "the device is not the CPU"
    for given, why in ((mode != "auto", f"--mode {mode}"),
                       (bool(compile), "--compile"),
                       (precision == "fp16", "--precision fp16"),
                       (label_nc == 0, "label_nc 0 (RGB input): OpenVINO converts id-map "
                                       "models only")):
        if given:
            return "torch", why
    from ..errors import Error
    from .openvino_cpu import check_precision, import_openvino
    try:
        import_openvino()
        if precision != "int8":      # int8 runs on OpenVINO only: its refusal is the answer
            check_precision(precision)
    except Error as e:
        return "torch", f"OpenVINO: {e.fault}"
    return "openvino", "the CPU default"


def describe_engine(engine: Engine) -> str:
    """One line: which engine runs, and why it was chosen."""
    info = engine.info
    extra = info.extra
    if info.backend == "openvino":
        what = f"OpenVINO {str(extra.get('openvino', '')).split('-')[0]} CPU {info.precision}"
        if extra.get("source") == "pt":
            name = getattr(getattr(engine, "path", None), "name", None) or "model.pt"
            what += f" ({name} converted once per frame size, cached)"
    elif info.backend == "torch":
        what = f"PyTorch {engine.device} {info.precision} {extra.get('mode') or ''}".rstrip()
        if extra.get("compile"):
            what += f" through torch.compile ({extra['compile']})"
    else:
        what = f"{info.backend} {engine.device} {info.precision}"
    why = extra.get("chosen_because")
    return f"engine: {what}" + (f" [{why}]" if why else "")
