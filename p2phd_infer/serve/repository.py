"""A model repository laid out as Triton's: several models, each with numbered versions.

    DIR/<name>/config.pbtxt            optional: max_batch_size, dynamic_batching
                                       { max_queue_delay_microseconds, default_queue_policy
                                       { max_queue_size } }, default_model_filename
    DIR/<name>/<version>/model.pt      or model.onnx, model.xml (+ .bin), model.plan, model.pt2

A version is a folder named by a positive integer; every version found is served (Triton's
`version_policy: all`). Anything else in DIR (files, hidden or non-model folders) is ignored.
`scan()` re-reads the folder each time, so models added after start can be loaded (explicit model
control); `open(name)` opens one model's engines.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..engines import Engine
from ..errors import InputError, NotFound
from ..limits import MAX_BATCH, MAX_DELAY_US, MAX_QUEUE
from .dataplane import ModelSettings, ServedModel

MODEL_FILES = ("model.pt", "model.onnx", "model.xml", "model.plan", "model.engine", "model.pt2")
MAX_MODELS = 1000                 # folders read from DIR: a repository, not a file system
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class Repository:
    """root: the repository folder. opener(path) -> Engine opens one model file (the CLI's
    open_engine with its device, precision and mode). defaults: the batching of a model whose
    config.pbtxt says nothing else (the command's --max-batch-size, --max-delay-us, ...)."""

    def __init__(self, root: str | Path, opener: Callable[[Path], Engine],
                 defaults: ModelSettings):
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotFound(self.root, "no such model repository folder")
        self.opener = opener
        self.defaults = defaults

    def scan(self) -> dict[str, dict[str, Path]]:
        """name -> version -> model file, for every model folder with at least one version."""
        out: dict[str, dict[str, Path]] = {}
        try:
            entries = sorted(self.root.iterdir())[:MAX_MODELS]
        except OSError:
            return out
        for d in entries:
            if not NAME.fullmatch(d.name) or not d.is_dir():
                continue
            versions = {}
            filename = None
            try:
                filename = self.config(d.name).get("default_model_filename")
            except InputError:
                pass                     # open() reports it; the index still lists the model
            for v in sorted(d.iterdir())[:MAX_MODELS]:
                if not (v.name.isdigit() and int(v.name) > 0 and v.is_dir()):
                    continue
                names = (filename,) if isinstance(filename, str) and filename else MODEL_FILES
                found = next((v / n for n in names if (v / n).is_file()), None)
                if found is not None:
                    versions[str(int(v.name))] = found
            if versions:
                out[d.name] = versions
        return out

    def config(self, name: str) -> dict:
        """The model's config.pbtxt as nested dicts ({} without one)."""
        path = self.root / name / "config.pbtxt"
        if not path.is_file():
            return {}
        if path.stat().st_size > 1 << 20:
            raise InputError(path, "over 1 MiB: not a model configuration")
        try:
            return parse_pbtxt(path.read_text(encoding="utf-8"))
        except (InputError, UnicodeDecodeError) as e:
            raise InputError(path, f"cannot read the model configuration "
                                   f"({getattr(e, 'fault', e)})") from None

    def settings(self, name: str) -> ModelSettings:
        """The defaults, overridden by what the model's config.pbtxt says."""
        cfg = self.config(name)
        s = self.defaults
        path = self.root / name / "config.pbtxt"
        if "max_batch_size" in cfg:
            s = replace(s, max_batch_size=_positive(cfg["max_batch_size"], path,
                                                    "max_batch_size", MAX_BATCH))
        batching = cfg.get("dynamic_batching")
        if isinstance(batching, dict):
            if "max_queue_delay_microseconds" in batching:
                delay = _positive(batching["max_queue_delay_microseconds"], path,
                                  "max_queue_delay_microseconds", MAX_DELAY_US, low=0)
                s = replace(s, max_queue_delay_us=delay)
            policy = batching.get("default_queue_policy")
            if isinstance(policy, dict) and "max_queue_size" in policy:
                s = replace(s, max_queue=_positive(policy["max_queue_size"], path,
                                                   "max_queue_size", MAX_QUEUE))
        return s

    def open(self, name: str, max_pixels: int | None) -> list[ServedModel]:
        """Every version of `name`, opened (not started)."""
        versions = self.scan().get(name)
        if not versions:
            raise NotFound(self.root / name, "no such model in the repository (a folder with a "
                                             "numbered version folder holding "
                                             f"{' / '.join(MODEL_FILES)})")
        settings = self.settings(name)
        return [ServedModel(name, v, self.opener(path), settings, max_pixels=max_pixels,
                            source=path) for v, path in versions.items()]


def _positive(x, path: Path, field: str, top: int, low: int = 1) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or not low <= x <= top:
        raise InputError(path, f"{field} {x!r} is outside {low}..{top}")
    return x


# ---------------------------------------------------------------------------- protobuf text


_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|([A-Za-z_][A-Za-z0-9_.]*)|(-?[0-9][0-9.eE+-]*)|'
                    r'("(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\')|([{}\[\]:,;<>]))')
