"""What every engine shares: the interface, its typed description (EngineInfo), the metadata
document every engine file carries and the checks on what an engine is fed. The device rule
(resolve_device) lives in devices.py, below the engines, and is re-exported here.

An engine takes device tensors `label` int32 [B,1,H,W], `inst` int32 [B,1,H,W] and, for feature
models, `feat` float [B,F,H,W]; it returns float [B,3,H,W] in [-1,1] on its device. A style
engine (an exported style-from-photo graph) takes `style(label, inst, style_image, style_inst)`
instead. Each engine carries what the runtime needs (architecture, feature dictionary, label
names), so a run needs nothing but the engine file.

The metadata document is the same JSON for every exported file: ONNX keeps it in
metadata_props, an AOTInductor package in its metadata map, a TensorRT plan in the sidecar
`<plan>.json` (a plan is TensorRT's own serialisation, which other tools must still read).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ModelConfig
from ..devices import resolve_device  # noqa: F401 - the one device rule, re-exported
from ..errors import EngineError

METADATA_KEY = "p2phd_infer"     # metadata_props key (ONNX) / metadata key (AOTInductor)
METADATA_FORMAT = "p2phd-infer-engine"
METADATA_VERSION = 1
GRAPHS = ("generator", "style")
# int8: an OpenVINO graph quantized by NNCF (engines/openvino_int8.py).
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# Instance ids of exported style graphs index a table: the range of 16-bit instance PNGs.
MAX_INSTANCE_ID = 65535


@dataclass
class EngineInfo:
    config: ModelConfig
    features: dict[int, torch.Tensor] | None = None
    label_names: dict[int, str] | None = None
    size: tuple[int, int] | None = None          # fixed (H, W) for engines built for one size
    max_batch: int | None = None
    precision: str = "fp32"
    graph: str = "generator"                     # "generator" or "style"
    backend: str = "torch"                       # what runs it: torch, onnx, aoti, tensorrt, ...
    extra: dict = field(default_factory=dict)    # build details (inputs, compile settings)

    def __post_init__(self):
        if self.graph not in GRAPHS:
            raise EngineError("", f"unknown graph kind {self.graph!r} ({', '.join(GRAPHS)})")
        if self.max_batch is not None and self.max_batch < 1:
            raise EngineError("", f"max batch {self.max_batch} must be at least 1")
        if self.size is not None and (self.size[0] < 1 or self.size[1] < 1):
            raise EngineError("", f"frame size {self.size} must be positive")


# --- the metadata document ------------------------------------------------------------------


def info_to_json(info: EngineInfo) -> str:
    """EngineInfo -> JSON text. float32 feature centres survive the round trip exactly (a float32
    widened to a Python float prints with enough digits to come back to the same float32)."""
    doc = {
        "format": METADATA_FORMAT, "version": METADATA_VERSION,
        "config": info.config.to_dict(),
        "label_names": None if info.label_names is None else
        {str(int(k)): str(v) for k, v in info.label_names.items()},
        "features": None if info.features is None else
        {str(int(k)): torch.as_tensor(v, dtype=torch.float32).tolist()
         for k, v in info.features.items()},
        "size": None if info.size is None else [int(info.size[0]), int(info.size[1])],
        "max_batch": None if info.max_batch is None else int(info.max_batch),
        "precision": info.precision,
        "graph": info.graph,
        "backend": info.backend,
        "extra": info.extra,
    }
    return json.dumps(doc, separators=(",", ":"))


def info_from_json(text: str | bytes, source: str | os.PathLike) -> EngineInfo:
    """JSON text -> EngineInfo; EngineError naming `source` for anything malformed."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise EngineError(source, f"engine metadata is not valid JSON ({e})") from None
    except RecursionError:
        raise EngineError(source, "engine metadata is JSON nested too deeply") from None
    if not isinstance(doc, dict) or doc.get("format") != METADATA_FORMAT:
        raise EngineError(source, "no p2phd-infer engine metadata (export it with "
                                  "`p2phd-infer export`)")
    if doc.get("version") != METADATA_VERSION:
        raise EngineError(source, f"engine metadata version {doc.get('version')!r}, this release "
                                  f"reads {METADATA_VERSION}")
    try:
        cfg = ModelConfig.from_dict(doc["config"])
        names = doc.get("label_names")
        feats = doc.get("features")
        size = doc.get("size")
        extra = dict(doc.get("extra") or {})
        info = EngineInfo(
            config=cfg,
            features=None if feats is None else
            {int(k): torch.tensor(v, dtype=torch.float32).reshape(-1, cfg.feat_num)
             for k, v in feats.items()},
            label_names=None if names is None else {int(k): str(v) for k, v in names.items()},
            size=None if size is None else (int(size[0]), int(size[1])),
            max_batch=None if doc.get("max_batch") is None else int(doc["max_batch"]),
            precision=str(doc.get("precision", "fp32")),
            graph=str(doc.get("graph", extra.pop("graph", "generator"))),
            backend=str(doc.get("backend", extra.pop("backend", "torch"))),
            extra=extra,
        )
    except EngineError as e:
        raise EngineError(source, f"bad engine metadata: {e.fault}") from None
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise EngineError(source, f"bad engine metadata ({e.__class__.__name__}: {e})") from None
    if info.precision not in PRECISIONS:
        raise EngineError(source, f"bad engine metadata: precision {info.precision!r}")
    return info


