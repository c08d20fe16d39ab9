"""One engine interface over every backend, chosen by the file a user passes to `--engine`.

An engine takes device tensors `label` int32 [B,1,H,W], `inst` int32 [B,1,H,W] and, for feature
models, `feat` float [B,F,H,W]; it returns float [B,3,H,W] in [-1,1] on its device. Each engine
carries what the runtime needs (architecture, feature dictionary, label names), so a run needs
nothing but the engine file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import Checkpoint, load_checkpoint
from .config import ModelConfig
from .synthesizer import Synthesizer


class EngineError(RuntimeError):
    pass


@dataclass
class EngineInfo:
    config: ModelConfig
    features: dict[int, torch.Tensor] | None = None
    label_names: dict[int, str] | None = None
    size: tuple[int, int] | None = None          # fixed (H, W) for engines built for one size
    max_batch: int | None = None
    precision: str = "fp32"
    extra: dict = field(default_factory=dict)


class Engine:
    info: EngineInfo
    device: torch.device

    @property
    def config(self) -> ModelConfig:
        return self.info.config

    def __call__(self, label: torch.Tensor, inst: torch.Tensor,
                 feat: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def generator_feeds(self, label: torch.Tensor, inst: torch.Tensor, feat: torch.Tensor | None,
                        takes_feat: bool) -> dict[str, torch.Tensor]:
        """The inputs of an exported generator graph. A features model given no `feat` gets zeros,
        as the PyTorch Synthesizer does; a style-from-photo graph is refused (it needs `.style`)."""
        if self.info.extra.get("graph", "generator") == "style":
            raise EngineError(f"{getattr(self, 'path', 'engine')}: this is a style-from-photo graph;"
                              f" it needs an example photo ({type(self).__name__}.style), or export "
                              f"--graph generator for `run`")
        self.check_shape(label)
        feeds = {"label": label, "inst": inst}
        if takes_feat:
            B, _, H, W = label.shape
            F = self.config.feat_num
            if feat is None:
                feat = torch.zeros(B, F, H, W, device=label.device)
            elif tuple(feat.shape) != (B, F, H, W):
                raise EngineError(f"feat has shape {tuple(feat.shape)}, this engine needs "
                                  f"{(B, F, H, W)}")
            feeds["feat"] = feat
        return feeds

    def style_feeds(self, label: torch.Tensor, inst: torch.Tensor, style_image: torch.Tensor,
                    style_inst: torch.Tensor) -> dict[str, torch.Tensor]:
        """The inputs of an exported style-from-photo graph, checked: shapes agree and instance
        ids fit the graph's instance-mean table (0..65535, 16-bit maps)."""
        from .export.graphs import MAX_INSTANCE_ID
        if self.info.extra.get("graph", "generator") != "style":
            raise EngineError(f"{getattr(self, 'path', 'engine')}: a generator graph has no photo "
                              f"input; export --graph style for style from a photo")
        self.check_shape(label)
        B, _, H, W = label.shape
        if tuple(inst.shape) != (B, 1, H, W) or tuple(style_inst.shape) != (B, 1, H, W):
            raise EngineError(f"inst {tuple(inst.shape)} and style_inst {tuple(style_inst.shape)} "
                              f"must both be {(B, 1, H, W)}")
        if tuple(style_image.shape) != (B, 3, H, W):
            raise EngineError(f"style_image has shape {tuple(style_image.shape)}, the photo must "
                              f"be {(B, 3, H, W)} (same size as the frame)")
        for name, ids in (("inst", inst), ("style_inst", style_inst)):
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi > MAX_INSTANCE_ID:
                raise EngineError(f"{name}: instance id {lo if lo < 0 else hi} out of range "
                                  f"0..{MAX_INSTANCE_ID} (16-bit instance maps)")
        return {"label": label, "inst": inst, "style_image": style_image, "style_inst": style_inst}

    def check_shape(self, label: torch.Tensor) -> None:
        B, _, H, W = label.shape
        if self.info.size is not None and (H, W) != tuple(self.info.size):
            raise EngineError(f"this engine was built for {self.info.size[1]}x{self.info.size[0]}, "
                              f"the input is {W}x{H}")
        if self.info.max_batch is not None and B > self.info.max_batch:
            raise EngineError(f"batch {B} exceeds this engine's max batch {self.info.max_batch}")


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EngineError("--device cuda asked for, but this PyTorch sees no CUDA device")
    return device