_MAX_DEPTH = 32


def parse_pbtxt(text: str) -> dict:
    """Protocol buffer text format (what Triton's config.pbtxt is written in) -> nested dicts;
    a repeated field becomes a list. Numbers become int or float, enum names stay strings. A
    small reader for model configurations: no extensions, no Any. InputError with the position
    of the first fault."""
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            rest = text[pos:].lstrip()
            if rest == "":
                break
            at = len(text) - len(rest)
            raise InputError("config.pbtxt", f"unexpected character {text[at]!r} at offset "
                                             f"{at} (an unclosed string?)")
        pos = m.end()
        comment, ident, number, string, punct = m.groups()
        if comment is not None:
            continue
        if ident is not None:
            tokens.append(("id", ident, m.start(2)))
        elif number is not None:
            tokens.append(("num", number, m.start(3)))
        elif string is not None:
            tokens.append(("str", string[1:-1].encode().decode("unicode_escape"), m.start(4)))
        else:
            tokens.append(("p", punct, m.start(5)))
    doc, i = _message(tokens, 0, None, 0)
    return doc


def _fault(tokens, i, what: str):
    where = f"offset {tokens[i][2]}" if i < len(tokens) else "the end"
    return InputError("config.pbtxt", f"{what} at {where}")


def _message(tokens, i, close: str | None, depth: int):
    if depth > _MAX_DEPTH:
        raise _fault(tokens, i, "messages nested too deeply")
    out: dict = {}
    while True:
        if i >= len(tokens):
            if close is None:
                return out, i
            raise _fault(tokens, i, f"missing {close!r}")
        kind, value, _ = tokens[i]
        if kind == "p" and value == close:
            return out, i + 1
        if kind == "p" and value in ",;":
            i += 1
            continue
        if kind != "id":
            raise _fault(tokens, i, f"expected a field name, not {value!r}")
        name = value
        i += 1
        colon = i < len(tokens) and tokens[i][:2] == ("p", ":")
        if colon:
            i += 1
        value, i = _value(tokens, i, depth)
        if name in out:
            if not isinstance(out[name], list) or not getattr(out[name], "_repeated", False):
                out[name] = _Repeated([out[name]])
            if isinstance(value, list) and not isinstance(value, _Repeated):
                out[name].extend(value)
            else:
                out[name].append(value)
        else:
            out[name] = value


class _Repeated(list):
    _repeated = True


def _value(tokens, i, depth: int):
    if i >= len(tokens):
        raise _fault(tokens, i, "missing value")
    kind, value, _ = tokens[i]
    if kind == "p" and value in "{<":
        return _message(tokens, i + 1, "}" if value == "{" else ">", depth + 1)
    if kind == "p" and value == "[":
        items = []
        i += 1
        while True:
            if i >= len(tokens):
                raise _fault(tokens, i, "missing ']'")
            if tokens[i][:2] == ("p", "]"):
                return items, i + 1
            if tokens[i][:2] == ("p", ","):
                i += 1
                continue
            item, i = _value(tokens, i, depth + 1)
            items.append(item)
    if kind == "num":
        try:
            return (int(value) if re.fullmatch(r"-?[0-9]+", value) else float(value)), i + 1
        except ValueError:
            raise _fault(tokens, i, f"bad number {value!r}") from None
    if kind == "str":
        return value, i + 1
    if kind == "id":
        return {"true": True, "false": False}.get(value, value), i + 1
    raise _fault(tokens, i, f"unexpected {value!r}")
