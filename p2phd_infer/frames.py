"""Finding the frames to synthesize and decoding them into checked int32 id maps.

A frame is a label map plus, where the model uses instances, its instance map, paired by:
  1. the same file name in an `--instances` folder;
  2. Cityscapes names in one folder (`X_gtFine_labelIds.png` <-> `X_gtFine_instanceIds.png`);
  3. pix2pixHD sibling folders (`test_label/` <-> `test_inst/`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ModelConfig
from .image_io import InputError, read_id_png

LABEL_SUFFIX = "_labelIds.png"
INSTANCE_SUFFIX = "_instanceIds.png"


@dataclass(frozen=True)
class Frame:
    name: str                 # output name relative to the output folder, without suffix
    label: Path
    inst: Path | None         # None when no instance map was found


def _instance_for(label: Path, root: Path, instances: Path | None) -> Path | None:
    rel = label.relative_to(root) if root.is_dir() else Path(label.name)
    candidates = []
    if instances is not None:
        candidates.append(instances / rel)
    if label.name.endswith(LABEL_SUFFIX):
        candidates.append(label.with_name(label.name[: -len(LABEL_SUFFIX)] + INSTANCE_SUFFIX))
    for i, part in enumerate(label.parts):
        if part.endswith("_label"):    # test_label/ -> test_inst/, train_label/ -> train_inst/
            parts = list(label.parts)
            parts[i] = part[: -len("_label")] + "_inst"
            candidates.append(Path(*parts))
    return next((c for c in candidates if c.is_file()), None)


def discover_frames(labels: str | Path, instances: str | Path | None = None) -> list[Frame]:
    """Every label map under `labels` (a folder, searched recursively, or one file), sorted."""
    root = Path(labels)
    inst_root = Path(instances) if instances is not None else None
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*.png") if p.is_file() and not p.name.startswith("."))
        if any(p.name.endswith(LABEL_SUFFIX) for p in files):
            # A Cityscapes folder also holds instance, colour and polygon files: labelIds only.
            files = [p for p in files if p.name.endswith(LABEL_SUFFIX)]
    else:
        raise InputError(root, "no such file or folder")
    if inst_root is not None and not inst_root.is_dir():
        raise InputError(inst_root, "instance folder does not exist")
    frames = []
    for f in files:
        rel = f.relative_to(root) if root.is_dir() else Path(f.name)
        frames.append(Frame(str(rel.with_suffix("")), f, _instance_for(f, root, inst_root)))
    return frames


def label_range_fault(lo: int, hi: int, label_nc: int) -> str | None:
    """What is wrong with a label map whose ids span lo..hi, or None when they all fit."""
    if lo >= 0 and hi < label_nc:
        return None
    return (f"label id {hi if hi >= label_nc else lo} out of range: the model has label_nc "
            f"{label_nc} (ids 0..{label_nc - 1})")


def decode_frame(frame: Frame, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """-> (label int32 [H,W], inst int32 [H,W]), checked against the model; InputError otherwise.

    Models without instance maps get the label map as `inst` (it is then unused by the graph)."""
    label = read_id_png(frame.label)
    H, W = label.shape
    s = cfg.stride
    if H % s or W % s:
        raise InputError(frame.label, f"size {W}x{H} is not a multiple of the model's stride {s}")
    fault = label_range_fault(int(label.min()), int(label.max()), cfg.label_nc)
    if fault:
        raise InputError(frame.label, fault)
    if not cfg.needs_instance_map:
        return label, label
    if frame.inst is None:
        raise InputError(frame.label, "no instance map found (the model needs one): give "
                                      "--instances DIR, or use Cityscapes names or a *_inst/ "
                                      "sibling folder")
    inst = read_id_png(frame.inst)
    if inst.shape != label.shape:
        raise InputError(frame.inst, f"instance map is {inst.shape[1]}x{inst.shape[0]}, its label "
                                     f"map {frame.label.name} is {W}x{H}")
    return label, inst
