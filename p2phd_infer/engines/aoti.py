"""AOTInductor engine for `.pt2` packages written by `p2phd-infer export --format aoti`."""
from __future__ import annotations

import json
import logging
import os
import threading
import zipfile
from pathlib import Path

import torch

from ..errors import EngineError
from .base import METADATA_KEY, Engine, info_from_json, resolve_device

INT_INPUTS = ("label", "inst", "style_inst")


class _NoCudaRuntimeLine(logging.Filter):
    """torch.utils.cpp_extension warns "No CUDA runtime is found" when it finds a CUDA toolkit
    (nvcc) on a machine without a GPU, the moment AOTInductor imports it. A CPU package needs no
    CUDA runtime, so the line only alarms; a CUDA package on such a machine gets its own error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No CUDA runtime is found" not in record.getMessage()


def quiet_cuda_toolkit_warning() -> None:
    """Drop that one line (export --format aoti and the AOTI engine call this); idempotent."""
    log = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCudaRuntimeLine) for f in log.filters):
        log.addFilter(_NoCudaRuntimeLine())


quiet_cuda_toolkit_warning()


def read_package_metadata(path: Path) -> dict[str, str] | None:
    """The package's metadata map without loading its shared library (so a CUDA package on a
    CPU-only machine gives a clear error, not a loader fault). None if the layout is unknown."""
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if "/aotinductor/" in name and name.endswith("_metadata.json"):
                    doc = json.loads(z.read(name))
                    if isinstance(doc, dict) and "AOTI_DEVICE_KEY" in doc:
                        return doc
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise EngineError(path, f"not an AOTInductor package ({e.__class__.__name__}: {e})") \
            from None
    return None


class AotiEngine(Engine):
    def __init__(self, path: str | os.PathLike, device: str | torch.device | None = None):
        self.path = Path(path)
        meta = read_package_metadata(self.path)
        if meta is None:
            raise EngineError(self.path, "no AOTInductor metadata in this package, so the device "
                                         "it was compiled for is unknown (export it again with "
                                         "`p2phd-infer export --format aoti`)")
        built_for = meta["AOTI_DEVICE_KEY"]
        if device is None or device == "auto":
            device = built_for
        self.device = resolve_device(device)
        if self.device.type != built_for:
            raise EngineError(self.path, f"this package was compiled for {built_for}; it cannot "
                              f"run on {self.device.type} (export again with --device "
                              f"{self.device.type})")
        index = -1 if self.device.type == "cpu" else self.device.index    # resolve_device: cuda:N
        try:
            self.model = torch._inductor.aoti_load_package(str(self.path), device_index=index)
        except Exception as e:  # noqa: BLE001 - any loader fault is a bad or foreign package
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise EngineError(self.path, f"cannot load this AOTInductor package "
                              f"({e.__class__.__name__}: {first})") from None
        meta = meta if METADATA_KEY in meta else self.model.get_metadata()
        if METADATA_KEY not in meta:
            raise EngineError(self.path, "no p2phd-infer metadata in this package (export it "
                              "with `p2phd-infer export --format aoti`)")
        self.info = info_from_json(meta[METADATA_KEY], self.path)
        self.input_names = list(self.info.extra.get("inputs", ["label", "inst"]))
        self.dtype = torch.float16 if self.info.precision == "fp16" else torch.float32
        # One AOTInductor runner per package: calls from several threads take turns.
        self._lock = threading.Lock()

    def __call__(self, label: torch.Tensor, inst: torch.Tensor,
                 feat: torch.Tensor | None = None) -> torch.Tensor:
        return self._run(self.generator_feeds(label, inst, feat, "feat" in self.input_names))

    def style(self, label, inst, style_image, style_inst) -> torch.Tensor:
        """Style from an example photo (style graphs); see p2phd_infer.export.graphs."""
        return self._run(self.style_feeds(label, inst, style_image, style_inst))

    def _run(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        args = [feeds[n].to(self.device, torch.int32 if n in INT_INPUTS else self.dtype)
                .contiguous() for n in self.input_names]
        with self._lock, torch.inference_mode():
            out = self.model(*args)
        return out[0] if isinstance(out, (list, tuple)) else out
