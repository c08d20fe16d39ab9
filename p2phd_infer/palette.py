"""Palettes: colour label maps -> label ids (`run --label-format color`), and ids -> colours
(`run --save-comparison`, train visuals).

A palette is {label id: (r, g, b)}. Cityscapes' by default (its official label table, ids 0..33,
in labels.CITYSCAPES_LABELS; the license plate's id -1 is not a label id and is left out), a
model's own `label_colors` (model.pt's extra field, written from `--label-names`), or a file
(`--palette FILE`, the formats of label_names.py: JSON or `ID NAME R G B` lines).

Shared colours: a colour map cannot tell apart ids that share a colour. The rule, for every
palette: such a colour reads as the LOWEST id that has it. In Cityscapes that is the id with a
trainId where there is one: (0,0,0) is shared by ids 0-4 (unlabeled, ego vehicle,
rectification border, out of roi, static; all trainId 255) and reads as 0, unlabeled;
(153,153,153) by 17 pole (trainId 5) and 18 polegroup (255) and reads as 17. Ids a model does
not have (>= its label_nc) are left out of the palette, so their colours are unknown.

An unknown colour is refused, naming the file, the first such pixel (x, y) and its colour. The
lookup is vectorised: RGB packed into one int32 (r << 16 | g << 8 | b), then np.searchsorted
into the palette's sorted packed colours.
"""
from __future__ import annotations

import colorsys
import os

import numpy as np

from .errors import InputError
from .label_names import check_colors, read_label_names
from .labels import CITYSCAPES_LABELS

CITYSCAPES_LABEL_NC = 35            # the official pix2pixHD Cityscapes models: ids 0..34