class TorchEngine(Engine):
    """The PyTorch generator from a model.pt: eager or torch.compile, fp32 or fp16."""

    def __init__(self, ckpt: Checkpoint | str | Path, device: str | torch.device | None = None,
                 fp16: bool = False, compile: bool = False, fast: bool | None = None):
        # fast (default: on CUDA): the same function through engine_fast.FastEngine (label
        # lookups, fused InstanceNorm, channels_last, CUDA graphs); fast=False opts out.
        if not isinstance(ckpt, Checkpoint):
            ckpt = load_checkpoint(ckpt)
        self.checkpoint = ckpt
        self.device = resolve_device(device)
        dtype = torch.float16 if fp16 else torch.float32
        self.info = EngineInfo(ckpt.config, ckpt.features, ckpt.label_names,
                               precision="fp16" if fp16 else "fp32")
        self.model = Synthesizer(ckpt.config, ckpt.build_generator()).to(self.device, dtype).eval()
        self.encoder = ckpt.build_encoder()
        if self.encoder is not None:
            self.encoder = self.encoder.to(self.device).eval()
        self.fast = self.device.type == "cuda" if fast is None else fast
        if self.fast:
            from .engine_fast import FastEngine
            self._forward = FastEngine(ckpt, self.device, "fp16" if fp16 else "fp32",
                                       compile="default" if compile else None,
                                       generator=self.model.generator)
        else:
            self._forward = torch.compile(self.model) if compile else self.model

    @torch.inference_mode()
    def __call__(self, label, inst, feat=None):
        if self.device.type == "cpu" and label.shape[0] > 1:
            # Batch-invariant on the CPU: oneDNN picks conv kernels by batch size, so a whole-batch
            # conv can change a frame's last bits (and a pixel by one level). One frame at a time
            # keeps every image independent of its batch-mates.
            return torch.cat([self._forward(label[i:i + 1], inst[i:i + 1],
                                            None if feat is None else feat[i:i + 1])
                              for i in range(label.shape[0])])
        return self._forward(label, inst, feat)


def default_engine_path() -> Path:
    """The demo model shipped in the package (trained on synthetic street scenes)."""
    # Beside this file, not importlib.resources: under an editable install with mapped package
    # folders, resources.files() gives a MultiplexedPath that does not convert to a real path.
    return Path(__file__).resolve().parent / "assets" / "demo" / "model.pt"


def open_engine(path: str | Path | None = None, device: str | torch.device | None = None,
                fp16: bool = False, compile: bool = False) -> Engine:
    path = Path(path) if path is not None else default_engine_path()
    if not path.is_file():
        raise EngineError(f"{path}: no such engine file")
    suffix = path.suffix.lower()
    if suffix == ".pt":
        return TorchEngine(path, device, fp16=fp16, compile=compile)
    if suffix == ".onnx":
        from .engine_onnx import OnnxEngine
        return OnnxEngine(path, device)
    if suffix == ".pt2":
        from .engine_aoti import AotiEngine
        return AotiEngine(path, device)
    if suffix in (".plan", ".engine"):
        from .engine_tensorrt import TensorRTEngine
        return TensorRTEngine(path, device)
    hint = (": an official pix2pixHD state dict? convert it with `p2phd-infer import-official`"
            if suffix == ".pth" else " (.pt, .pt2, .onnx, .plan, .engine)")
    raise EngineError(f"{path}: unknown engine type {suffix!r}{hint}")
