"""The graphs that leave PyTorch: plain torch modules whose every op exports to standard ONNX,
torch.export and TensorRT.

generator graph: label int32 [B,1,H,W], inst int32 [B,1,H,W], feat float [B,F,H,W] (features
    models only) -> image float [B,3,H,W]; one-hot and edges inside (p2phd_infer.labels).
style graph (combined, features models with an encoder): label, inst, plus an example photo
    `style_image` float [B,3,H,W] in [-1,1] with its instance map `style_inst` int32 [B,1,H,W]
    -> image. The encoder E runs on the photo as `run --style-image` runs it (at its training
    resolution, instance_features.encode_photo), every photo instance gets its mean feature, and
    those means are matched onto the target frame BY INSTANCE ID: a target pixel with id k gets
    the photo's mean feature of id k; ids absent from the photo get zeros. (`run --style-image`
    falls back further, to the photo's mean over the same label and then the feature
    dictionary; the graph does not.) Photo and frame have the same size.

The instance-wise mean here is a table formulation that torch.export and ONNX can express (the
reference kernels.instance_mean_reference uses torch.unique, whose output size depends on the
data): per-channel sums and pixel counts are scattered into a table indexed by instance id
(ScatterElements, reduction "add"), divided, and gathered back at each pixel's id (GatherElements).
Ids must lie in 0..MAX_INSTANCE_ID, the range of 16-bit instance PNGs.
"""
from __future__ import annotations

import torch
from torch import nn

from p2phd_infer.engines.base import MAX_INSTANCE_ID, EngineInfo
from p2phd_infer.errors import OptionError
from p2phd_infer.instance_features import encoder_multiple
from p2phd_infer.networks import downsample_2x
from p2phd_infer.synthesizer import Synthesizer


def size_multiple(cfg, graph: str = "generator") -> int:
    """What H and W of the graph must be multiples of: the generator's stride, and for the style
    graph also the encoder's (E runs on the photo)."""
    return max(cfg.stride, encoder_multiple(cfg)) if graph == "style" else cfg.stride


def check_size(cfg, height: int, width: int, graph: str = "generator") -> None:
    """OptionError unless the frame size fits the generator (and, for the style graph, E):
    checked before anything is traced, so a size the network cannot take is refused in one line
    instead of failing deep inside torch.export. Also refuses a label_nc 0 model (an RGB input
    image): the exported graphs take label ids."""
    if cfg.input_kind == "rgb":
        raise OptionError("--engine", "a label_nc 0 model (RGB input images) is not exported yet: "
                                      "`run --engine model.pt` runs it on PyTorch")
    m, least = cfg.stride, cfg.min_size
    if graph == "style":
        m, least = max(m, encoder_multiple(cfg)), max(least, cfg.encoder_min_size)
    if height < least or width < least:
        raise OptionError("--height/--width", f"size {width}x{height} is below this model's "
                                              f"minimum {least}x{least} for the {graph} graph")
    if height % m or width % m:
        raise OptionError("--height/--width", f"size {width}x{height}: width and height must be "
                                              f"multiples of {m} for this model's {graph} graph")


def table_size(num_pixels):
    # At least one slot per possible id; and no smaller than the number of pixels, because
    # TensorRT's ScatterElements importer asserts every indices dimension <= the data dimension.
    # sym_max: in a dynamic-size export num_pixels is symbolic, and this stays one expression
    # (an ONNX Max) instead of a guard on the traced size. Anything else (an int in eager mode,
    # a traced size tensor under TorchScript tracing for OpenVINO) takes Python's max.
    if isinstance(num_pixels, torch.SymInt):
        return torch.sym_max(MAX_INSTANCE_ID + 1, num_pixels)
    return max(MAX_INSTANCE_ID + 1, num_pixels)


