"""Custom label names (and colours) for datasets other than Cityscapes: `--label-names FILE`.

Two formats: JSON (a `.json` file, or one whose first non-blank character is '{' or '['), else
text:

  JSON  {"26": "car", "7": "road"}  or  {"26": {"name": "car", "color": [0, 0, 142]}, ...}
  text  one label a line: `ID NAME [R G B]`, e.g. `26 car 0 0 142`; a name may hold spaces
        (`1 ego vehicle`); blank lines and lines starting with '#' are skipped.

Checked here, each fault one line naming the file and the line (or JSON entry): ids are integers
within the model's labels (0..label_nc-1; any id >= 0 for a label_nc 0 model, whose instance ids
still carry labels for style control), each id once, names non-empty and unique, not all digits
(`--style 26=3` means id 26) and free of ',' and '=' (the separators of `--style`); colours are
three integers 0..255. Not every id needs a name.

The names go into model.pt's `label_names` {id: name}; colours into its `label_colors`
{id: [r, g, b]} (plain ints: the file stays loadable with torch.load(weights_only=True)).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .config import MAX_LABEL_NC
from .errors import InputError
from .locations import check_regular, read_bytes

LabelNames = dict[int, str]
LabelColors = dict[int, list[int]]


def read_label_names(path: str | os.PathLike, label_nc: int
                     ) -> tuple[LabelNames, LabelColors | None]:
    """FILE -> ({id: name}, {id: [r, g, b]} or None when no entry has a colour); InputError
    naming the file (and line) for any fault."""
    path = Path(path)
    check_regular(path, "label names file")       # /dev/null, a FIFO: said so, never read
    try:
        text = read_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(path, "not a UTF-8 text file (expected JSON or `ID NAME [R G B]` "
                               "lines)") from None
    is_json = path.suffix.lower() == ".json" or text.lstrip()[:1] in ("{", "[")
    entries = _read_json(path, text) if is_json else _read_text(path, text)
    names: LabelNames = {}
    colors: LabelColors = {}
    seen: dict[str, str] = {}
    hi = label_nc - 1 if label_nc > 0 else MAX_LABEL_NC - 1
    for where, raw_id, name, color in entries:
        at = f"{path}:{where}" if isinstance(where, int) else f"{path}: entry {where}"
        if not isinstance(raw_id, str) or not _is_int(raw_id.strip()):
            raise InputError(at, f"label id {raw_id!r} is not an integer")
        i = int(raw_id)
        if not 0 <= i <= hi:
            raise InputError(at, f"label id {i} is out of range (0..{hi}"
                                 + (f", the model's label_nc is {label_nc})" if label_nc > 0
                                    else ")"))
        if i in names:
            raise InputError(at, f"label id {i} is named twice ({names[i]!r} and {name!r})")
        if not isinstance(name, str) or not name.strip():
            raise InputError(at, f"label {i}: the name is empty")
        name = " ".join(name.split())
        if name.isdigit():
            raise InputError(at, f"label {i}: name {name!r} is all digits (it would read as "
                                 f"a label id in --style)")
        bad = next((c for c in ",=" if c in name), None)
        if bad is not None:
            raise InputError(at, f"label {i}: name {name!r} holds {bad!r} (a separator of "
                                 f"--style 'car=3,road=1')")
        if name in seen:
            raise InputError(at, f"name {name!r} is given to labels {seen[name]} and {i}; "
                                 f"names must be unique")
        seen[name] = str(i)
        names[i] = name
        if color is not None:
            colors[i] = list(check_color(at, i, color))
    if not names:
        raise InputError(path, "no labels in the file")
    return names, (colors or None)


def check_color(at: str, i: int, color, error=InputError) -> tuple[int, int, int]:
    """(r, g, b) of label `i`'s colour `color` as read from a file, or error(at, ...)."""
    if not isinstance(color, (list, tuple)) or len(color) != 3:
        raise error(at, f"label {i}: colour {color!r} is not three values R G B")
    if any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 255 for c in color):
        raise error(at, f"label {i}: colour {list(color)!r} must be three integers 0..255")
    return int(color[0]), int(color[1]), int(color[2])


def check_colors(colors, source: str, error=InputError) -> dict[int, tuple[int, int, int]]:
    """{id: (r, g, b)} from a mapping read from a file or a model ({id: [r, g, b]}; ids may be
    strings of digits, as JSON keys are), or error(source, ...) naming the entry at fault."""
    if not isinstance(colors, dict):
        raise error(source, f"label colours must be a mapping {{id: [r, g, b]}}, not "
                            f"{type(colors).__name__}")
    out = {}
    for k, rgb in colors.items():
        if isinstance(k, str) and k.strip().lstrip("+-").isdigit():
            k = int(k)
        if isinstance(k, bool) or not isinstance(k, int):
            raise error(source, f"label id {k!r} is not an integer")
        out[k] = check_color(source, k, rgb, error)
    return out


def _read_json(path: Path, text: str) -> list:
    def pairs(items):
        seen = set()
        for k, _ in items:
            if k in seen:
                raise InputError(path, f"entry {k!r} appears twice")
            seen.add(k)
        return dict(items)

    try:
        doc = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}", f"not valid JSON ({e.msg})") from None
    except RecursionError:
        raise InputError(path, "JSON nested too deeply (a label table is one level of "
                               "{\"id\": name} entries)") from None
    if not isinstance(doc, dict):
        raise InputError(path, "expected a JSON object {\"id\": \"name\", ...}")
    out = []
    for k, v in doc.items():
        where = json.dumps(k)
        if isinstance(v, str):
            out.append((where, k, v, None))
        elif isinstance(v, dict):
            unknown = set(v) - {"name", "color", "colour"}
            if unknown:
                raise InputError(f"{path}: entry {where}", f"unknown fields {sorted(unknown)} "
                                                           f"(name, color)")
            color = v.get("color", v.get("colour"))
            out.append((where, k, v.get("name"), color))
        else:
            raise InputError(f"{path}: entry {where}", f"expected a name or {{\"name\": ..., "
                                                       f"\"color\": [r, g, b]}}, got "
                                                       f"{type(v).__name__}")
    return out


def _read_text(path: Path, text: str) -> list:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split()
        if len(parts) < 2:
            raise InputError(f"{path}:{n}", f"expected `ID NAME [R G B]`, got {s!r}")
        raw_id, rest = parts[0], parts[1:]
        color = None
        # A colour is three integer tokens after at least one name token.
        if len(rest) >= 4 and all(_is_int(t) for t in rest[-3:]):
            color, rest = [int(t) for t in rest[-3:]], rest[:-3]
        elif len(rest) >= 2 and _is_int(rest[-1]) and sum(map(_is_int, rest)) > 1:
            raise InputError(f"{path}:{n}", f"a colour needs three values R G B: {s!r}")
        out.append((n, raw_id, " ".join(rest), color))
    return out


def _is_int(token: str) -> bool:
    return bool(re.fullmatch(r"[+-]?[0-9]+", token))
