"""TensorRT engine (`.plan`) from the exported ONNX graph, with the tensorrt Python API; TensorRT
10 or 11.

- Strongly typed (NetworkDefinitionCreationFlag.STRONGLY_TYPED): every tensor has the type the
  ONNX graph gives it, and TensorRT picks kernels for those types; no precision builder flag
  and no per-layer precision. TensorRT 11 removed the weakly typed path (BuilderFlag.FP16 and
  OBEY_PRECISION_CONSTRAINTS) and is strongly typed always (its STRONGLY_TYPED flag is kept,
  ignored); 10.x has both, and builds this same graph the same way.
- So the precision is the graph's: an fp16 plan is built from the fp16 ONNX graph
  (export_onnx(..., precision="fp16"), graphs.to_typed_fp16): fp16 convolutions, with Casts to
  fp32 around every InstanceNormalization (statistics over 2 M pixels lose digits in fp16) and
  the style graph's instance-mean chain (scatter-add sums reach millions of pixels, past fp16's
  65504). Inputs and the output `image` are fp32. The parsed network is checked against that
  (check_types) before the build, so a graph typed otherwise is refused, not built slowly.
- Native InstanceNormalization (the parser flag NATIVE_INSTANCENORM, where the parser has it)
  rather than the plugin.
- One optimisation profile, batch 1..max (opt = max); H and W fixed at the exported size, or,
  for a graph exported with dynamic H and W (export --dynamic-size), min/opt/max sizes from
  `--min-size/--opt-size/--max-size` (profile_sizes). TensorRT sizes its activation memory for
  the profile's max, so max defaults to the opt size (the traced --height/--width), not to the
  graph's own bound (8192 a side).
- A timing cache file reused across builds (loaded if present, saved after).
- The plan is written atomically, with the engine metadata in the sidecar `<plan>.json`.

The weakly typed build (FP16 flag plus fp32 pins) is gone: 11.x cannot run it, and on 10.x the
strongly typed build of the typed graph computes the same islands in fp32 by construction.
"""
from __future__ import annotations

import os
from pathlib import Path

import onnx
import torch

from p2phd_infer.devices import parse_device, resolve_device
from p2phd_infer.engines.base import METADATA_KEY, info_from_json, info_to_json, sidecar_path
from p2phd_infer.engines.tensorrt import import_tensorrt, tensorrt_major, trt_logger
from p2phd_infer.errors import EngineError, MissingDependency, OptionError
from p2phd_infer.files import write_atomic

from .onnx_export import INSTANCE_SUM


def default_timing_cache() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "p2phd-infer"
    return root / "tensorrt-timing.cache"


