"""Conversion to OpenVINO: a module (the Synthesizer, or export's style graph) -> ov.Model, and
an IR on disk.

OpenVINO's PyTorch frontend traces the same module the exporters export (the Synthesizer: one-hot
and edges inside), at batch 1 and one frame size, with int32 `label`/`inst` and float `feat`
inputs. It runs here, not through export/onnx_export.py, because `run` (and each Ray actor)
converts, and the runtime and engine layers may not import the export layer
(tests/test_architecture.py). The IR keeps fp32 weights (ov.save_model would halve them to fp16
by default): the float precision is chosen when the engine compiles it, so one IR serves fp32 and
bf16 (int8 is its own IR: openvino_int8.py).
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import EngineError, OptionError, OutputError
from ..files import temp_path, write_atomic
from .base import METADATA_KEY, EngineInfo, info_to_json
from .openvino_cpu import import_openvino, openvino_version

INT_INPUTS = ("label", "inst", "style_inst")

# Conversions done by this process (the tests check that a cached entry is not converted again).
conversions = 0


class GeneratorInputs(nn.Module):
    """The Synthesizer with the generator graph's inputs: label, inst (every engine is fed one;
    a model without instance edges ignores it), and feat for features models."""

    def __init__(self, synth: nn.Module):
        super().__init__()
        self.synth = synth
        self.input_names = ["label", "inst"] + (["feat"] if synth.cfg.feat_num > 0 else [])

    def forward(self, label: torch.Tensor, inst: torch.Tensor,
                feat: torch.Tensor | None = None) -> torch.Tensor:
        return self.synth(label, inst, feat)


def example_feeds(names: list[str], cfg, height: int, width: int) -> dict[str, torch.Tensor]:
    """Batch-1 tracing inputs of the right dtypes (values matter only for tracing)."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for n in names:
        if n in INT_INPUTS:
            hi = cfg.label_nc if n == "label" else 8
            out[n] = torch.randint(0, hi, (1, 1, height, width), generator=g, dtype=torch.int32)
        else:
            ch = cfg.feat_num if n == "feat" else 3
            out[n] = torch.rand(1, ch, height, width, generator=g) * 2 - 1
    return out


def convert_module(module: nn.Module, names: list[str], info: EngineInfo):
    """An fp32 module taking `names` (label, inst, feat / style inputs) -> ov.Model at batch 1
    and info.size, with the metadata document in rt_info."""
    global conversions
    ov = import_openvino()
    H, W = info.size
    feeds = example_feeds(names, info.config, H, W)
    # By position (the frontend names inputs after the forward's parameters); named below.
    spec = [(list(t.shape), ov.Type.i32 if n in INT_INPUTS else ov.Type.f32)
            for n, t in feeds.items()]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")          # tracer notes about Python control flow
        try:
            model = ov.convert_model(module.eval(), example_input=tuple(feeds.values()),
                                     input=spec)
        except Exception as e:  # noqa: BLE001 - an op the frontend cannot take
            first = (str(e).strip().splitlines() or [""])[0]
            raise EngineError("", f"OpenVINO could not convert the model "
                                  f"({e.__class__.__name__}: {first})") from None
    for port, n in zip(model.inputs, names):
        port.get_tensor().set_names({n})
    model.outputs[0].get_tensor().set_names({"image"})
    info.extra.update(inputs=names, openvino=openvino_version())
    model.set_rt_info(info_to_json(info), [METADATA_KEY])
    conversions += 1
    return model


def convert_checkpoint(ckpt, height: int, width: int):
    """A Checkpoint's generator graph -> ov.Model at one frame size."""
    from ..synthesizer import Synthesizer
    cfg = ckpt.config
    m = cfg.stride
    if height < cfg.min_size or width < cfg.min_size or height % m or width % m:
        raise OptionError("--height/--width", f"size {width}x{height}: width and height must be "
                                              f"multiples of {m}, at least {cfg.min_size}")
    module = GeneratorInputs(Synthesizer(cfg, ckpt.build_generator()))
    info = EngineInfo(cfg, ckpt.features, ckpt.label_names, size=(height, width),
                      precision="fp32", graph="generator", backend="openvino")
    return convert_module(module, module.input_names, info)


def save_ir(model, out: str | os.PathLike) -> Path:
    """out (.xml) and the .bin beside it, fp32 weights, each written atomically (the .bin
    first, so a reader that finds the new .xml finds its weights)."""
    ov = import_openvino()
    out = Path(out)
    if out.suffix.lower() != ".xml":
        raise OutputError(out, "an OpenVINO IR is named .xml (its weights go to the .bin beside "
                               "it)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = temp_path(out)
        staging.mkdir()
    except OSError as e:
        raise OutputError(out, f"cannot be written ({e.strerror or e})") from None
    try:
        try:
            ov.save_model(model, str(staging / "model.xml"), compress_to_fp16=False)
        except Exception as e:  # noqa: BLE001 - disk full, permissions
            raise OutputError(out, f"OpenVINO could not write the IR ({e.__class__.__name__}: "
                                   f"{e})") from None
        for suffix in (".bin", ".xml"):
            write_atomic(out.with_suffix(suffix),
                         lambda tmp, s=suffix: os.replace(staging / f"model{s}", tmp))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