def network_conv_shapes(info: EngineInfo) -> Counter:
    """The convolution weight shapes (out, in, kh, kw; a transposed conv's (in, out, kh, kw), as
    torch, ONNX and OpenVINO all store them) of the network `info` describes: its generator, and
    for a style graph its encoder too. Built on the meta device: no memory, no weights."""
    from ..networks import build_encoder, build_generator
    with torch.device("meta"):
        nets = [build_generator(info.config)]
        if info.graph == "style":
            nets.append(build_encoder(info.config))
    return Counter(tuple(m.weight.shape) for net in nets for m in net.modules()
                   if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)))


def graph_inputs(info: EngineInfo) -> dict[str, int]:
    """The inputs an exported graph of `info` takes, by name, with their channel counts."""
    cfg = info.config
    if info.graph == "style":
        return {"label": 1, "inst": 1, "style_image": 3, "style_inst": 1}
    return {"label": 1, **({"inst": 1} if cfg.needs_instance_map else {}),
            **({"feat": cfg.feat_num} if cfg.feat_num > 0 else {})}


def check_graph(source: str | os.PathLike, info: EngineInfo, conv_shapes: list[tuple[int, ...]],
                inputs: dict[str, list[int | None]]) -> None:
    """EngineError naming `source` unless the metadata describes this graph, from facts the
    engine opening the file reads off it: its inputs {name: [B, C, H, W], None where dynamic}
    must be those the metadata implies (names, channels, the fixed frame size), and its
    convolution weight shapes exactly those of the network the metadata's architecture builds.
    The runtime trusts the metadata's label_nc to check ids, so one edited to 200 over a graph
    built for 35 would let id 100 through to a one-hot that has no channel for it."""
    want_inputs = graph_inputs(info)
    if set(inputs) != set(want_inputs):
        raise EngineError(source, f"the engine metadata does not describe this graph: it implies "
                                  f"inputs {sorted(want_inputs)}, the graph has {sorted(inputs)}")
    for name, dims in inputs.items():
        size = list(info.size) if info.size is not None else [None, None]
        for what, got, need in (("channels", dims[1:2], [want_inputs[name]]),
                                ("frame size (H, W)", dims[2:4], size)):
            if len(dims) != 4 or any(g is not None and n is not None and g != n
                                     for g, n in zip(got, need)):
                raise EngineError(source, f"the engine metadata does not describe this graph: "
                                          f"input {name} has shape {dims}, the metadata implies "
                                          f"{what} {need}")
    want = network_conv_shapes(info)
    have = Counter(tuple(-1 if d is None else int(d) for d in s) for s in conv_shapes)
    if want == have:
        return
    cfg = info.config
    arch = (f"label_nc {cfg.label_nc}, instance edge {int(cfg.use_instance)}, feat_num "
            f"{cfg.feat_num}: {cfg.input_nc} input channels, netG {cfg.netG}, ngf {cfg.ngf}")
    missing = sorted(want - have)
    extra = sorted(have - want)
    if missing:
        fault = f"needs a convolution weight {list(missing[0])} the graph does not have"
    else:
        fault = f"has no convolution weight {list(extra[0])} the graph has"
    firsts = sorted({s[1] for s in have if len(s) == 4 and s[2] == s[3] == 7})
    raise EngineError(source, f"the engine metadata does not describe this graph: the network "
                              f"it describes ({arch}) {fault} (the graph's 7x7 convolutions take "
                              f"{'/'.join(map(str, firsts)) or 'no'} input channels); the "
                              f"metadata was edited or belongs to another file")


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where a TensorRT plan's metadata lives: `<plan>.json`."""
    path = Path(path)
    return path.with_name(path.name + ".json")