def instance_table(feat: torch.Tensor, inst: torch.Tensor) -> torch.Tensor:
    """feat float [B,C,H,W], inst int [B,1,H,W] -> fp32 [B,C,T]: per-sample, per-id mean feature
    (zeros for ids with no pixel). Sums and counts accumulate in fp32."""
    B, C, H, W = feat.shape
    n = H * W
    ids = inst.reshape(B, 1, n).to(torch.int64)
    ones = torch.ones_like(ids, dtype=torch.float32)
    values = torch.cat([feat.reshape(B, C, n).to(torch.float32), ones], dim=1)    # [B,C+1,N]
    table = torch.zeros(B, C + 1, table_size(n), dtype=torch.float32, device=feat.device)
    table = table.scatter_add(2, ids.expand(B, C + 1, n), values)
    return table[:, :C] / table[:, C:].clamp_min(1.0)


def lookup_table(table: torch.Tensor, inst: torch.Tensor) -> torch.Tensor:
    """table fp32 [B,C,T], inst int [B,1,H,W] -> [B,C,H,W]: each pixel gets its id's entry."""
    B, C, _ = table.shape
    _, _, H, W = inst.shape
    ids = inst.reshape(B, 1, H * W).to(torch.int64).expand(B, C, H * W)
    return table.gather(2, ids).reshape(B, C, H, W)


def instance_mean_export(feat: torch.Tensor, inst: torch.Tensor) -> torch.Tensor:
    """Same function as kernels.instance_mean_reference (for ids 0..MAX_INSTANCE_ID), in ops that
    export."""
    return lookup_table(instance_table(feat, inst), inst).to(feat.dtype)


def photo_features(encoder_net: nn.Module, cfg, style_image: torch.Tensor,
                   style_inst: torch.Tensor, inst: torch.Tensor) -> torch.Tensor:
    """E's instance-wise mean features of the photo, placed onto the frame by instance id.

    E sees the photo as in training (p2phd_infer.instance_features.encode_photo): for a model with
    n local enhancers, after n steps of the 2x pyramid (instance map subsampled [::2, ::2]), its
    instance mean taken there, upsampled nearest to full size; then one mean per instance id over
    the full-size photo."""
    x, small = style_image, style_inst
    for _ in range(cfg.enhancers):
        x, small = downsample_2x(x), small[..., ::2, ::2]
    feat = encoder_net(x)
    if cfg.enhancers:
        feat = lookup_table(instance_table(feat, small), small)
        feat = nn.functional.interpolate(feat, size=tuple(style_image.shape[-2:]), mode="nearest")
    return lookup_table(instance_table(feat, style_inst), inst)


class GeneratorGraph(nn.Module):
    """label, inst[, feat] -> image. `inst` is an input only where the model uses it (edges or
    features); `feat` only for features models."""

    output_dtype: torch.dtype | None = None        # None: the weights' dtype (see to_typed_fp16)

    def __init__(self, synth: Synthesizer):
        super().__init__()
        self.synth = synth
        cfg = synth.cfg
        self.input_names = ["label"] + (["inst"] if cfg.needs_instance_map else []) + \
            (["feat"] if cfg.feat_num > 0 else [])

    def forward(self, label: torch.Tensor, inst: torch.Tensor | None = None,
                feat: torch.Tensor | None = None) -> torch.Tensor:
        image = self.synth(label, inst, feat)
        return image if self.output_dtype is None else image.to(self.output_dtype)


class StyleGraph(nn.Module):
    """label, inst, style_image, style_inst -> image: style from an example photo."""

    input_names = ["label", "inst", "style_image", "style_inst"]
    output_dtype: torch.dtype | None = None        # None: the weights' dtype (see to_typed_fp16)

    def __init__(self, synth: Synthesizer, encoder: nn.Module):
        super().__init__()
        if synth.cfg.feat_num <= 0:
            raise OptionError("--graph", "the style graph needs a features model (feat_num > 0)")
        self.synth = synth
        self.encoder_net = encoder.model      # E without its instance mean (done here, exportably)

    def forward(self, label: torch.Tensor, inst: torch.Tensor, style_image: torch.Tensor,
                style_inst: torch.Tensor) -> torch.Tensor:
        dtype = next(self.encoder_net.parameters()).dtype
        feat = photo_features(self.encoder_net, self.synth.cfg, style_image.to(dtype),
                              style_inst, inst)
        image = self.synth(label, inst, feat)
        return image if self.output_dtype is None else image.to(self.output_dtype)


