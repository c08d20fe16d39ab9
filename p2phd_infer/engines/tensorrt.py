"""TensorRT engine for `.plan` / `.engine` files written by `p2phd-infer export --format tensorrt`.

TensorRT runs in torch's CUDA context (the device's primary context, which torch initialises) and
on torch's current stream: inputs and outputs are torch CUDA tensors bound by address
(`set_tensor_address` + `execute_async_v3`), so there is no second CUDA context, no copy and no
host sync. The engine's metadata (config, features, label names, size, profile) is the sidecar
`<plan>.json`, since a plan file is TensorRT's own format. TensorRT 10 and 11 both run the
strongly typed plans p2phd_infer.export.tensorrt_build writes.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

from ..errors import EngineError, MissingDependency
from .base import Engine, info_from_json, resolve_device, sidecar_path

INSTALL_HINT = "pip install 'tensorrt>=10' (TensorRT 10 or 11), or pip install 'p2phd-infer[gpu]'"
MAJORS = (10, 11)       # the strongly typed build (p2phd_infer.export.tensorrt_build) runs on both


def tensorrt_major(trt) -> int:
    """The major version of a tensorrt module; -1 when its __version__ is not a version."""
    head = str(getattr(trt, "__version__", "")).split(".")[0]
    return int(head) if head.isdigit() else -1


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise MissingDependency("tensorrt", f"TensorRT engines need the tensorrt package: "
                                f"{INSTALL_HINT}") from None
    if tensorrt_major(tensorrt) not in MAJORS:
        version = getattr(tensorrt, "__version__", "of unknown version")
        raise MissingDependency("tensorrt", f"this release builds and runs TensorRT 10 and 11 "
                                f"engines; tensorrt {version} is installed ({INSTALL_HINT})")
    return tensorrt


_LOGGER = None


def trt_logger(trt):
    """One logger per process; plugins (ScatterElements with a reduction) registered once."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(_LOGGER, "")
    return _LOGGER


def torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int64: torch.int64, trt.bool: torch.bool, trt.uint8: torch.uint8}
    if dtype not in table:
        raise EngineError(f"unsupported TensorRT I/O type {dtype}")
    return table[dtype]


class TensorRTEngine(Engine):
    def __init__(self, path: str | os.PathLike, device: str | torch.device | None = None):
        self.path = Path(path)
        meta = sidecar_path(self.path)
        if not meta.is_file():
            raise EngineError(self.path, f"its metadata file {meta.name} is missing (it is "
                              f"written beside the plan by `p2phd-infer export --format tensorrt`)")
        self.info = info_from_json(meta.read_bytes(), meta)
        trt = import_tensorrt()
        self.device = resolve_device("cuda" if device in (None, "auto") else device)
        if self.device.type != "cuda":
            raise EngineError("--device", "TensorRT engines run on CUDA only (--device cuda)")
        logger = trt_logger(trt)
        with torch.cuda.device(self.device):
            torch.cuda.init()
            torch.empty(1, device=self.device)        # make torch's primary context current
            self.runtime = trt.Runtime(logger)
            self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise EngineError(self.path, "TensorRT could not load this plan (built by "
                                  "another TensorRT version or for another GPU? rebuild it with "
                                  "`p2phd-infer export --format tensorrt` on this machine)")
            self.context = self.engine.create_execution_context()
        self.inputs: list[str] = []
        self.dtypes: dict[str, torch.dtype] = {}
        self.profile: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            self.dtypes[name] = torch_dtype(trt, self.engine.get_tensor_dtype(name))
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(name)
                lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
                self.profile[name] = (tuple(lo), tuple(hi))
        if "image" not in self.dtypes:
            raise EngineError(self.path, "the plan has no 'image' output")
        self._lock = threading.Lock()
        self._done: torch.cuda.Event | None = None

    # --- the Engine interface ------------------------------------------------------------------

    def __call__(self, label: torch.Tensor, inst: torch.Tensor,
                 feat: torch.Tensor | None = None) -> torch.Tensor:
        return self._run(self.generator_feeds(label, inst, feat, "feat" in self.inputs))

    def style(self, label, inst, style_image, style_inst) -> torch.Tensor:
        """Style from an example photo (style engines); see p2phd_infer.export.graphs."""
        return self._run(self.style_feeds(label, inst, style_image, style_inst))

    def check_profile(self, name: str, shape: tuple[int, ...]) -> None:
        """A clear error for shapes outside the optimisation profile the plan was built with."""
        lo, hi = self.profile[name]
        if len(shape) != len(lo):
            raise EngineError(name, f"{len(shape)}-d input, this engine takes {len(lo)}-d")
        if not lo[0] <= shape[0] <= hi[0]:
            raise EngineError(f"batch {shape[0]} is outside this TensorRT engine's profile "
                              f"{lo[0]}..{hi[0]} (rebuild with a larger --max-batch)")
        for d in range(1, len(shape)):
            if not lo[d] <= shape[d] <= hi[d]:
                what = f"{hi[3]}x{hi[2]}" if len(hi) == 4 else str(hi)
                raise EngineError(name, f"shape {tuple(shape)} does not fit this TensorRT "
                                  f"engine, built for {what} (profile {lo}..{hi})")

    def _run(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise EngineError(self.path, f"engine inputs {missing} were not given")
        tensors = {}
        for name in self.inputs:
            self.check_profile(name, tuple(feeds[name].shape))
            tensors[name] = feeds[name].to(self.device, self.dtypes[name]).contiguous()
        with torch.cuda.device(self.device), self._lock:
            for name, t in tensors.items():
                if not self.context.set_input_shape(name, tuple(t.shape)):
                    raise EngineError(name, f"TensorRT rejected shape {tuple(t.shape)}")
            out_shape = tuple(self.context.get_tensor_shape("image"))
            out = torch.empty(out_shape, dtype=self.dtypes["image"], device=self.device)
            for name, t in tensors.items():
                self.context.set_tensor_address(name, t.data_ptr())
            self.context.set_tensor_address("image", out.data_ptr())
            stream = torch.cuda.current_stream(self.device)
            # The context's scratch memory is shared: a call on another stream waits for the last.
            if self._done is not None:
                stream.wait_event(self._done)
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise EngineError(self.path, "TensorRT execution failed")
            self._done = torch.cuda.Event()
            self._done.record(stream)
        # Inputs converted above are freed on return; torch's allocator reuses their memory only
        # in stream order, after TensorRT has read them. Plans from export_onnx write fp32; one
        # typed otherwise is still returned as float.
        return out if out.dtype == torch.float32 else out.float()
