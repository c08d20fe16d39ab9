"""ONNX export of the generator graph and the style graph, for onnxruntime and TensorRT 10/11.

torch 2.14's dynamo exporter gives a clean graph here (InstanceNormalization, Pad reflect,
AveragePool, Equal for the one-hot, ScatterElements/GatherElements for the instance mean) with
no custom domains or functions. Opset 18: ScatterElements' "add" reduction needs >= 16, and
TensorRT 10.0's parser reads opsets 9..20 (11.x: 9..25). The fp16 graph (precision="fp16") is
what TensorRT's strongly typed build takes, typed as written. Batch is dynamic; H and W are
fixed at export (the instance-mean table and TensorRT's profile are sized from them).
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

from .graphs import build_graph, check_size, engine_info, example_inputs

OPSET = 18
INSTANCE_SUM = "instance_sum"
PRECISIONS = ("fp32", "fp16")


def export_onnx_model(ckpt: Checkpoint, height: int, width: int, max_batch: int = 4,
                      graph: str = "generator", precision: str = "fp32") -> onnx.ModelProto:
    """Checkpoint -> ONNX ModelProto with the engine metadata in metadata_props.

    precision "fp32", or "fp16": the graph TensorRT builds strongly typed (graphs.to_typed_fp16),
    fp16 weights and activations with Casts to fp32 around every InstanceNormalization and the
    instance-mean chain; inputs and the output `image` are fp32 in both."""
    if precision not in PRECISIONS:
        raise OptionError("precision", f"{precision!r}: ONNX graphs are {' or '.join(PRECISIONS)}")
    check_size(ckpt.config, height, width, graph)
    module = build_graph(ckpt, graph, typed_fp16=precision == "fp16")
    names = module.input_names
    # Trace at batch 2, so the exporter cannot specialise the batch dimension to 1.
    args = example_inputs(names, ckpt.config, 2, height, width)
    batch = torch.export.Dim("batch", min=1, max=max(2, max_batch))
    dynamic = {n: {0: batch} for n in names}
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
                       inputs=names, opset=OPSET)
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
                max_batch: int = 4, graph: str = "generator", precision: str = "fp32") -> Path:
    return save_onnx(export_onnx_model(ckpt, height, width, max_batch, graph, precision), out)


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
