"""`p2phd-infer export --format openvino`: a model.pt -> OpenVINO IR (.xml + .bin, fp32 weights).

The conversion itself is engines/openvino_convert.py's (convert_module: OpenVINO's PyTorch
frontend on the module the other exporters export), the same one `run` uses for its per-user
cache, so an IR written here and a cached one are the same graph. The generator graph comes from
engines/openvino_convert.py; the style graph (a features model with its encoder, style from a photo) from
graphs.py's StyleGraph, as the ONNX export builds it.
"""
from __future__ import annotations

import os
from pathlib import Path

from p2phd_infer.checkpoint import Checkpoint
from p2phd_infer.errors import OptionError
from p2phd_infer.engines.openvino_convert import convert_checkpoint, convert_module, save_ir

from .graphs import build_graph, check_size, engine_info


def export_openvino(ckpt: Checkpoint, out: str | os.PathLike, height: int, width: int,
                    graph: str = "generator", precision: str = "fp32",
                    calibration: str | os.PathLike | None = None) -> Path:
    """model.pt -> out (.xml) and the .bin beside it, each written atomically. precision int8:
    the generator graph quantized by NNCF on `calibration` (engines/openvino_int8.py)."""
    check_size(ckpt.config, height, width, graph)
    if precision == "int8":
        from p2phd_infer.engines.openvino_cpu import check_precision
        from p2phd_infer.engines.openvino_int8 import (calibration_files, calibration_frames,
                                                       quantize)
        if graph != "generator":
            raise OptionError("--precision", "int8 export is for the generator graph")
        check_precision("int8")
        files = calibration_files(calibration)
        model = quantize(convert_checkpoint(ckpt, height, width),
                         calibration_frames(files, ckpt, height, width), ckpt.config)
    elif graph == "generator":
        model = convert_checkpoint(ckpt, height, width)
    else:
        module = build_graph(ckpt, graph)
        info = engine_info(ckpt, height, width, None, "fp32", graph, "openvino")
        model = convert_module(module, module.input_names, info)
    return save_ir(model, out)


__all__ = ["export_openvino"]
