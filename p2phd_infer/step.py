"""The one frames -> image step: what the Runtime, the embedding API and the server run on a batch
of frames, over one engine and one style.

    in-memory frames ─▶ checked tensors ─▶ one batch on the device ─▶ per-instance features
        (style) ─▶ engine ─▶ float [B,3,H,W] in [-1,1]   (to_uint8: uint8 [B,H,W,3])

The input kind is decided once, when the step is made over its engine (input_kind):

- "ids": a label map of class ids per frame, [H,W] (or [B,H,W], [B,1,H,W]) of any integer
  type; the engine gets int32 [B,1,H,W], and without an instance map the label stands in for it.
- "rgb" (label_nc 0, the official RGB-input mode): the input image itself, uint8 [H,W,3] (or
  [B,H,W,3]), channels last like the images that come out and like image_io.read_rgb gives them;
  the network gets x/127.5 - 1 as the training side reads it (train/datasets.py), and the class
  of each pixel, for styles, comes from its instance id (labels.label_from_instance).

Only the PyTorch engine takes an RGB input (exported graphs are traced with label ids), so a
label_nc 0 model on another engine is refused here, once, by name.
"""
from __future__ import annotations

import torch

from .config import INPUT_KINDS
from .devices import resolve_device
from .errors import EngineError, InputError
from .ids import as_ids, as_tensor, check_maps
from .labels import label_from_instance
from .synthesizer import from_uint8

IDS, RGB = INPUT_KINDS


def input_kind(engine) -> str:
    """"ids" or "rgb": what the engine's label input is. EngineError for a label_nc 0 model on
    an engine that takes label ids only."""
    kind = engine.config.input_kind
    backend = engine.info.backend
    if kind == RGB and backend != "torch":
        raise EngineError(engine.name, f"a label_nc 0 model (RGB input images) runs on the "
                                       f"PyTorch engine (its model.pt); the {backend} engine "
                                       f"takes label ids only")
    return kind


def label_input(kind: str, height: int, width: int) -> tuple[str, list[int]]:
    """The label input of one frame as KServe v2 describes it: (datatype, dims without the batch
    dimension; -1 for a size the engine leaves free). What serve's metadata advertises."""
    return ("INT32", [1, height, width]) if kind == IDS else ("UINT8", [height, width, 3])