def network_flags(trt) -> int:
    """create_network flags: STRONGLY_TYPED. 11.x is strongly typed whatever the flags, and keeps
    the flag (ignored) for compatibility; should a later 11.x drop it, 0 means the same."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is not None:
        return 1 << int(flag)
    if tensorrt_major(trt) >= 11:
        return 0
    raise MissingDependency("tensorrt", f"tensorrt {trt.__version__} has no strongly typed "
                                        f"networks (NetworkDefinitionCreationFlag.STRONGLY_TYPED); "
                                        f"install 10.x or 11.x: pip install tensorrt")


def check_types(trt, network, precision: str, where) -> dict[str, int]:
    """EngineError unless the parsed network is typed as export_onnx wrote it: every convolution
    in the graph's precision, every normalization and instance sum reading and writing fp32, the
    output `image` fp32. Returns counts for the log."""
    want = trt.float16 if precision == "fp16" else trt.float32
    L = trt.LayerType
    convs = {L.CONVOLUTION, getattr(L, "DECONVOLUTION", L.CONVOLUTION)}
    counts = {"conv": 0, "norm": 0, "sum": 0}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outs = [layer.get_output(k).dtype for k in range(layer.num_outputs)]
        if layer.type in convs:
            counts["conv"] += 1
            if outs[0] != want:
                raise EngineError(where, f"convolution {layer.name!r} computes {outs[0]}, not "
                                         f"{precision}: export the graph with "
                                         f"precision={precision!r}")
        is_norm = layer.type == L.NORMALIZATION
        is_sum = layer.name.startswith(INSTANCE_SUM)
        if is_norm or is_sum:
            counts["norm" if is_norm else "sum"] += 1
            ins = [layer.get_input(j).dtype for j in range(layer.num_inputs)
                   if layer.get_input(j) is not None]
            floats = [t for t in ins[:1] + outs if t != trt.int32 and t != trt.int64]
            if any(t != trt.float32 for t in floats):
                raise EngineError(where, f"{'normalization' if is_norm else 'instance sum'} "
                                         f"{layer.name!r} is not fp32 ({ins[:1]} -> {outs}); the "
                                         f"graph must cast it to fp32 (export_onnx writes that)")
    for i in range(network.num_outputs):
        t = network.get_output(i)
        if t.name == "image" and t.dtype != trt.float32:
            raise EngineError(where, f"output 'image' is {t.dtype}, not fp32")
    return counts


Size = tuple[int, int]          # (H, W)


def profile_sizes(info, min_size: Size | None = None, opt_size: Size | None = None,
                  max_size: Size | None = None) -> tuple[Size, Size, Size]:
    """(min, opt, max) frame sizes (H, W) of the optimisation profile. A fixed-size graph: its
    size, three times (other sizes are refused). A dynamic-size graph (info.size None, extra
    "dynamic_size"): min defaults to the graph's minimum, opt to the size it was traced at, max
    to opt; each a multiple of the graph's multiple, within its bounds, min <= opt <= max."""
    given = {"--min-size": min_size, "--opt-size": opt_size, "--max-size": max_size}
    if info.size is not None:
        size = tuple(info.size)
        for option, value in given.items():
            if value is not None and tuple(value) != size:
                raise OptionError(option, f"this graph was exported for {size[1]}x{size[0]} only;"
                                          f" export it with --dynamic-size for a size range")
        return size, size, size
    spec = info.extra.get("dynamic_size")
    if not spec:
        raise EngineError("", "the graph's metadata names neither a size nor a dynamic range")
    m, lo_bound, hi_bound = int(spec["multiple"]), tuple(spec["min"]), tuple(spec["max"])
    opt = tuple(opt_size or spec.get("traced") or lo_bound)
    lo = tuple(min_size or lo_bound)
    hi = tuple(max_size or opt)
    for option, (h, w) in (("--min-size", lo), ("--opt-size", opt), ("--max-size", hi)):
        if h % m or w % m:
            raise OptionError(option, f"{w}x{h}: width and height must be multiples of {m}")
        if not (lo_bound[0] <= h <= hi_bound[0] and lo_bound[1] <= w <= hi_bound[1]):
            raise OptionError(option, f"{w}x{h} is outside the graph's sizes "
                                      f"{lo_bound[1]}x{lo_bound[0]}..{hi_bound[1]}x{hi_bound[0]}")
    if not (lo[0] <= opt[0] <= hi[0] and lo[1] <= opt[1] <= hi[1]):
        raise OptionError("--opt-size", f"need min <= opt <= max in both sides: "
                                        f"{lo[1]}x{lo[0]}, {opt[1]}x{opt[0]}, {hi[1]}x{hi[0]}")
    return lo, opt, hi


