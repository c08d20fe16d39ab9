"""Label encoding: class ids + instance ids -> the generator's input channels.

Instance ids stay integer end to end: Cityscapes ids reach 33xxx, which fp16 merges
(26001..26007 -> 26000) and int16 wraps negative, so edges are computed on int32/int64 ids.
Everything here is plain torch ops that export to ONNX (one-hot as an equality against a range).
"""
from __future__ import annotations

import torch

from .errors import InputError, OptionError

# Cityscapes label ids, names and colours (the official table of cityscapesscripts' labels.py).
CITYSCAPES_LABELS: dict[int, tuple[str, tuple[int, int, int]]] = {
    0: ("unlabeled", (0, 0, 0)), 1: ("ego vehicle", (0, 0, 0)),
    2: ("rectification border", (0, 0, 0)), 3: ("out of roi", (0, 0, 0)),
    4: ("static", (0, 0, 0)), 5: ("dynamic", (111, 74, 0)), 6: ("ground", (81, 0, 81)),
    7: ("road", (128, 64, 128)), 8: ("sidewalk", (244, 35, 232)), 9: ("parking", (250, 170, 160)),
    10: ("rail track", (230, 150, 140)), 11: ("building", (70, 70, 70)), 12: ("wall", (102, 102, 156)),
    13: ("fence", (190, 153, 153)), 14: ("guard rail", (180, 165, 180)),
    15: ("bridge", (150, 100, 100)), 16: ("tunnel", (150, 120, 90)), 17: ("pole", (153, 153, 153)),
    18: ("polegroup", (153, 153, 153)), 19: ("traffic light", (250, 170, 30)),
    20: ("traffic sign", (220, 220, 0)), 21: ("vegetation", (107, 142, 35)),
    22: ("terrain", (152, 251, 152)), 23: ("sky", (70, 130, 180)), 24: ("person", (220, 20, 60)),
    25: ("rider", (255, 0, 0)), 26: ("car", (0, 0, 142)), 27: ("truck", (0, 0, 70)),
    28: ("bus", (0, 60, 100)), 29: ("caravan", (0, 0, 90)), 30: ("trailer", (0, 0, 110)),
    31: ("train", (0, 80, 100)), 32: ("motorcycle", (0, 0, 230)), 33: ("bicycle", (119, 11, 32)),
}
CITYSCAPES_NAMES: dict[int, str] = {i: name for i, (name, _) in CITYSCAPES_LABELS.items()}
# The classes with instances (hasInstances in the official label table): person .. bicycle.
CITYSCAPES_THINGS = frozenset(range(24, 34))
# Cityscapes instance ids: class*1000 + k for the k-th object of a thing class, the class id itself
# for stuff (and for thing pixels without an object, e.g. a crowd).
INSTANCES_PER_CLASS = 1000
# The 19 Cityscapes evaluation classes: labelId -> trainId (cityscapesscripts' table); every other
# label id has trainId 255, ignored when scoring.
CITYSCAPES_TRAIN_IDS: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
IGNORE_ID = 255
CITYSCAPES_EVAL_NAMES: list[str] = [CITYSCAPES_NAMES[i] for i in sorted(
    CITYSCAPES_TRAIN_IDS, key=CITYSCAPES_TRAIN_IDS.get)]


def label_from_instance(inst: torch.Tensor) -> torch.Tensor:
    """Cityscapes instance ids are class*1000 + k for countable classes, the class id otherwise."""
    return torch.where(inst < INSTANCES_PER_CLASS, inst,
                       torch.div(inst, INSTANCES_PER_CLASS, rounding_mode="floor"))


def edge_map(inst: torch.Tensor) -> torch.Tensor:
    """inst int [B,1,H,W] -> bool [B,1,H,W]: True where a 4-neighbour has another id.
    Both sides of a boundary are marked; the image border is not."""
    horiz = inst[..., :, 1:] != inst[..., :, :-1]      # [B,1,H,W-1]
    vert = inst[..., 1:, :] != inst[..., :-1, :]       # [B,1,H-1,W]
    # Border padding built from `inst`'s own slices so 1-pixel-wide maps keep their shape.
    zc = torch.zeros_like(inst[..., :, :1], dtype=torch.bool)
    zr = torch.zeros_like(inst[..., :1, :], dtype=torch.bool)
    left = torch.cat([zc, horiz], dim=-1)              # differs from the left neighbour
    right = torch.cat([horiz, zc], dim=-1)             # differs from the right neighbour
    up = torch.cat([zr, vert], dim=-2)
    down = torch.cat([vert, zr], dim=-2)
    return left | right | up | down


def one_hot(label: torch.Tensor, label_nc: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """label int [B,1,H,W] -> [B,label_nc,H,W]; an equality against a range, which every backend
    (ONNX, TensorRT) supports, unlike a scatter."""
    classes = torch.arange(label_nc, device=label.device, dtype=label.dtype).view(1, -1, 1, 1)
    return (label == classes).to(dtype)


def encode_labels(label: torch.Tensor, inst: torch.Tensor | None, label_nc: int,
                  use_instance: bool, feat: torch.Tensor | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The generator input: one-hot(label_nc), then the edge map, then features (official order).
    label_nc 0 (the official RGB-input mode): `label` is the input image itself, float
    [B,3,H,W] in [-1,1], taken as it is in place of the one-hot."""
    if label_nc == 0:
        if not label.is_floating_point() or label.dim() != 4 or label.shape[1] != 3:
            raise InputError(f"a label_nc 0 model takes an RGB input image, float [B,3,H,W] in "
                             f"[-1,1], not a {label.dtype} tensor of shape {tuple(label.shape)}")
        parts = [label.to(dtype)]
    else:
        parts = [one_hot(label, label_nc, dtype)]
    if use_instance:
        if inst is None:
            raise OptionError("this model needs an instance map")
        parts.append(edge_map(inst).to(dtype))
    if feat is not None:
        parts.append(feat.to(dtype))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def resolve_label(name_or_id: str, label_names: dict[int, str] | None = None) -> int:
    """'car' or '26' -> 26, by the model's label names or else the Cityscapes table."""
    s = name_or_id.strip()
    if s.lstrip("-").isdigit():
        return int(s)
    names = label_names or CITYSCAPES_NAMES
    for i, n in names.items():
        if n == s or n.replace(" ", "_") == s:
            return int(i)
    raise OptionError(f"unknown label name {s!r}; known: {', '.join(sorted(set(names.values())))}")