class Fp32InstanceNorm(nn.Module):
    """InstanceNorm2d (no affine, no running stats: what p2phd_infer.networks builds) computed in
    fp32 whatever its input's dtype, returned in the input's dtype. In an fp16 graph the exporter
    writes Cast(fp32) -> InstanceNormalization -> Cast(fp16): per-channel statistics over up to
    2 M pixels (2048x1024) lose digits in fp16, and a variance can overflow its 65504."""

    def __init__(self, norm: nn.InstanceNorm2d):
        super().__init__()
        if norm.affine or norm.track_running_stats:
            raise ValueError("Fp32InstanceNorm: InstanceNorm2d without affine or running stats")
        self.eps = norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.instance_norm(x.float(), eps=self.eps).to(x.dtype)


def _norms_to_fp32(module: nn.Module) -> None:
    # In place, at the same child names, so a Sequential keeps its indices.
    for name, child in module.named_children():
        if isinstance(child, nn.InstanceNorm2d):
            setattr(module, name, Fp32InstanceNorm(child))
        else:
            _norms_to_fp32(child)


def to_typed_fp16(graph: nn.Module) -> nn.Module:
    """A GeneratorGraph or StyleGraph, in place, typed for TensorRT's strongly typed mode: fp16
    weights and activations, with the fp32 islands written into the graph as Casts: every
    InstanceNorm (Fp32InstanceNorm) and the style graph's instance-mean chain (instance_table and
    lookup_table sum, divide and gather in fp32; encode_labels casts the means back to fp16).
    Inputs and the output `image` stay fp32, so the graph's interface is the fp32 one."""
    graph.half()
    _norms_to_fp32(graph)
    graph.output_dtype = torch.float32
    return graph


def example_inputs(names: list[str], cfg, batch: int, height: int, width: int,
                   device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """Random inputs of the right dtypes for tracing and parity checks."""
    g = generator
    out = []
    for name in names:
        if name == "label":
            t = torch.randint(0, cfg.label_nc, (batch, 1, height, width), generator=g)
        elif name in ("inst", "style_inst"):
            # Few distinct ids, Cityscapes-like values, so instances have many pixels each.
            t = torch.randint(0, 6, (batch, 1, height, width), generator=g) * 4001 + 7
        elif name == "feat":
            t = torch.rand(batch, cfg.feat_num, height, width, generator=g) * 2 - 1
        elif name == "style_image":
            t = torch.rand(batch, 3, height, width, generator=g) * 2 - 1
        else:
            raise ValueError(name)
        t = t.to(torch.int32) if name in ("label", "inst", "style_inst") else t.to(dtype)
        out.append(t.to(device))
    return tuple(out)


def build_graph(ckpt, graph: str = "generator", device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32, typed_fp16: bool = False) -> nn.Module:
    """Checkpoint -> GeneratorGraph or StyleGraph in eval mode on `device` in `dtype`; with
    `typed_fp16`, fp16 with explicit fp32 islands (to_typed_fp16; `dtype` is then ignored)."""
    synth = Synthesizer(ckpt.config, ckpt.build_generator())
    if graph == "generator":
        module = GeneratorGraph(synth)
    elif graph == "style":
        encoder = ckpt.build_encoder()
        if ckpt.config.feat_num <= 0 or encoder is None:
            raise OptionError("--graph", "the style graph needs a model with an encoder (feat_num > 0 and "
                             "encoder weights in the checkpoint)")
        module = StyleGraph(synth, encoder)
    else:
        raise OptionError("--graph", f"unknown graph {graph!r} (generator, style)")
    if typed_fp16:
        return to_typed_fp16(module.to(device)).eval()
    return module.to(device, dtype).eval()


def engine_info(ckpt, height: int, width: int, max_batch: int, precision: str, graph: str,
                backend: str, **extra) -> EngineInfo:
    """The EngineInfo an exported engine carries, from its checkpoint and build settings."""
    colors = ckpt.extra.get("label_colors")
    if colors:          # for run --label-format color and --save-comparison (palette.py)
        extra["label_colors"] = {str(int(k)): [int(c) for c in v] for k, v in colors.items()}
    return EngineInfo(ckpt.config, ckpt.features, ckpt.label_names, size=(height, width),
                      max_batch=max_batch, precision=precision, graph=graph, backend=backend,
                      extra=extra)
