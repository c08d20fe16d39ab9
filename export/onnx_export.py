"""ONNX export of the generator graph and the style graph, for onnxruntime and TensorRT 10/11.

torch 2.14's dynamo exporter gives a clean graph here (InstanceNormalization, Pad reflect,
AveragePool, Equal for the one-hot, ScatterElements/GatherElements for the instance mean) with
no custom domains or functions. Opset 18: ScatterElements' "add" reduction needs >= 16, and
TensorRT 10.0's parser reads opsets 9..20 (11.x: 9..25). The fp16 graph (precision="fp16") is
what TensorRT's strongly typed build takes, typed as written. Batch is dynamic; H and W are
fixed at export, or dynamic with `dynamic_size` (`export --dynamic-size`): then each is any
multiple of the graph's stride (graphs.size_multiple) from `min_size` to `max_size`, written as
torch.export Dims `Dim("h") * multiple`, and the metadata's `size` is None (an engine then takes
any padded frame; Engine.synthesize pads to the stride). The style graph's instance-mean table
then has max(MAX_INSTANCE_ID + 1, H*W) slots computed in the graph (an ONNX Max over the
shape): MAX_INSTANCE_ID + 1 alone would do for onnxruntime, but TensorRT's ScatterElements
importer requires every indices dimension (H*W) to be at most the table's (graphs.table_size).
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import onnx
import torch

from p2phd_infer.checkpoint import Checkpoint
from p2phd_infer.engines.base import METADATA_KEY, info_to_json
from p2phd_infer.errors import OptionError
from p2phd_infer.files import write_atomic

from .graphs import build_graph, check_size, engine_info, example_inputs, size_multiple

OPSET = 18
INSTANCE_SUM = "instance_sum"
PRECISIONS = ("fp32", "fp16")
# Default upper bound of a dynamic graph's sides: far above 2048x1024, and still an int32-safe
# number of pixels for the instance table (8192 * 8192 < 2**31).
DYNAMIC_MAX_SIDE = 8192


def dynamic_bounds(cfg, graph: str, min_size: tuple[int, int] | None,
                   max_size: tuple[int, int] | None) -> tuple[int, tuple[int, int], tuple[int, int]]:
    """(multiple, (Hmin, Wmin), (Hmax, Wmax)) of a dynamic-size graph; OptionError naming the
    option for a bound below the network's minimum, not a multiple, or min above max."""
    m = size_multiple(cfg, graph)
    least = cfg.min_size if graph == "generator" else max(cfg.min_size, cfg.encoder_min_size)
    least = -(-least // m) * m
    lo = tuple(min_size) if min_size is not None else (least, least)
    hi = tuple(max_size) if max_size is not None else (DYNAMIC_MAX_SIDE // m * m,) * 2
    for option, (h, w) in (("--min-size", lo), ("--max-size", hi)):
        if h % m or w % m:
            raise OptionError(option, f"{w}x{h}: width and height must be multiples of {m} for "
                                      f"this model's {graph} graph")
        if h < least or w < least:
            raise OptionError(option, f"{w}x{h} is below this model's minimum {least}x{least}")
    if lo[0] > hi[0] or lo[1] > hi[1]:
        raise OptionError("--min-size", f"{lo[1]}x{lo[0]} is above --max-size {hi[1]}x{hi[0]}")
    return m, lo, hi


def export_onnx_model(ckpt: Checkpoint, height: int, width: int, max_batch: int = 4,
                      graph: str = "generator", precision: str = "fp32", *,
                      dynamic_size: bool = False, min_size: tuple[int, int] | None = None,
                      max_size: tuple[int, int] | None = None) -> onnx.ModelProto:
    """Checkpoint -> ONNX ModelProto with the engine metadata in metadata_props.

    precision "fp32", or "fp16": the graph TensorRT builds strongly typed (graphs.to_typed_fp16),
    fp16 weights and activations with Casts to fp32 around every InstanceNormalization and the
    instance-mean chain; inputs and the output `image` are fp32 in both.
    dynamic_size: H and W are dynamic (multiples of the graph's stride, (H, W) bounds min_size
    and max_size); height x width is then only the size traced at."""
    if precision not in PRECISIONS:
        raise OptionError("precision", f"{precision!r}: ONNX graphs are {' or '.join(PRECISIONS)}")
    check_size(ckpt.config, height, width, graph)
    module = build_graph(ckpt, graph, typed_fp16=precision == "fp16")
    names = module.input_names
    # Trace at batch 2, so the exporter cannot specialise the batch dimension to 1.
    args = example_inputs(names, ckpt.config, 2, height, width)
    batch = torch.export.Dim("batch", min=1, max=max(2, max_batch))
    dynamic = {n: {0: batch} for n in names}
    extra = {}
    if dynamic_size:
        m, lo, hi = dynamic_bounds(ckpt.config, graph, min_size, max_size)
        if not (lo[0] <= height <= hi[0] and lo[1] <= width <= hi[1]):
            raise OptionError("--height/--width", f"the traced size {width}x{height} must lie "
                                                  f"within {lo[1]}x{lo[0]}..{hi[1]}x{hi[0]}")
        # Dims in units of the multiple, so the exporter knows every size is one; min 2 keeps
        # torch.export from specialising a side of one unit.
        h = torch.export.Dim("h", min=max(2, lo[0] // m), max=max(3, hi[0] // m))
        w = torch.export.Dim("w", min=max(2, lo[1] // m), max=max(3, hi[1] // m))
        dynamic = {n: {0: batch, 2: h * m, 3: w * m} for n in names}
        extra = {"dynamic_size": {"multiple": m, "min": list(lo), "max": list(hi),
                                  "traced": [height, width]}}
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET,
                                    input_names=names, output_names=["image"],
                                    dynamic_shapes=dynamic, optimize=True, verbose=False)
    model = program.model_proto
    # Node-level metadata holds the exporting machine's source paths and stack traces: drop it.
    for node in model.graph.node:
        del node.metadata_props[:]
        if node.op_type == "ScatterElements":
            # A fixed name, so the TensorRT build finds the instance sums and checks they are fp32.
            node.name = f"{INSTANCE_SUM}_{node.output[0]}"
    info = engine_info(ckpt, height, width, max_batch, precision, graph, "onnx",
                       inputs=names, opset=OPSET, **extra)
    if dynamic_size:
        info.size = None
    del model.metadata_props[:]
    model.metadata_props.add(key=METADATA_KEY, value=info_to_json(info))
    model.producer_name = "p2phd-infer"
    onnx.checker.check_model(model)
    return model


def save_onnx(model: onnx.ModelProto, out: str | os.PathLike) -> Path:
    """Atomic write: a temporary name in the same folder, then a rename."""
    out = Path(out)
    write_atomic(out, lambda tmp: onnx.save_model(model, str(tmp)), suffix=".onnx")
    return out


def export_onnx(ckpt: Checkpoint, out: str | os.PathLike, height: int, width: int,
                max_batch: int = 4, graph: str = "generator", precision: str = "fp32", *,
                dynamic_size: bool = False, min_size: tuple[int, int] | None = None,
                max_size: tuple[int, int] | None = None) -> Path:
    return save_onnx(export_onnx_model(ckpt, height, width, max_batch, graph, precision,
                                       dynamic_size=dynamic_size, min_size=min_size,
                                       max_size=max_size), out)


def onnx_ops(model: onnx.ModelProto) -> set[tuple[str, str]]:
    """Every (domain, op_type) in the model, subgraphs and local functions included."""
    ops: set[tuple[str, str]] = set()

    def walk(graph):
        for node in graph.node:
            ops.add((node.domain or "", node.op_type))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    for fn in model.functions:
        for node in fn.node:
            ops.add((node.domain or "", node.op_type))
    return ops
