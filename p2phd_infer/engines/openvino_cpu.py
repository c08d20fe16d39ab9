"""OpenVINO's CPU plugin: the import, one Core per process, and what this CPU can run.

precision: fp32 (INFERENCE_PRECISION_HINT f32: OpenVINO would otherwise pick bf16 by itself on a
CPU that has it), bf16 only where the plugin reports native BF16 in OPTIMIZATION_CAPABILITIES
(AVX512-BF16 or AMX; elsewhere OpenVINO would emulate it slower than fp32), int8 only where it
reports INT8 and the CPU has VNNI or AMX (the dot-product instructions int8 needs to be faster
than fp32; without them OpenVINO runs int8 as widened fp32 arithmetic). fp16 is refused on a
CPU, as the PyTorch engine refuses it (engines/pytorch.py): it buys no speed without
AVX512-FP16, and mapping it silently to bf16 would hand back other numbers than asked for.
"""
from __future__ import annotations

import os
import threading

import torch

from ..devices import parse_device
from ..errors import MissingDependency, OptionError

PRECISIONS = ("fp32", "bf16", "int8")
# INFERENCE_PRECISION_HINT per precision: an int8 model computes its quantized layers in int8
# and keeps the layers left in float (openvino_int8.IGNORED) in f32.
OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
# /proc/cpuinfo flags that give int8 dot products (AVX512-VNNI, AVX-VNNI, AMX int8).
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise MissingDependency("openvino", "OpenVINO engines need it: pip install openvino") \
            from None
    return openvino


_core = None
_core_lock = threading.Lock()


def core():
    """One OpenVINO Core per process (it holds the loaded CPU plugin)."""
    global _core
    with _core_lock:
        if _core is None:
            _core = import_openvino().Core()
        return _core


def openvino_version() -> str:
    return import_openvino().get_version()


def cpu_capabilities() -> set[str]:
    return {str(c) for c in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")}


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none: not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:          # not Linux
        return max(1, os.cpu_count() or 1)


def check_precision(precision: str) -> None:
    """OptionError for a precision the OpenVINO CPU engine does not run (fast) on this CPU."""
    if precision not in PRECISIONS:
        why = ("fp16 on a CPU is refused (no speed without AVX512-FP16, and not the bf16 it "
               "could be mapped to); use fp32, bf16 or int8") if precision == "fp16" else \
            f"one of {', '.join(PRECISIONS)}"
        raise OptionError("--precision", f"{precision!r} for the OpenVINO engine: {why}")
    if precision == "bf16" and "BF16" not in cpu_capabilities():
        raise OptionError("--precision", "bf16: this CPU has no native BF16 (OpenVINO's CPU "
                                         "plugin reports " + ", ".join(sorted(cpu_capabilities()))
                          + "); use fp32")
    if precision == "int8":
        flags = cpu_flags()
        if "INT8" not in cpu_capabilities() or (flags and not flags & set(INT8_FLAGS)):
            raise OptionError("--precision", "int8: this CPU has no VNNI or AMX int8 dot products "
                                             "(int8 would be slower than fp32 here); use fp32")


def check_device(device) -> torch.device:
    """The CPU, or OptionError for another device (the OpenVINO engines here run on the CPU)."""
    dev = parse_device(device)
    if dev is not None and dev.type != "cpu":
        raise OptionError("--device", f"{device!r}: the OpenVINO engine runs on the CPU")
    return torch.device("cpu")
