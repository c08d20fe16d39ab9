"""Simulator inputs: instance maps derived from label maps, and CARLA's segmentation cameras.

A simulator gives a label map per frame, often without instance maps, and in its own class ids.

Derived instances (`--instances auto`): each connected region of a *thing* class (a class with
instances: Cityscapes person, rider, car, truck, bus, caravan, trailer, train, motorcycle,
bicycle) becomes one instance, numbered `class*1000 + k` as Cityscapes numbers them; every stuff
pixel gets its class id. Regions are 4-connected (pixels that share an edge; diagonal contact
does not join two objects, as the instance edge map itself uses 4-neighbours), and k counts
regions in the raster order of their first pixel (top to bottom, then left to right), starting
at 0. The numbering depends only on the label map, so an object keeps its number from frame to
frame as long as the objects above and to the left of it do not change in number.
scipy.ndimage.label does the labelling; it numbers regions in that same raster order (a test holds
it to that).

CARLA (0.9.14 and newer, whose tags follow Cityscapes' classes with ids of their own):
- the semantic segmentation camera carries the tag in the red channel;
- the instance segmentation camera carries the tag in red and the actor id in green (low byte)
  and blue (high byte);
- `carla.Image.raw_data` is BGRA, 4 bytes a pixel; PNGs saved from it with
  `ColorConverter.Raw` are RGB(A) with the same meaning per channel.
CARLA_TO_CITYSCAPES maps each tag to a Cityscapes labelId; a thing's instance id is
`class*1000 + (actor id mod 1000)`, so an actor keeps its id, and its look, in every frame.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError
from .labels import CITYSCAPES_THINGS, INSTANCES_PER_CLASS

CARLA_VERSION = "0.9.14+"
# CARLA tag -> Cityscapes labelId. Tags without a Cityscapes class (other, water) read as 0,
# unlabeled; road lines are part of the road in Cityscapes. --label-map replaces this table.
CARLA_TO_CITYSCAPES: dict[int, int] = {
    0: 0,      # unlabeled
    1: 7,      # road
    2: 8,      # sidewalk
    3: 11,     # building
    4: 12,     # wall
    5: 13,     # fence
    6: 17,     # pole
    7: 19,     # traffic light
    8: 20,     # traffic sign
    9: 21,     # vegetation
    10: 22,    # terrain
    11: 23,    # sky
    12: 24,    # pedestrian -> person
    13: 25,    # rider
    14: 26,    # car
    15: 27,    # truck
    16: 28,    # bus
    17: 31,    # train
    18: 32,    # motorcycle
    19: 33,    # bicycle
    20: 4,     # static
    21: 5,     # dynamic
    22: 0,     # other
    23: 0,     # water
    24: 7,     # road line
    25: 6,     # ground
    26: 15,    # bridge
    27: 10,    # rail track
    28: 14,    # guard rail
}


def _table(mapping: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A 256-entry lookup (uint8 source -> id) and which entries are defined."""
    lut = np.zeros(256, np.int32)
    known = np.zeros(256, bool)
    for src, dst in mapping.items():
        lut[src], known[src] = dst, True
    return lut, known


_CARLA_LUT, _CARLA_KNOWN = _table(CARLA_TO_CITYSCAPES)


def instances_from_labels(label: np.ndarray, things=CITYSCAPES_THINGS, *,
                          name: str = "label map") -> np.ndarray:
    """int [H,W] label ids -> int32 [H,W] instance ids: `class*1000 + k` for the k-th 4-connected
    region of a thing class (k in raster order of the region's first pixel), the class id for
    every other pixel. InputError naming `name` when a class has more than 1000 regions (its
    ids would run into the next class's)."""
    from scipy import ndimage
    label = np.asarray(label)
    if label.ndim != 2:
        raise InputError(name, f"expected a label map [H,W], got shape {label.shape}")
    inst = label.astype(np.int32, copy=True)
    if not inst.size:
        return inst
    present = np.flatnonzero(np.bincount(inst.ravel().clip(0), minlength=1))
    four = ndimage.generate_binary_structure(2, 1)
    for c in present:
        if int(c) not in things:
            continue
        mask = inst == c
        regions, n = ndimage.label(mask, structure=four)
        if n > INSTANCES_PER_CLASS:
            raise InputError(name, f"class {int(c)} has {n} separate regions; at most "
                                   f"{INSTANCES_PER_CLASS} instances fit its ids "
                                   f"({int(c) * 1000}..{int(c) * 1000 + 999})")
        inst[mask] = int(c) * INSTANCES_PER_CLASS + regions[mask] - 1
    return inst


