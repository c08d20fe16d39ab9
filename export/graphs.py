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


def check_size(cfg, height: int, width: int, graph: str = "generator") -> None:
    """OptionError unless the frame size fits the generator (and, for the style graph, E):
    checked before anything is traced, so a size the network cannot take is refused in one line
    instead of failing deep inside torch.export."""
    m, least = cfg.stride, cfg.min_size
    if graph == "style":
        m, least = max(m, encoder_multiple(cfg)), max(least, cfg.encoder_min_size)
    if height < least or width < least:
        raise OptionError("--height/--width", f"size {width}x{height} is below this model's "
                                              f"minimum {least}x{least} for the {graph} graph")
    if height % m or width % m:
        raise OptionError("--height/--width", f"size {width}x{height}: width and height must be "
                                              f"multiples of {m} for this model's {graph} graph")


def table_size(num_pixels: int) -> int:
    # At least one slot per possible id; and no smaller than the number of pixels, because
    # TensorRT's ScatterElements importer asserts every indices dimension <= the data dimension.
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

    def __init__(self, synth: Synthesizer):
        super().__init__()
        self.synth = synth
        cfg = synth.cfg
        self.input_names = ["label"] + (["inst"] if cfg.needs_instance_map else []) + \
            (["feat"] if cfg.feat_num > 0 else [])

    def forward(self, label: torch.Tensor, inst: torch.Tensor | None = None,
                feat: torch.Tensor | None = None) -> torch.Tensor:
        return self.synth(label, inst, feat)


class StyleGraph(nn.Module):
    """label, inst, style_image, style_inst -> image: style from an example photo."""

    input_names = ["label", "inst", "style_image", "style_inst"]

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
        return self.synth(label, inst, feat)


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
                dtype: torch.dtype = torch.float32) -> nn.Module:
    """Checkpoint -> GeneratorGraph or StyleGraph in eval mode on `device` in `dtype`."""
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
    return module.to(device, dtype).eval()


def engine_info(ckpt, height: int, width: int, max_batch: int, precision: str, graph: str,
                backend: str, **extra) -> EngineInfo:
    """The EngineInfo an exported engine carries, from its checkpoint and build settings."""
    return EngineInfo(ckpt.config, ckpt.features, ckpt.label_names, size=(height, width),
                      max_batch=max_batch, precision=precision, graph=graph, backend=backend,
                      extra=extra)