def pack(rgb: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> int32 [...]: r << 16 | g << 8 | b."""
    rgb = np.asarray(rgb)
    return (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | \
        rgb[..., 2].astype(np.int32)


class Palette:
    """{id: (r, g, b)} with the lookup tables for colour -> id (lowest id of a shared colour).

    source: what error messages call the palette ("Cityscapes", the file, "the model's
    label_colors")."""

    def __init__(self, colors: dict[int, tuple[int, int, int] | list[int]], source: str):
        if not colors:
            raise InputError(source, "the palette has no colours")
        self.colors = dict(sorted(check_colors(colors, source).items()))
        self.source = source
        packed = {}
        self.shared: dict[tuple[int, int, int], list[int]] = {}
        for i, rgb in self.colors.items():          # ascending ids: the first seen is the lowest
            key = (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]
            if key in packed:
                self.shared.setdefault(rgb, [packed[key]]).append(i)
            else:
                packed[key] = i
        self._keys = np.array(sorted(packed), dtype=np.int32)
        self._ids = np.array([packed[k] for k in self._keys.tolist()], dtype=np.int32)

    def __len__(self) -> int:
        return len(self.colors)

    def restricted(self, label_nc: int) -> "Palette":
        """The palette without the ids a model with `label_nc` labels does not have."""
        if label_nc <= 0 or all(i < label_nc for i in self.colors):
            return self
        kept = {i: c for i, c in self.colors.items() if 0 <= i < label_nc}
        return Palette(kept, f"{self.source}, ids below label_nc {label_nc}")

    def ids(self, rgb: np.ndarray, name: str = "") -> np.ndarray:
        """uint8 [H,W,3] colours -> int32 [H,W] ids; InputError naming `name`, the first pixel
        (x, y) whose colour is not in the palette, and that colour."""
        packed = pack(rgb)
        at = np.searchsorted(self._keys, packed)
        np.minimum(at, len(self._keys) - 1, out=at)
        ok = self._keys[at] == packed
        if not ok.all():
            y, x = np.unravel_index(int(np.argmin(ok)), ok.shape)
            bad = tuple(int(c) for c in rgb[y, x])
            n = int(ok.size - np.count_nonzero(ok))
            raise InputError(name, f"pixel (x={x}, y={y}) has colour {bad}, which is not in the "
                                   f"palette ({self.source}; {n:,} pixel{'s' if n > 1 else ''} of unknown colours): "
                                   f"give --palette FILE, or --label-format ids for an id map")
        return self._ids[at]

    def table(self, n: int) -> np.ndarray:
        """uint8 [n,3]: the palette's colours at their ids, generated colours elsewhere."""
        table = generated_palette(n)
        for i, rgb in self.colors.items():
            if 0 <= i < n:
                table[i] = rgb
        return table


def cityscapes_palette() -> Palette:
    return Palette({i: rgb for i, (_, rgb) in CITYSCAPES_LABELS.items()}, "Cityscapes")


def generated_palette(n: int) -> np.ndarray:
    """uint8 [n,3], the same for every call: hues spread by the golden ratio, in three
    brightness bands, so neighbouring ids differ; id 0 is black."""
    out = np.zeros((max(n, 1), 3), dtype=np.uint8)
    for i in range(1, n):
        h = (i * 0.618033988749895) % 1.0
        v = (1.0, 0.75, 0.5)[i % 3]
        out[i] = [round(c * 255) for c in colorsys.hsv_to_rgb(h, 0.8, v)]
    return out[:n]


def read_palette(path: str | os.PathLike, label_nc: int) -> Palette:
    """`--palette FILE` (label_names.py's formats; every entry needs a colour)."""
    names, colors = read_label_names(path, label_nc)
    missing = sorted(set(names) - set(colors or {}))
    if not colors:
        raise InputError(path, "no colours in the file: a palette needs `ID NAME R G B` lines "
                               "(or JSON {\"ID\": {\"name\": ..., \"color\": [r, g, b]}})")
    if missing:
        raise InputError(path, f"label {missing[0]} ({names[missing[0]]!r}) has no colour; every "
                               f"entry of a palette needs one")
    return Palette(colors, str(path))


def model_colors(engine_or_ckpt) -> dict[int, list[int]] | None:
    """A model's own label_colors {id: [r, g, b]}: a model.pt's extra field (engines that keep
    their Checkpoint), else an exported engine's metadata (info.extra, whose JSON keys are
    strings)."""
    ckpt = engine_or_ckpt if hasattr(engine_or_ckpt, "generator") else \
        getattr(engine_or_ckpt, "checkpoint", None)
    colors = getattr(ckpt, "extra", {}).get("label_colors") if ckpt is not None else None
    if not colors:
        info = getattr(engine_or_ckpt, "info", None)
        colors = info.extra.get("label_colors") if info is not None else None
    if not colors:
        return None
    return {k: list(v) for k, v in check_colors(colors, "the model's label_colors").items()}


def model_palette(engine, path: str | os.PathLike | None = None) -> Palette:
    """The palette that decodes colour maps for `engine`: --palette FILE if given, else the
    model's label_colors, else Cityscapes; without the ids the model does not have."""
    label_nc = engine.config.label_nc
    if path is not None:
        pal = read_palette(path, label_nc)
    else:
        colors = model_colors(engine)
        pal = Palette(colors, "the model's label_colors") if colors else cityscapes_palette()
    return pal.restricted(label_nc)


def display_table(engine, palette: Palette | None = None) -> np.ndarray:
    """uint8 [label_nc,3] for pictures of a model's label maps: the model's label_colors, else
    the palette that decoded the maps (--palette), else Cityscapes for a 35-label model, else
    generated colours."""
    n = max(engine.config.label_nc, 1)
    colors = model_colors(engine)
    if colors:
        return Palette(colors, "model").table(n)
    if palette is not None:
        return palette.table(n)
    if engine.config.label_nc == CITYSCAPES_LABEL_NC:
        return cityscapes_palette().table(n)
    return generated_palette(n)


def colorize(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Integer ids [H,W] of any integer dtype -> uint8 [H,W,3] through `table` [n,3]; ids outside
    0..n-1 wrap modulo n (computed in int64, so uint8 ids and a 256-colour table do not
    overflow)."""
    ids = np.asarray(ids)
    if not (np.issubdtype(ids.dtype, np.integer) or ids.dtype == np.bool_):
        raise TypeError(f"label ids must be integers, not {ids.dtype}")
    return table[np.mod(ids.astype(np.int64), len(table))]
