"""The embedding API for video and simulation loops.

    from p2phd_infer.api import Pix2PixHD
    p2p = Pix2PixHD("model.pt", device="cuda", precision="fp16", seed=7)
    for label, inst in simulator:                 # numpy or torch, CPU or CUDA, [H,W] or [B,H,W]
        rgb = p2p(label, inst)                    # numpy uint8 [H,W,3]
        gpu_rgb = p2p(label, inst, output="torch")   # uint8 [H,W,3] on the engine's device
        rgb = p2p(label, inst, instance_styles={26001: 3}, copy_styles={26002: 26001})

A call runs on the caller's thread and current CUDA stream: tensors already on the engine's device
go in without a copy (int32 ids are used as they are, other integer types are converted there;
host ids travel as uint8 when they are uint8, int32 otherwise). A label_nc 0 model takes its
input image instead of label ids: uint8 [H,W,3] or [B,H,W,3] (step.py).
For many frames at once, `p2p.runtime(...)` gives a batched, pipelined Runtime over the same
engine and style. Styles come from (seed, instance id), so an instance keeps its look in every
frame; per-instance choices (a cluster index, or "look like that other instance") override it
(styles.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .engines import Engine, open_engine
from .errors import OptionError
from .ids import remap_batch
from .runtime import Runtime
from .step import SynthesisStep
from .synthesizer import to_uint8


def make_style(engine: Engine, style: str | None = None, seed: int = 0,
               style_image: str | Path | None = None, style_instances: str | Path | None = None,
               instances: dict[int, int] | None = None, copies: dict[int, int] | None = None):
    """A StyleControl for a features model, None for a model without features (and without style
    options). OptionError/InputError for bad options. instances: {instance id: cluster index};
    copies: {instance id: instance id whose look it takes}."""
    wants_style = bool(style) or style_image is not None or bool(instances) or bool(copies)
    if engine.config.feat_num <= 0 and not wants_style:
        return None
    from .styles import StyleControl
    control = StyleControl.from_options(
        engine.info, style, seed, Path(style_image) if style_image is not None else None,
        Path(style_instances) if style_instances is not None else None,
        encoder=getattr(engine, "encoder", None), device=engine.device, instances=instances,
        copies=copies)
    return control if engine.config.feat_num > 0 else None


class Pix2PixHD:
    """Label and instance id maps in, images out.

    engine: a path (model.pt, .pt2, .onnx, .plan; None: the bundled demo model) or an Engine.
    style/seed/style_image/style_instances: per-instance feature choice for features models
    (see styles.py); ignored by models without features unless given explicitly.
    instance_styles {instance id: cluster index} / copy_styles {instance id: source instance id}:
    per-instance choices for every call (a call may give its own instead).
    label_map: a --label-map file (label_map.py): every label map given is in its source ids.
    instances="auto": a call without `inst` gets instance maps derived from the label map
    (sim.instances_from_labels), on the host.
    """

    def __init__(self, engine: str | Path | Engine | None = None, *, device: str = "auto",
                 precision: str = "fp32", compile: bool = False, mode: str = "auto",
                 calibration: str | Path | None = None,
                 style: str | None = None,
                 seed: int = 0, style_image: str | Path | None = None,
                 style_instances: str | Path | None = None,
                 instance_styles: dict[int, int] | None = None,
                 copy_styles: dict[int, int] | None = None,
                 label_map: str | Path | None = None, instances: str | None = None):
        if instances not in (None, "auto"):
            raise OptionError("instances", f"None (maps given with each call) or 'auto' (derived "
                                           f"from the label map), not {instances!r}")
        self.engine = engine if isinstance(engine, Engine) else \
            open_engine(engine, device, precision=precision, compile=compile, mode=mode,
                        calibration=calibration)
        self.style = make_style(self.engine, style, seed, style_image, style_instances,
                                instance_styles, copy_styles)
        self.step = SynthesisStep(self.engine, self.style)
        self._call_step: tuple[str, SynthesisStep] | None = None   # the last per-call style
        if label_map is not None:
            from .label_map import read_label_map
            label_map = read_label_map(label_map).for_model(self.engine.config.label_nc)
        self.label_map = label_map
        self.derive_instances = instances == "auto"

    @property
    def engine_info(self):
        """The engine's EngineInfo: backend and precision, and extra["engine"], the one line
        saying which engine runs and why (the same choice `run`, `serve` and `edit` make)."""
        return self.engine.info

    @property
    def device(self) -> torch.device:
        return self.step.device

    @property
    def config(self):
        return self.engine.config

    def __call__(self, label, inst=None, *, output: str = "numpy",
                 instance_styles: dict[int, int] | None = None,
                 copy_styles: dict[int, int] | None = None):
        """label, inst: integer id maps [H,W], [B,H,W] or [B,1,H,W] (numpy or torch); for a
        label_nc 0 model, label is the input image, uint8 [H,W,3] or [B,H,W,3]. inst may be
        left out for models without instance maps.

        instance_styles {instance id: cluster index} and copy_styles {instance id: source id}:
        this call's per-instance choices, in place of those given to the constructor (the seed,
        label style and style photo stay). OptionError for a cluster out of range.

        output: "numpy" -> uint8 [H,W,3] ([B,H,W,3] for batched input) on the host;
        "torch" -> the same as a uint8 tensor on the engine's device; "float" -> the engine's
        float [B,3,H,W] in [-1,1] on the device."""
        if output not in ("numpy", "torch", "float"):
            raise OptionError("output", f"must be 'numpy', 'torch' or 'float', not {output!r}")
        if self.label_map is not None or (self.derive_instances and inst is None):
            label, inst = remap_batch(label, inst, self.config, "label map",
                                      label_map=self.label_map,
                                      derive_instances=self.derive_instances)
        step = self._step_for(instance_styles, copy_styles)
        label_t, inst_t, single = step.batch_inputs(label, inst, name="label map",
                                                    inst_name="instance map")
        with torch.inference_mode():
            image = step(label_t, inst_t)
            if output == "float":
                return image
            rgb = to_uint8(image)
            if single:
                rgb = rgb[0]
            return rgb if output == "torch" else rgb.cpu().numpy()

    def _step_for(self, instance_styles, copy_styles) -> SynthesisStep:
        if instance_styles is None and copy_styles is None:
            return self.step
        if self.style is None:
            raise OptionError("instance_styles", "this model takes no instance features "
                                                 "(feat_num 0)")
        from .styles import instance_style
        key = instance_style(instance_styles, copy_styles)
        if self._call_step is None or self._call_step[0] != key:
            style = self.style.with_instances(instance_styles, copy_styles)
            self._call_step = (key, self.step.with_style(style))
        return self._call_step[1]

    def runtime(self, **options) -> Runtime:
        """A Runtime (runtime.py) over this engine and style (and label map, and derived
        instances): submit()/map() with batching and overlapped decode, copies, compute and
        encode."""
        options.setdefault("label_map", self.label_map)
        options.setdefault("derive_instances", self.derive_instances)
        return Runtime(self.engine, style=self.style, **options)
