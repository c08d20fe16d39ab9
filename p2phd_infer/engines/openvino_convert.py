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


def convert_checkpoint(ckpt, height: int, width: int, lookup: bool = False):
    """A Checkpoint's generator graph -> ov.Model at one frame size; lookup: its full-resolution
    first layer as a table lookup (LookupSynthesizer)."""
    from ..synthesizer import Synthesizer
    cfg = ckpt.config
    m = cfg.stride
    if height < cfg.min_size or width < cfg.min_size or height % m or width % m:
        raise OptionError("--height/--width", f"size {width}x{height}: width and height must be "
                                              f"multiples of {m}, at least {cfg.min_size}")
    synth = Synthesizer(cfg, ckpt.build_generator())
    module = GeneratorInputs(LookupSynthesizer(synth) if lookup else synth)
    info = EngineInfo(cfg, ckpt.features, ckpt.label_names, size=(height, width),
                      precision="fp32", graph="generator", backend="openvino",
                      extra=dict(lookup_first_layer=True) if lookup else {})
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


# --- table-lookup first layer ---------------------------------------------------------------


def _reflect3(t: torch.Tensor) -> torch.Tensor:
    """[..., H, W] -> [..., H+6, W+6], reflected as ReflectionPad2d(3), by indexing (any dtype,
    so integer codes pad too)."""
    def index(n):
        i = torch.arange(-3, n + 3)
        return torch.where(i < 0, -i, torch.where(i >= n, 2 * (n - 1) - i, i))
    H, W = t.shape[-2:]
    return t.index_select(-2, index(H)).index_select(-1, index(W))


class LookupFirstLayer(nn.Module):
    """ReflectionPad2d(3) + Conv2d(7) on [one-hot(label_nc), edge, feat] as a table lookup: at
    every tap exactly one one-hot channel is 1 and the edge is 0 or 1, so the channel sum is one
    row of T[tap, code] = W[:, class, tap] + edge * W[:, edge, tap], code = 2*class + edge
    (kernels/label_conv.py builds T), and the 49 taps are one EmbeddingBag sum per pixel. The
    feature channels, not one-hot, keep their (3-channel) convolution. Exact: the same products
    summed in another order."""

    def __init__(self, conv: nn.Conv2d, cfg):
        super().__init__()
        from ..kernels.label_conv import TAPS, build_table
        self.label_nc, self.use_instance = cfg.label_nc, cfg.use_instance
        out = conv.out_channels
        table = build_table(conv.weight, cfg.label_nc, cfg.use_instance)[:, :, :out]
        self.ncode = table.shape[1]
        self.register_buffer("table", table.reshape(TAPS * self.ncode, out).contiguous())
        self.register_buffer("offsets", torch.arange(TAPS, dtype=torch.int32) * self.ncode)
        bias = conv.bias if conv.bias is not None else torch.zeros(out)
        self.register_buffer("bias", bias.detach().clone().view(1, out, 1, 1))
        first_feat = cfg.label_nc + int(cfg.use_instance)
        self.register_buffer("feat_weight", conv.weight.detach()[:, first_feat:].clone())

    def forward(self, label: torch.Tensor, inst: torch.Tensor,
                feat: torch.Tensor | None = None) -> torch.Tensor:
        from ..labels import edge_map
        B, _, H, W = label.shape
        code = torch.where((label >= 0) & (label < self.label_nc), label,
                           torch.full_like(label, self.label_nc))
        if self.use_instance:
            code = code * 2 + edge_map(inst).to(code.dtype)
        padded = _reflect3(code)[:, 0]                                 # [B, H+6, W+6]
        taps = torch.stack([padded[:, dy:dy + H, dx:dx + W] for dy in range(7)
                            for dx in range(7)], dim=-1) + self.offsets  # [B, H, W, 49]
        rows = nn.functional.embedding_bag(taps.reshape(-1, taps.shape[-1]).long(), self.table,
                                           mode="sum")                  # [B*H*W, O]
        out = rows.reshape(B, H, W, -1).permute(0, 3, 1, 2) + self.bias
        if self.feat_weight.shape[1] > 0 and feat is not None:
            out = out + nn.functional.conv2d(_reflect3(feat), self.feat_weight)
        return out


class LookupSynthesizer(nn.Module):
    """The Synthesizer with its full-resolution first layer (the last local enhancer's front, or
    G1 of a global model) as a LookupFirstLayer; every other layer is the generator's own."""

    def __init__(self, synth: nn.Module):
        super().__init__()
        from ..networks import LocalEnhancer
        self.synth = synth
        self.cfg = synth.cfg
        gen = synth.generator
        self.local = isinstance(gen, LocalEnhancer)
        seq = getattr(gen, f"model{gen.n_local_enhancers}_1") if self.local else gen.model
        self.first = LookupFirstLayer(seq[1], self.cfg)
        self.rest = seq[2:]

    def forward(self, label: torch.Tensor, inst: torch.Tensor,
                feat: torch.Tensor | None = None) -> torch.Tensor:
        from ..labels import encode_labels
        from ..networks import downsample_2x
        cfg, gen = self.cfg, self.synth.generator
        if cfg.feat_num > 0 and feat is None:
            feat = torch.zeros(label.shape[0], cfg.feat_num, *label.shape[-2:])
        first = self.rest(self.first(label, inst, feat))
        if not self.local:
            return first
        x = encode_labels(label, inst, cfg.label_nc, cfg.use_instance,
                          feat if cfg.feat_num > 0 else None)
        N = gen.n_local_enhancers
        pyramid = [x]
        for _ in range(N):
            pyramid.append(downsample_2x(pyramid[-1]))
        out = gen.model(pyramid[-1])
        for n in range(1, N + 1):
            front = first if n == N else getattr(gen, f"model{n}_1")(pyramid[N - n])
            out = getattr(gen, f"model{n}_2")(front + out)
        return out