def build_tensorrt(onnx_path: str | os.PathLike, out: str | os.PathLike, max_batch: int | None = None,
                   fp16: bool | None = None, timing_cache: str | os.PathLike | None = None,
                   workspace_gib: float | None = None, device: str | torch.device = "cuda",
                   log=print, min_size: Size | None = None, opt_size: Size | None = None,
                   max_size: Size | None = None) -> Path:
    """Build `out` (.plan) from an ONNX file exported by export_onnx; write `out`.json beside it.

    The plan's precision is the graph's (its metadata says which); `fp16` True or False, when
    given, must match it: a strongly typed build cannot make an fp16 plan from an fp32 graph."""
    trt = import_tensorrt()
    onnx_path, out = Path(onnx_path), Path(out)
    model = onnx.load(str(onnx_path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise EngineError(onnx_path, "no p2phd-infer metadata (export it with "
                          "`p2phd-infer export --format onnx`)")
    info = info_from_json(props[METADATA_KEY], onnx_path)
    precision = info.precision
    if precision not in ("fp32", "fp16"):
        raise EngineError(onnx_path, f"graph precision {precision!r}; TensorRT builds fp32 or fp16 "
                                     f"graphs from export_onnx")
    if fp16 is not None and fp16 != (precision == "fp16"):
        asked = "fp16" if fp16 else "fp32"
        raise EngineError(onnx_path, f"an {precision} graph, and an {asked} plan was asked for: "
                                     f"TensorRT builds strongly typed, in the graph's types; "
                                     f"export it with export_onnx(..., precision={asked!r})")
    sizes = profile_sizes(info, min_size, opt_size, max_size)
    dev = parse_device(device)
    if dev is None or dev.type != "cuda" or not torch.cuda.is_available():
        raise MissingDependency("--device", "building a TensorRT engine needs a CUDA GPU")
    device = resolve_device(dev)
    max_batch = int(max_batch or info.max_batch or 1)
    with torch.cuda.device(device):
        torch.empty(1, device=device)            # build inside torch's (primary) CUDA context
        plan = build_plan(trt, onnx_path, precision, sizes, max_batch,
                          Path(timing_cache) if timing_cache else default_timing_cache(),
                          workspace_gib, log)
        gpu = torch.cuda.get_device_name(device)
    info.max_batch = max_batch
    info.backend = "tensorrt"
    info.extra.update(tensorrt=trt.__version__, typing="strong", gpu=gpu)
    if info.size is None:        # the plan takes the profile's sizes, not the graph's range
        info.extra["dynamic_size"] = dict(info.extra["dynamic_size"], min=list(sizes[0]),
                                          max=list(sizes[2]))
        info.extra["profile"] = {"min": list(sizes[0]), "opt": list(sizes[1]),
                                 "max": list(sizes[2])}
    # Sidecar first: a plan without its metadata is refused at load, never half-described.
    write_atomic(sidecar_path(out), info_to_json(info))
    write_atomic(out, plan)
    return out


def build_plan(trt, onnx_path: Path, precision: str, sizes, max_batch: int,
               cache_path: Path, workspace_gib: float | None = None, log=print) -> bytes:
    """The serialized plan of a strongly typed build of `onnx_path` (in the current CUDA
    context); the timing cache at `cache_path` is read if present and written after. sizes:
    one (H, W) for a fixed-size graph, or (min, opt, max) sizes (profile_sizes)."""
    if isinstance(sizes[0], int):
        sizes = (tuple(sizes),) * 3
    (h0, w0), (H, W), (h1, w1) = sizes
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if hasattr(trt.OnnxParserFlag, "NATIVE_INSTANCENORM"):
        parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(onnx_path, f"TensorRT's ONNX parser failed: {errors}")
    counts = check_types(trt, network, precision, onnx_path)
    log(f"strongly typed {precision} network: {counts['conv']} convolutions in {precision}, "
        f"{counts['norm']} normalizations and {counts['sum']} instance sums in fp32")
    config = builder.create_builder_config()        # no precision flags: the graph's types rule
    if workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        c = t.shape[1]
        profile.set_shape(t.name, (1, c, h0, w0), (max_batch, c, H, W), (max_batch, c, h1, w1))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    what = f"{W}x{H}" if (h0, w0, h1, w1) == (H, W, H, W) else \
        f"{w0}x{h0}..{w1}x{h1} (opt {W}x{H})"
    log(f"building TensorRT {trt.__version__} engine for {what}, batch 1..{max_batch} "
        f"(minutes at 2048x1024)")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(onnx_path, "TensorRT could not build an engine (see its log above)")
    write_atomic(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(plan))


def _parser_error(error) -> str:
    desc = error.desc() if hasattr(error, "desc") else str(error)
    node = error.node_name() if hasattr(error, "node_name") else ""
    return f"{desc} (node {node})" if node else desc
