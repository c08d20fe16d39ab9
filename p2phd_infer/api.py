"""The embedding API for video and simulation loops.

    from p2phd_infer.api import Pix2PixHD
    p2p = Pix2PixHD("model.pt", device="cuda", fp16=True, seed=7)
    for label, inst in simulator:                 # numpy or torch, CPU or CUDA, [H,W] or [B,H,W]
        rgb = p2p(label, inst)                    # numpy uint8 [H,W,3]
        gpu_rgb = p2p(label, inst, output="torch")   # uint8 [H,W,3] on the engine's device

A call runs on the caller's thread and current CUDA stream: tensors already on the engine's device
go in without a copy (int32 ids are used as they are, other integer types are converted there).
For many frames at once, `p2p.runtime(...)` gives a batched, pipelined Runtime over the same
engine and style. Styles come from (seed, instance id), so an instance keeps its look in every
frame.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .engines import Engine, open_engine
from .frames import label_range_fault
from .runtime import Runtime, concrete_device
from .synthesizer import to_uint8


def make_style(engine: Engine, style: str | None = None, seed: int = 0,
               style_image: str | Path | None = None, style_instances: str | Path | None = None):
    """A StyleControl for a features model, None for a model without features (and without style
    options). ValueError/InputError for bad options. Without styles.py, None: zero features."""
    wants_style = bool(style) or style_image is not None
    if engine.config.feat_num <= 0 and not wants_style:
        return None
    try:
        from .styles import StyleControl
    except ImportError:   # the style module is optional: a features model then gets zeros
        if wants_style:
            raise ValueError("style options need p2phd_infer.styles, which is not installed")
        return None
    control = StyleControl.from_options(
        engine.info, style, seed, Path(style_image) if style_image is not None else None,
        Path(style_instances) if style_instances is not None else None,
        encoder=getattr(engine, "encoder", None), device=engine.device)
    return control if engine.config.feat_num > 0 else None


class Pix2PixHD:
    """Label and instance id maps in, images out.

    engine: a path (model.pt, .pt2, .onnx, .plan; None: the bundled demo model) or an Engine.
    style/seed/style_image/style_instances: per-instance feature choice for features models
    (see styles.py); ignored by models without features unless given explicitly.
    """

    def __init__(self, engine: str | Path | Engine | None = None, *, device: str = "auto",
                 fp16: bool = False, compile: bool = False, style: str | None = None,
                 seed: int = 0, style_image: str | Path | None = None,
                 style_instances: str | Path | None = None):
        self.engine = engine if isinstance(engine, Engine) else \
            open_engine(engine, device, fp16=fp16, compile=compile)
        self.style = make_style(self.engine, style, seed, style_image, style_instances)

    @property
    def device(self) -> torch.device:
        return concrete_device(self.engine.device)

    @property
    def config(self):
        return self.engine.config

    def __call__(self, label, inst=None, *, output: str = "numpy"):
        """label, inst: integer id maps [H,W], [B,H,W] or [B,1,H,W] (numpy or torch). inst may be
        left out for models without instance maps.

        output: "numpy" -> uint8 [H,W,3] ([B,H,W,3] for batched input) on the host;
        "torch" -> the same as a uint8 tensor on the engine's device; "float" -> the engine's
        float [B,3,H,W] in [-1,1] on the device."""
        if output not in ("numpy", "torch", "float"):
            raise ValueError(f"output must be 'numpy', 'torch' or 'float', not {output!r}")
        single = _ndim(label) == 2
        cfg = self.config
        label_t = self._ids(label, "label map", check_range=cfg.label_nc)
        if cfg.needs_instance_map:
            if inst is None:
                raise ValueError("this model needs an instance map (inst)")
            inst_t = self._ids(inst, "instance map")
            if inst_t.shape != label_t.shape:
                raise ValueError(f"instance map shape {tuple(inst_t.shape)} differs from the "
                                 f"label map's {tuple(label_t.shape)}")
        else:
            inst_t = label_t
        _, _, H, W = label_t.shape
        s = cfg.stride
        if H % s or W % s:
            raise ValueError(f"size {W}x{H} is not a multiple of the model's stride {s}")
        with torch.inference_mode():
            feat = self.style.feature_map(label_t, inst_t) if self.style is not None else None
            image = self.engine(label_t, inst_t, feat)
            if output == "float":
                return image
            rgb = to_uint8(image)
            if single:
                rgb = rgb[0]
            return rgb if output == "torch" else rgb.cpu().numpy()

    synthesize = __call__

    def runtime(self, **options) -> Runtime:
        """A Runtime (runtime.py) over this engine and style: submit()/map() with batching and
        overlapped decode, copies, compute and encode."""
        return Runtime(self.engine, style=self.style, **options)

    def _ids(self, x, what: str, check_range: int | None = None) -> torch.Tensor:
        """-> int32 [B,1,H,W] on the engine's device; no copy for int32 already there."""
        if isinstance(x, np.ndarray):
            if not (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
                raise ValueError(f"{what} has dtype {x.dtype}; ids must be integers")
            if x.dtype in (np.uint32, np.uint64):
                x = x.astype(np.int64)
            t = torch.from_numpy(np.ascontiguousarray(x))
        elif isinstance(x, torch.Tensor):
            if x.is_floating_point() or x.is_complex():
                raise ValueError(f"{what} has dtype {x.dtype}; ids must be integers")
            t = x.detach()
        else:
            raise TypeError(f"{what}: expected a numpy array or a torch tensor, "
                            f"got {type(x).__name__}")
        if t.dim() == 2:
            t = t[None, None]
        elif t.dim() == 3:
            t = t[:, None]
        elif t.dim() != 4 or t.shape[1] != 1:
            raise ValueError(f"{what} has shape {tuple(t.shape)}; expected [H,W], [B,H,W] or "
                             f"[B,1,H,W]")
        if check_range is not None and not t.is_cuda and t.numel():
            fault = label_range_fault(*(int(v) for v in torch.aminmax(t)), check_range)
            if fault:
                raise ValueError(fault)
        if t.device != self.device:
            # Copy the ids as they are (uint8 labels stay 1 byte a pixel), widen on the device.
            t = t.to(self.device)
        return t.to(torch.int32)


def _ndim(x) -> int:
    return x.ndim if isinstance(x, np.ndarray) else x.dim() if isinstance(x, torch.Tensor) else -1