class SynthesisStep:
    """frames -> images over one engine. style: a StyleControl (styles.py) that makes each
    batch's feature map for a features model; None gives zeros (or the caller's feat)."""

    def __init__(self, engine, style=None):
        self.engine = engine
        self.cfg = engine.config
        self.kind = input_kind(engine)
        self.device = resolve_device(engine.device)
        self.style = style if self.cfg.feat_num > 0 else None

    def with_style(self, style) -> "SynthesisStep":
        return SynthesisStep(self.engine, style)

    # ------------------------------------------------------------------ inputs

    def labels(self, x, name: str, what: str = "label map") -> tuple[torch.Tensor, bool]:
        """An in-memory label input -> ([B,C,H,W] tensor, whether it was one frame without a
        batch dimension). ids: C 1, uint8 or int32 on the host (range-checked by batch_inputs), or as
        given on the engine's CUDA device; rgb: uint8, C 3. InputError naming `name`."""
        if self.kind == IDS:
            t = as_ids(x, what, name, self.device)
            return _id_batch(t, what, name), t.dim() == 2
        t = as_tensor(x, "input image", name)
        if t.dtype != torch.uint8 or t.dim() not in (3, 4) or t.shape[-1] != 3:
            raise InputError(name, f"a label_nc 0 model takes RGB input images, uint8 [H,W,3] "
                                   f"or [B,H,W,3] (channels last), not {t.dtype} "
                                   f"{list(t.shape)}")
        if t.is_cuda and self.device.type != "cuda":
            t = t.cpu()
        elif t.is_cuda and t.device != self.device:
            t = t.to(self.device)
        single = t.dim() == 3
        t = t[None] if single else t
        return t.permute(0, 3, 1, 2).contiguous(), single

    def instances(self, x, name: str) -> torch.Tensor:
        """An in-memory instance map -> [B,1,H,W] ids (as as_ids gives them)."""
        return _id_batch(as_ids(x, "instance map", name, self.device), "instance map", name)

    def batch_inputs(self, label, inst, *, name: str = "label", inst_name: str | None = "inst",
                     max_pixels: int | None = None):
        """In-memory frames -> checked (label [B,C,H,W], inst [B,1,H,W] or None, single):
        inst is None for a model without instance maps (and required by one that has them).
        Faults of the instance map name `inst_name` (None: `name`, one frame's name)."""
        label_t, single = self.labels(label, name)
        inst_t = None
        if self.cfg.needs_instance_map:
            if inst is None:
                raise InputError(inst_name or name, "no instance map given (this model needs an "
                                                 "instance map)")
            inst_t = self.instances(inst, inst_name or name)
            if inst_t.shape[0] != label_t.shape[0]:
                raise InputError(inst_name or name, f"{inst_t.shape[0]} instance maps for "
                                                    f"{label_t.shape[0]} label inputs")
        check_maps(label_t, inst_t, self.cfg, name, inst_name=inst_name,
                   size=self.engine.info.size, max_pixels=max_pixels)
        return label_t, inst_t, single

    def frame_inputs(self, label, inst, name: str, max_pixels: int | None = None):
        """One in-memory frame -> checked (label, inst): ids [H,W] or rgb uint8 [3,H,W], inst
        [H,W] or None; the per-frame form decode_maps gives for files."""
        label_t, inst_t, _ = self.batch_inputs(label, inst, name=name, inst_name=None,
                                               max_pixels=max_pixels)
        if label_t.shape[0] != 1:
            raise InputError(name, f"{label_t.shape[0]} frames in one input; submit one frame "
                                   f"at a time")
        label_t = label_t[0, 0] if self.kind == IDS else label_t[0]
        return label_t.contiguous(), None if inst_t is None else inst_t[0, 0].contiguous()

    def stack(self, labels: list[torch.Tensor], insts: list[torch.Tensor] | None):
        """Per-frame tensors (frame_inputs' form) -> one batch (label [B,C,H,W], inst [B,1,H,W]
        or None), without a copy for a single frame."""
        def batch(maps, channel):
            if len(maps) == 1:
                return maps[0][None, None] if channel else maps[0][None]
            return torch.stack(maps)[:, None] if channel else torch.stack(maps)
        return batch(labels, self.kind == IDS), None if insts is None else batch(insts, True)

    # ------------------------------------------------------------------ the step

    def __call__(self, label: torch.Tensor, inst: torch.Tensor | None,
                 feat: torch.Tensor | None = None, *, check: bool = True) -> torch.Tensor:
        """One batch -> float [B,3,H,W] in [-1,1] on the engine's device. label: [B,1,H,W]
        integer ids or uint8 [B,3,H,W] (the input kind); inst: [B,1,H,W] or None; feat: the
        batch's feature map, or None to take it from the style. check: Engine.synthesize's
        finite-output check (False: the caller reads finite_frames itself)."""
        dev = self.device
        B, _, H, W = label.shape
        if self.kind == RGB:
            x = from_uint8(label.to(dev))
            inst = torch.zeros(B, 1, H, W, dtype=torch.int32, device=dev) if inst is None \
                else inst.to(dev).to(torch.int32)
            classes = label_from_instance(inst)
        else:
            x = label.to(dev).to(torch.int32)
            inst = x if inst is None else inst.to(dev).to(torch.int32)
            classes = x
        if feat is None and self.style is not None:
            feat = self.style.feature_map(classes, inst)
        image = self.engine.synthesize(x, inst, feat, check=check)
        if tuple(image.shape) != (B, 3, H, W):
            raise RuntimeError(f"the engine returned shape {tuple(image.shape)}, expected "
                               f"{(B, 3, H, W)}")
        return image


def _id_batch(t: torch.Tensor, what: str, name: str) -> torch.Tensor:
    """ids [H,W], [B,H,W] or [B,1,H,W] -> [B,1,H,W] (a view)."""
    if t.dim() == 2:
        return t[None, None]
    if t.dim() == 3:
        return t[:, None]
    if t.dim() != 4 or t.shape[1] != 1:
        raise InputError(name, f"{what} has shape {tuple(t.shape)}; expected [H,W], [B,H,W] "
                               f"or [B,1,H,W] ids")
    return t
