"""ONNX Runtime engine for `.onnx` files written by `p2phd-infer export --format onnx`.

Provider: TensorRT, then CUDA, then CPU, whichever this onnxruntime build has (CUDA ones need
the `onnxruntime-gpu` package). On CUDA, torch tensors are bound in place with IO binding (no
host round trip); on the CPU they go through numpy without a copy.

A graph exported with dynamic H and W (`export --dynamic-size`: metadata size None, extra
"dynamic_size" {multiple, min, max}) takes any frame whose sides are multiples of `multiple`
within min..max; Engine.synthesize pads other frames to the stride first.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import EngineError, MissingDependency
from ..locations import check_regular
from .base import METADATA_KEY, Engine, check_graph, info_from_json, resolve_device

CUDA_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
INT_INPUTS = ("label", "inst", "style_inst")


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependency("onnxruntime", "ONNX engines need it: pip install onnxruntime "
                          "(onnxruntime-gpu for CUDA)") from None
    return onnxruntime


def _choose_device(device, available: list[str]) -> torch.device:
    has_cuda_provider = any(p in available for p in CUDA_PROVIDERS)
    if device is None or device == "auto":
        cuda = torch.cuda.is_available() and has_cuda_provider
        return resolve_device("cuda" if cuda else "cpu")
    dev = resolve_device(device)
    if dev.type == "cuda" and not has_cuda_provider:
        raise MissingDependency("--device", "cuda asked for, but this onnxruntime has no CUDA provider "
                          "(pip install onnxruntime-gpu)")
    return dev


def onnx_conv_shapes(path: str | os.PathLike) -> list[tuple[int, ...]]:
    """The weight shape of every Conv and ConvTranspose in an ONNX file (initializers, through
    Cast/Identity as fp16 graphs have them; -1 for one that is not a constant), for
    base.check_graph. External weight files are not read: the shapes are in the graph."""
    import onnx
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - it loaded in onnxruntime: a protobuf limit
        raise EngineError(path, f"cannot read the graph to check its metadata "
                                f"({e.__class__.__name__}: {e})") from None
    shapes = {t.name: tuple(int(d) for d in t.dims) for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            shapes[node.output[0]] = tuple(int(d) for d in node.attribute[0].t.dims)
        elif node.op_type in ("Cast", "Identity") and node.input[0] in shapes:
            shapes[node.output[0]] = shapes[node.input[0]]
        elif node.op_type in ("Conv", "ConvTranspose"):
            out.append(shapes.get(node.input[1], (-1,)))
    return out


class OnnxEngine(Engine):
    def __init__(self, path: str | os.PathLike, device: str | torch.device | None = None):
        ort = _import_onnxruntime()
        self.path = Path(path)
        check_regular(self.path, "engine file", EngineError)   # a FIFO would block the reader
        available = ort.get_available_providers()
        self.device = _choose_device(device, available)
        options = ort.SessionOptions()
        options.log_severity_level = 3            # errors only; warnings go to stderr otherwise
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=self._providers(available))
            meta = self.session.get_modelmeta().custom_metadata_map
        except Exception as e:  # noqa: BLE001 - any load fault is a bad file
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise EngineError(self.path, f"not a loadable ONNX model ({e.__class__.__name__}: "
                              f"{first})") from None
        if METADATA_KEY not in meta:
            raise EngineError(self.path, "no p2phd-infer metadata in this ONNX file (export it "
                              "with `p2phd-infer export --format onnx`)")
        self.info = info_from_json(meta[METADATA_KEY], self.path)
        check_graph(self.path, self.info, onnx_conv_shapes(self.path),
                    {i.name: [d if isinstance(d, int) else None for d in i.shape]
                     for i in self.session.get_inputs()})
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.providers = self.session.get_providers()

    def _providers(self, available: list[str]) -> list:
        if self.device.type == "cpu":
            return ["CPUExecutionProvider"]
        index = self.device.index                 # resolve_device gives cuda:N
        chosen: list = []
        if "TensorrtExecutionProvider" in available:
            cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / \
                "p2phd-infer" / "ort-tensorrt"
            cache.mkdir(parents=True, exist_ok=True)
            chosen.append(("TensorrtExecutionProvider", {
                "device_id": index, "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(cache)}))
        if "CUDAExecutionProvider" in available:
            chosen.append(("CUDAExecutionProvider", {"device_id": index}))
        return chosen + ["CPUExecutionProvider"]

    # --- the Engine interface ------------------------------------------------------------------

    def __call__(self, label: torch.Tensor, inst: torch.Tensor,
                 feat: torch.Tensor | None = None) -> torch.Tensor:
        B, _, H, W = label.shape
        self.check_dynamic(H, W)
        feeds = self.generator_feeds(label, inst, feat, "feat" in self.input_names)
        return self._run(feeds, (B, self.config.output_nc, H, W))

    def style(self, label: torch.Tensor, inst: torch.Tensor, style_image: torch.Tensor,
              style_inst: torch.Tensor) -> torch.Tensor:
        """Style from an example photo (style graphs): instances take the photo's encoder
        features of the same instance id; ids absent from the photo get zeros."""
        B, _, H, W = label.shape
        self.check_dynamic(H, W)
        feeds = self.style_feeds(label, inst, style_image, style_inst)
        return self._run(feeds, (B, self.config.output_nc, H, W))

    def check_dynamic(self, H: int, W: int) -> None:
        """EngineError for a frame a dynamic-size graph was not exported for (fixed-size graphs
        are checked by Engine.check_shape)."""
        spec = self.info.extra.get("dynamic_size") if self.info.size is None else None
        if not spec:
            return
        m, lo, hi = int(spec["multiple"]), spec["min"], spec["max"]
        if H % m or W % m:
            raise EngineError(self.name, f"frame {W}x{H}: this graph takes sides that are "
                                         f"multiples of {m}")
        if not (lo[0] <= H <= hi[0] and lo[1] <= W <= hi[1]):
            raise EngineError(self.name, f"frame {W}x{H} is outside the sizes this graph was "
                                         f"exported for, {lo[1]}x{lo[0]}..{hi[1]}x{hi[0]} "
                                         f"(export --min-size/--max-size)")

    # --- running -------------------------------------------------------------------------------

    def _prepare(self, name: str, t: torch.Tensor) -> torch.Tensor:
        dtype = torch.int32 if name in INT_INPUTS else torch.float32
        return t.to(self.device, dtype).contiguous()

    def _run(self, feeds: dict[str, torch.Tensor], out_shape: tuple[int, ...]) -> torch.Tensor:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise EngineError(self.path, f"graph inputs {missing} were not given")
        tensors = {n: self._prepare(n, feeds[n]) for n in self.input_names}
        if self.device.type == "cpu":
            out = self.session.run(["image"], {n: t.numpy() for n, t in tensors.items()})[0]
            return torch.from_numpy(out)
        binding = self.session.io_binding()
        index = self.device.index
        for n, t in tensors.items():
            binding.bind_input(name=n, device_type="cuda", device_id=index,
                               element_type=np.int32 if t.dtype == torch.int32 else np.float32,
                               shape=tuple(t.shape), buffer_ptr=t.data_ptr())
        out = torch.empty(out_shape, dtype=torch.float32, device=self.device)
        binding.bind_output(name="image", device_type="cuda", device_id=index,
                            element_type=np.float32, shape=tuple(out.shape),
                            buffer_ptr=out.data_ptr())
        # onnxruntime runs on its own stream: the inputs written on torch's stream must be ready.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return out
