"""ONNX export of the generator graph and the style graph, for onnxruntime and TensorRT 10.

torch 2.14's dynamo exporter gives a clean graph here (InstanceNormalization, Pad reflect,
AveragePool, Equal for the one-hot, ScatterElements/GatherElements for the instance mean) with
no custom domains or functions. Opset 18: ScatterElements' "add" reduction needs >= 16, and
TensorRT 10.0's parser reads opsets 9..20. Batch is dynamic; H and W are fixed at export (the
instance-mean table and TensorRT's profile are sized from them).
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
from p2phd_infer.files import write_atomic

from .graphs import build_graph, check_size, engine_info, example_inputs

OPSET = 18
INSTANCE_SUM = "instance_sum"


def export_onnx_model(ckpt: Checkpoint, height: int, width: int, max_batch: int = 4,
                      graph: str = "generator") -> onnx.ModelProto:
    """Checkpoint -> ONNX ModelProto (fp32) with the engine metadata in metadata_props."""
    check_size(ckpt.config, height, width, graph)
    module = build_graph(ckpt, graph)
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
            # A fixed name, so the TensorRT builder finds the instance sums and keeps them fp32.
            node.name = f"{INSTANCE_SUM}_{node.output[0]}"
    info = engine_info(ckpt, height, width, max_batch, "fp32", graph, "onnx",
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
                max_batch: int = 4, graph: str = "generator") -> Path:
    return save_onnx(export_onnx_model(ckpt, height, width, max_batch, graph), out)


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
