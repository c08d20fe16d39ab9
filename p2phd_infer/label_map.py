"""`--label-map FILE`: a simulator's or dataset's own class ids (or colours) -> the model's ids.

Two formats:

  JSON  {"1": 7, "2": 8, "14": 26}       source id -> model id
        {"#804080": 7, "0,0,142": 26}    source colour (#rrggbb or r,g,b) -> model id
        [[1, 7], [[0, 0, 142], 26]]      the same as pairs
  text  one pair a line, `SOURCE MODEL_ID` (source an id, #rrggbb or r,g,b); blank lines and
        lines starting with '#' followed by a space are skipped.

One file maps ids or colours, not both. Every source appears once; model ids are checked
against the model's label_nc when the map is bound to a model (`for_model`). Applied where a
label map is decoded (run, serve, the embedding API, the editor): an id map's values, a colour
map's colours, or CARLA's tags (in place of the built-in CARLA table). A source value the map
lacks is refused, naming the file, the first such pixel and its value.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from .errors import InputError
from .locations import check_regular, read_bytes

MAX_ENTRIES = 1 << 16
_HEX = re.compile(r"#?([0-9a-fA-F]{6})$")


def _parse_source(token, at: str):
    """An int id, or an (r, g, b) tuple."""
    if isinstance(token, bool):
        raise InputError(at, f"source {token!r} is not an id or a colour")
    if isinstance(token, int):
        return token
    if isinstance(token, (list, tuple)):
        if len(token) == 3 and all(isinstance(c, int) and not isinstance(c, bool) and
                                   0 <= c <= 255 for c in token):
            return tuple(int(c) for c in token)
        raise InputError(at, f"colour {token!r} must be three integers 0..255")
    if isinstance(token, str):
        s = token.strip()
        if re.fullmatch(r"-?\d+", s):
            return int(s)
        m = _HEX.match(s)
        if m and s.startswith("#"):
            v = int(m.group(1), 16)
            return (v >> 16, (v >> 8) & 255, v & 255)
        parts = [p.strip() for p in s.split(",")]
        if len(parts) == 3 and all(re.fullmatch(r"\d+", p) for p in parts):
            return _parse_source([int(p) for p in parts], at)
    raise InputError(at, f"source {token!r} is not an id, #rrggbb or r,g,b")


def _parse_target(token, at: str) -> int:
    if isinstance(token, str) and re.fullmatch(r"\d+", token.strip()):
        return int(token)
    if isinstance(token, bool) or not isinstance(token, int):
        raise InputError(at, f"model id {token!r} is not an integer")
    return token


class LabelMap:
    """{source: model id}, sources all ids or all (r, g, b) colours."""

    def __init__(self, mapping: dict, source: str):
        if not mapping:
            raise InputError(source, "the label map has no entries")
        kinds = {isinstance(k, tuple) for k in mapping}
        if len(kinds) > 1:
            raise InputError(source, "mixes id and colour sources; a label map maps one or the "
                                     "other")
        self.colors = kinds == {True}
        self.mapping = dict(mapping)
        self.source = source
        if self.colors:
            keys = {(r << 16) | (g << 8) | b: v for (r, g, b), v in mapping.items()}
        else:
            keys = mapping
        self._keys = np.array(sorted(keys), dtype=np.int64)
        self._vals = np.array([keys[k] for k in sorted(keys)], dtype=np.int32)

    def __len__(self) -> int:
        return len(self.mapping)

    def for_model(self, label_nc: int) -> "LabelMap":
        """This map, checked against a model with `label_nc` labels (InputError naming the file
        for a model id outside 0..label_nc-1)."""
        if label_nc > 0:
            for src, dst in self.mapping.items():
                if not 0 <= dst < label_nc:
                    raise InputError(self.source, f"maps {_show(src)} to {dst}, outside the "
                                                  f"model's ids 0..{label_nc - 1}")
        return self

    def table(self) -> dict[int, int]:
        """{source id: model id} (an id map only)."""
        if self.colors:
            raise InputError(self.source, "maps colours; CARLA tags and id maps need id sources")
        return dict(self.mapping)

    def apply(self, values: np.ndarray, name: str = "") -> np.ndarray:
        """Source ids [H,W] (any integer dtype) or colours uint8 [H,W,3] -> int32 model ids;
        InputError naming `name`, the first unmapped pixel (x, y) and its value."""
        values = np.asarray(values)
        is_rgb = values.ndim == 3 and values.shape[-1] in (3, 4)
        if is_rgb != self.colors:
            got, maps = ("a colour", "ids") if is_rgb else ("an id", "colours")
            raise InputError(name, f"{got} map, but the label map {self.source} maps {maps}")
        if is_rgb:
            v = values[..., :3].astype(np.int64)
            keys = (v[..., 0] << 16) | (v[..., 1] << 8) | v[..., 2]
        else:
            keys = values.astype(np.int64, copy=False)
        at = np.searchsorted(self._keys, keys)
        np.minimum(at, len(self._keys) - 1, out=at)
        ok = self._keys[at] == keys
        if not ok.all():
            y, x = (int(i) for i in np.unravel_index(int(np.argmin(ok)), ok.shape))
            bad = tuple(int(c) for c in values[y, x][:3]) if is_rgb else int(values[y, x])
            n = int(ok.size - np.count_nonzero(ok))
            raise InputError(name, f"pixel (x={x}, y={y}) has {'colour' if is_rgb else 'id'} "
                                   f"{bad}, which the label map {self.source} does not map "
                                   f"({n:,} such pixel{'s' if n > 1 else ''})")
        return self._vals[at]


def _show(src) -> str:
    return f"colour {src}" if isinstance(src, tuple) else f"id {src}"


def read_label_map(path: str | os.PathLike) -> LabelMap:
    """FILE -> LabelMap; InputError naming the file (and line or entry) for any fault."""
    path = Path(path)
    check_regular(path, "label map file")       # a folder, /dev/null, a FIFO: said so, never read
    try:
        text = read_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(path, "not a UTF-8 text file (expected JSON or `SOURCE ID` "
                               "lines)") from None
    pairs = []
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in ("{", "["):
        try:
            doc = json.loads(text)
        except RecursionError:
            raise InputError(path, "JSON nested too deeply") from None
        except ValueError as e:
            raise InputError(path, f"not valid JSON ({e})") from None
        if isinstance(doc, dict):
            items = [(f"entry {k!r}", k, v) for k, v in doc.items()]
        elif isinstance(doc, list):
            items = []
            for i, pair in enumerate(doc):
                if not isinstance(pair, list) or len(pair) != 2:
                    raise InputError(f"{path}: entry {i}", "expected a [source, model id] pair")
                items.append((f"entry {i}", pair[0], pair[1]))
        else:
            raise InputError(path, "expected a JSON object {source: model id} or a list of "
                                   "[source, model id] pairs")
        for where, k, v in items:
            at = f"{path}: {where}"
            pairs.append((at, _parse_source(k, at), _parse_target(v, at)))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            s = line.strip()
            if not s or s.startswith("# ") or s == "#":
                continue
            at = f"{path}:{n}"
            parts = s.replace("\t", " ").split()
            if len(parts) != 2:
                raise InputError(at, f"expected `SOURCE MODEL_ID`, got {s!r}")
            pairs.append((at, _parse_source(parts[0], at), _parse_target(parts[1], at)))
    if len(pairs) > MAX_ENTRIES:
        raise InputError(path, f"{len(pairs):,} entries; at most {MAX_ENTRIES:,}")
    mapping: dict = {}
    for at, src, dst in pairs:
        if src in mapping:
            raise InputError(at, f"{_show(src)} is mapped twice ({mapping[src]} and {dst})")
        if dst < 0:
            raise InputError(at, f"model id {dst} is negative")
        mapping[src] = dst
    return LabelMap(mapping, str(path))