def carla_labels(tags: np.ndarray, *, name: str = "CARLA image",
                 table: dict[int, int] | None = None) -> np.ndarray:
    """uint8 [H,W] CARLA tags -> int32 [H,W] label ids through CARLA_TO_CITYSCAPES (or `table`).
    InputError naming `name`, the first pixel and the tag for a tag the table lacks."""
    lut, known = (_CARLA_LUT, _CARLA_KNOWN) if table is None else _table(table)
    tags = np.asarray(tags)
    if tags.dtype != np.uint8:
        raise InputError(name, f"CARLA tags are 8-bit, got {tags.dtype}")
    bad = ~known[tags]
    if bad.any():
        y, x = (int(v) for v in np.argwhere(bad)[0])
        last = len(CARLA_TO_CITYSCAPES) - 1
        raise InputError(name, f"pixel ({x}, {y}) has CARLA tag {int(tags[y, x])}, which is not "
                               f"in the CARLA {CARLA_VERSION} table (0..{last}); a --label-map "
                               f"gives ids for other tags")
    return lut[tags]


def carla_instances(labels: np.ndarray, actor: np.ndarray, things=CITYSCAPES_THINGS, *,
                    name: str = "CARLA image") -> np.ndarray:
    """Label ids [H,W] and CARLA actor ids [H,W] -> int32 instance ids: `class*1000 + actor mod
    1000` on thing pixels, the class id elsewhere. InputError naming `name` when two actors of
    one class would share an id in this frame."""
    labels = np.asarray(labels, np.int32)
    actor = np.asarray(actor).astype(np.int32)
    thing = np.isin(labels, np.fromiter(things, np.int32))
    inst = labels.copy()
    if thing.any():
        k = actor[thing] % INSTANCES_PER_CLASS
        ids = labels[thing] * INSTANCES_PER_CLASS + k
        pairs = np.unique(np.stack([ids, actor[thing]]), axis=1)
        dup = np.flatnonzero(np.diff(pairs[0]) == 0)
        if dup.size:
            i = int(dup[0])
            raise InputError(name, f"actors {int(pairs[1, i])} and {int(pairs[1, i + 1])} would "
                                   f"share instance id {int(pairs[0, i])} (ids are class*1000 + "
                                   f"actor mod 1000)")
        inst[thing] = ids
    return inst


def split_carla_rgb(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [H,W,3|4] RGB(A) from a CARLA camera PNG -> (tags, actor ids), views where possible:
    tags from red, actor ids from green (low byte) and blue (high byte)."""
    return rgb[..., 0], rgb[..., 1].astype(np.int32) | (rgb[..., 2].astype(np.int32) << 8)


def bgra_view(image) -> np.ndarray:
    """A carla.Image (raw_data, height, width), or any buffer of H*W*4 bytes with those
    attributes, -> uint8 [H,W,4] BGRA without a copy."""
    try:
        h, w, raw = int(image.height), int(image.width), image.raw_data
    except AttributeError:
        raise InputError("image", f"expected a carla.Image (raw_data, height, width), got "
                                  f"{type(image).__name__}") from None
    buf = np.frombuffer(raw, dtype=np.uint8)
    if buf.size != h * w * 4:
        raise InputError("image", f"raw_data has {buf.size} bytes; a {w}x{h} BGRA image has "
                                  f"{h * w * 4}")
    return buf.reshape(h, w, 4)


def from_carla(semantic=None, instance=None, *, table: dict[int, int] | None = None,
               things=CITYSCAPES_THINGS) -> tuple[np.ndarray, np.ndarray | None]:
    """CARLA camera images (carla.Image, or uint8 [H,W,4] BGRA arrays) -> (label ids, instance
    ids or None). The instance camera alone gives both (its red channel is the semantic tag); the
    semantic camera alone gives labels only (derive instances with instances_from_labels)."""
    if semantic is None and instance is None:
        raise InputError("image", "give the semantic or the instance camera's image")
    source = instance if instance is not None else semantic
    bgra = source if isinstance(source, np.ndarray) else bgra_view(source)
    if bgra.ndim != 3 or bgra.shape[2] != 4 or bgra.dtype != np.uint8:
        raise InputError("image", f"expected uint8 BGRA [H,W,4], got {bgra.dtype} "
                                  f"{tuple(bgra.shape)}")
    labels = carla_labels(bgra[..., 2], name="image", table=table)
    if instance is None:
        return labels, None
    actor = bgra[..., 1].astype(np.int32) | (bgra[..., 0].astype(np.int32) << 8)
    return labels, carla_instances(labels, actor, things, name="image")
