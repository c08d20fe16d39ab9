"""TensorRT 10 FP16 engine (`.plan`) from the exported ONNX graph, with the tensorrt Python API.

- Network from the ONNX parser, with TensorRT's native InstanceNormalization (the parser flag
  NATIVE_INSTANCENORM) rather than the plugin.
- FP16 (weakly typed builder flag), with precision constraints obeyed: every normalization layer
  computes and outputs fp32 (InstanceNorm's variance over 2 M pixels loses digits in fp16), and so
  does the style graph's instance-mean chain (scatter-add sums reach millions of pixels, past
  fp16's 65504), from the ScatterElements nodes the exporter named "instance_sum*" up to the
  GatherElements that reads the means back.
- One optimisation profile, batch 1..max (opt = max), H and W fixed at the exported size.
- A timing cache file reused across builds (loaded if present, saved after).
- The plan is written atomically, with the engine metadata in the sidecar `<plan>.json`.
"""
from __future__ import annotations

import os
from pathlib import Path

import onnx
import torch

from p2phd_infer.engines.base import METADATA_KEY, info_from_json, info_to_json, sidecar_path
from p2phd_infer.engines.tensorrt import import_tensorrt, trt_logger
from p2phd_infer.errors import EngineError, MissingDependency
from p2phd_infer.files import write_atomic

from .onnx_export import INSTANCE_SUM


def default_timing_cache() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "p2phd-infer"
    return root / "tensorrt-timing.cache"


def _is_float(trt, dtype) -> bool:
    return dtype in (trt.float32, trt.float16, getattr(trt, "bfloat16", trt.float32))


def keep_fp32(trt, network) -> list[str]:
    """Pin normalization layers and the instance-mean chain to fp32; returns their names.

    Layers come in topological order (the parser adds them in ONNX node order), so one forward
    pass marks everything fed, directly or not, by an instance sum, stopping at the gather."""
    pinned: list[str] = []
    tainted: set[str] = set()        # tensors that carry instance sums or means
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        inputs = [layer.get_input(j) for j in range(layer.num_inputs)]
        fed = any(t is not None and t.name in tainted for t in inputs)
        is_norm = layer.type == trt.LayerType.NORMALIZATION
        is_sum = layer.name.startswith(INSTANCE_SUM)
        if not (is_norm or is_sum or fed):
            continue
        outputs = [layer.get_output(k) for k in range(layer.num_outputs)]
        if any(_is_float(trt, t.dtype) for t in outputs):
            layer.precision = trt.float32
            for k, t in enumerate(outputs):
                if _is_float(trt, t.dtype):
                    layer.set_output_type(k, trt.float32)
            if is_norm:
                layer.__class__ = trt.INormalizationLayer       # the Python API's downcast
                if hasattr(layer, "compute_precision"):
                    layer.compute_precision = trt.float32
            pinned.append(layer.name)
        if (is_sum or fed) and layer.type != trt.LayerType.GATHER:
            tainted.update(t.name for t in outputs if _is_float(trt, t.dtype))
    return pinned


def build_tensorrt(onnx_path: str | os.PathLike, out: str | os.PathLike, max_batch: int | None = None,
                   fp16: bool = True, timing_cache: str | os.PathLike | None = None,
                   workspace_gib: float | None = None, device: str | torch.device = "cuda",
                   log=print) -> Path:
    """Build `out` (.plan) from an ONNX file exported by export_onnx; write `out`.json beside it."""
    trt = import_tensorrt()
    onnx_path, out = Path(onnx_path), Path(out)
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise MissingDependency("--device", "building a TensorRT engine needs a CUDA GPU")
    model = onnx.load(str(onnx_path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise EngineError(onnx_path, "no p2phd-infer metadata (export it with "
                          "`p2phd-infer export --format onnx`)")
    info = info_from_json(props[METADATA_KEY], onnx_path)
    max_batch = int(max_batch or info.max_batch or 1)
    H, W = info.size
    logger = trt_logger(trt)
    with torch.cuda.device(device):
        torch.empty(1, device=device)            # build inside torch's (primary) CUDA context
        builder = trt.Builder(logger)
        network = builder.create_network(0)      # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, logger)
        parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(_parser_error(parser.get_error(i))
                               for i in range(parser.num_errors))
            raise EngineError(onnx_path, f"TensorRT's ONNX parser failed: {errors}")
        config = builder.create_builder_config()
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            pinned = keep_fp32(trt, network)
            log(f"fp16 build; {len(pinned)} layers pinned to fp32 (normalization, instance mean)")
        if workspace_gib:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            t = network.get_input(i)
            c = t.shape[1]
            profile.set_shape(t.name, (1, c, H, W), (max_batch, c, H, W), (max_batch, c, H, W))
        config.add_optimization_profile(profile)
        cache_path = Path(timing_cache) if timing_cache else default_timing_cache()
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        log(f"building TensorRT {trt.__version__} engine for {W}x{H}, batch 1..{max_batch} "
            f"(minutes at 2048x1024)")
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError(onnx_path, "TensorRT could not build an engine (see its log above)")
        write_atomic(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
        info.max_batch = max_batch
        info.precision = "fp16" if fp16 else "fp32"
        info.backend = "tensorrt"
        info.extra.update(tensorrt=trt.__version__,
                          gpu=torch.cuda.get_device_name(device))
        # Sidecar first: a plan without its metadata is refused at load, never half-described.
        write_atomic(sidecar_path(out), info_to_json(info))
        write_atomic(out, bytes(memoryview(plan)))
    return out


def _parser_error(error) -> str:
    desc = error.desc() if hasattr(error, "desc") else str(error)
    node = error.node_name() if hasattr(error, "node_name") else ""
    return f"{desc} (node {node})" if node else desc