# --- frame sizes ----------------------------------------------------------------------------


def _reflect_index(n: int, to: int, device) -> torch.Tensor:
    # 0, 1, ..., n-1, then n-2, n-3, ...: reflection without repeating the edge, as
    # torch.nn.functional.pad(mode="reflect"), but by indexing, so integer ids pad too.
    i = torch.arange(to, device=device)
    return torch.where(i < n, i, 2 * (n - 1) - i)


def reflect_pad(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[..., H, W] -> [..., height, width], reflected on the right and bottom (any dtype; the
    padding must be smaller than each side, which the network's minimum size guarantees)."""
    H, W = t.shape[-2:]
    if height - H >= H or width - W >= W:
        raise EngineError("", f"a {W}x{H} frame cannot be reflect-padded to {width}x{height}")
    rows = _reflect_index(H, height, t.device)
    cols = _reflect_index(W, width, t.device)
    return t.index_select(-2, rows).index_select(-1, cols)


# --- the interface --------------------------------------------------------------------------


def finite_frames(image: torch.Tensor) -> torch.Tensor:
    """bool [B]: which frames of a float [B,...] batch hold only finite values (on the batch's
    device; nothing waits for it)."""
    return torch.isfinite(image).flatten(1).all(1)


class Engine:
    info: EngineInfo
    device: torch.device
    path: Path | None = None

    @property
    def config(self) -> ModelConfig:
        return self.info.config

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else type(self).__name__

    def __call__(self, label: torch.Tensor, inst: torch.Tensor,
                 feat: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def synthesize(self, label: torch.Tensor, inst: torch.Tensor,
                   feat: torch.Tensor | None = None, *, check: bool = True) -> torch.Tensor:
        """The network on a frame of any size at or above its minimum: label, inst (and feat)
        are reflect-padded on the right and bottom to a multiple of the stride, synthesized,
        and the image cropped back, so it stays pixel-aligned with the input. A frame already
        at a multiple goes through unchanged. check=False leaves the finite-output check to the
        caller (the Runtime's CUDA path reads finite_frames with its download instead of
        waiting for the device here)."""
        H, W = label.shape[-2:]
        Hp, Wp = self.config.padded_size(H, W)
        if (Hp, Wp) == (H, W):
            image = self(label, inst, feat)
        else:
            pad = [reflect_pad(t, Hp, Wp) if t is not None else None
                   for t in (label, inst, feat)]
            image = self(*pad)[..., :H, :W]
        return self.check_finite(image) if check else image

    def check_finite(self, image: torch.Tensor) -> torch.Tensor:
        """`image`, or EngineError naming this engine if it holds NaN or infinite values: they
        would be written as a black (or garbage) image with nothing to say why. One reduction
        per batch; the frames at fault are named by their place in the batch."""
        if not image.is_floating_point():
            return image
        fault = self.finite_fault(finite_frames(image))
        if fault is not None:
            raise fault
        return image

    def finite_fault(self, finite: torch.Tensor) -> EngineError | None:
        """The EngineError for a batch whose per-frame flags (finite_frames) are not all true,
        else None. Reading the flags waits for them: on a CUDA device, call it where the
        batch's results are read anyway."""
        if bool(finite.all()):
            return None
        bad = [i for i, ok in enumerate(finite.tolist()) if not ok]
        which = "its frame" if finite.shape[0] == 1 else \
            f"frame{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad[:8]))} of the batch"
        return EngineError(self.name, f"the network's output holds NaN or infinite values "
                                      f"({which}): damaged weights, or an overflow at precision "
                                      f"{self.info.precision}")

    def style(self, label: torch.Tensor, inst: torch.Tensor, style_image: torch.Tensor,
              style_inst: torch.Tensor) -> torch.Tensor:
        raise EngineError(self.name, "a generator graph has no photo input; export --graph "
                                     "style for style from a photo")

    def check_shape(self, label: torch.Tensor) -> None:
        """EngineError for a batch or frame size this engine cannot take."""
        B, _, H, W = label.shape
        if self.info.size is not None and (H, W) != tuple(self.info.size):
            raise EngineError(self.name, f"this engine was built for {self.info.size[1]}x"
                                         f"{self.info.size[0]}, the input is {W}x{H} (export "
                                         f"it with --height {H} --width {W}, or --dynamic-size "
                                         f"for onnx/tensorrt)")
        if self.info.max_batch is not None and B > self.info.max_batch:
            raise EngineError(self.name, f"batch {B} exceeds this engine's max batch "
                                         f"{self.info.max_batch}")

    def generator_feeds(self, label: torch.Tensor, inst: torch.Tensor, feat: torch.Tensor | None,
                        takes_feat: bool) -> dict[str, torch.Tensor]:
        """The inputs of an exported generator graph. A features model given no `feat` gets zeros,
        as the PyTorch Synthesizer does; a style-from-photo graph is refused (it needs `.style`)."""
        if self.info.graph == "style":
            raise EngineError(self.name, f"this is a style-from-photo graph; it needs an example "
                                         f"photo ({type(self).__name__}.style), or export "
                                         f"--graph generator for `run`")
        self.check_shape(label)
        feeds = {"label": label, "inst": inst}
        if takes_feat:
            B, _, H, W = label.shape
            F = self.config.feat_num
            if feat is None:
                feat = torch.zeros(B, F, H, W, device=label.device)
            elif tuple(feat.shape) != (B, F, H, W):
                raise EngineError(self.name, f"feat has shape {tuple(feat.shape)}, this engine "
                                             f"needs {(B, F, H, W)}")
            feeds["feat"] = feat
        return feeds

    def style_feeds(self, label: torch.Tensor, inst: torch.Tensor, style_image: torch.Tensor,
                    style_inst: torch.Tensor) -> dict[str, torch.Tensor]:
        """The inputs of an exported style-from-photo graph, checked: shapes agree and instance
        ids fit the graph's instance-mean table (0..MAX_INSTANCE_ID, 16-bit maps)."""
        if self.info.graph != "style":
            raise EngineError(self.name, "a generator graph has no photo input; export --graph "
                                         "style for style from a photo")
        self.check_shape(label)
        B, _, H, W = label.shape
        if tuple(inst.shape) != (B, 1, H, W) or tuple(style_inst.shape) != (B, 1, H, W):
            raise EngineError(self.name, f"inst {tuple(inst.shape)} and style_inst "
                                         f"{tuple(style_inst.shape)} must both be {(B, 1, H, W)}")
        if tuple(style_image.shape) != (B, 3, H, W):
            raise EngineError(self.name, f"style_image has shape {tuple(style_image.shape)}, the "
                                         f"photo must be {(B, 3, H, W)} (same size as the frame)")
        for what, ids in (("inst", inst), ("style_inst", style_inst)):
            lo, hi = (int(v) for v in torch.aminmax(ids))
            if lo < 0 or hi > MAX_INSTANCE_ID:
                raise EngineError(self.name, f"{what}: instance id {lo if lo < 0 else hi} out of "
                                             f"range 0..{MAX_INSTANCE_ID} (16-bit instance maps)")
        return {"label": label, "inst": inst, "style_image": style_image, "style_inst": style_inst}
