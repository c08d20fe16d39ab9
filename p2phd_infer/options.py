"""Options declared once: a dataclass field carries its help, bounds, choices and default, and
from it come both the check of a built options object and the command line's click options
(p2phd_infer/cli/options.py), as vLLM derives its CLI from its config dataclasses.

    @dataclass
    class RunOptions:
        batch_size: int = setting(1, "Most frames per engine call.", bounds=(1, MAX_BATCH))

        def __post_init__(self):
            check(self)           # every field, by its declaration, before any work

A field without `setting` is an ordinary field: neither checked nor on the command line.
"""
from __future__ import annotations

import math
import os
import types
import typing
from dataclasses import MISSING, dataclass, field, fields

from .errors import OptionError


@dataclass(frozen=True)
class Setting:
    help: str
    bounds: tuple | None = None          # (lo, hi), inclusive; None on a side: unbounded
    open: str = ""                      # "lo", "hi" or "lohi": that end excluded
    choices: tuple | None = None
    path: str | None = None              # "file", "dir" or "any": a filesystem location
    flag: str | None = None              # the option's name; default: --field-name
    shown_default: str | None = None     # the help's [default: ...] where the value is None
    renamed_from: tuple = ()             # deprecated old flags, each still accepted with a warning
    also: tuple = ()                     # other spellings, as good as the flag (--no-ganFeat-loss)
    argument: bool = False               # a positional argument, not an option
    multiple: bool = False               # repeatable; the value is a tuple
    required: bool = False
    envvar: str | None = None
    metavar: str | None = None
    cli: bool = True                     # False: checked, but not a command-line option
    click: dict | None = None            # anything else click.option takes (flag_value, ...)
    # A rule beyond bounds and choices, called with the value (after those pass); it raises
    # OptionError. So the rule a later step applies is applied when the options are built.
    check: typing.Callable | None = None


def setting(default=MISSING, help: str = "", **kw):
    """A dataclass field declared with its command-line help and checks (see Setting)."""
    meta = {"setting": Setting(help=help, **kw)}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(f) -> str:
    s = f.metadata.get("setting")
    if s is not None and s.flag:
        return s.flag
    return "--" + f.name.replace("_", "-").lower()


def settings(cls) -> list:
    """(field, Setting, type) of every declared option of an options dataclass, in order."""
    hints = _hints(cls)
    return [(f, f.metadata["setting"], hints[f.name]) for f in fields(cls)
            if "setting" in f.metadata]


_HINTS: dict = {}


def _hints(cls) -> dict:
    if cls not in _HINTS:
        _HINTS[cls] = {n: _base_type(t) for n, t in typing.get_type_hints(cls).items()}
    return _HINTS[cls]


def _base_type(t):
    """int | None -> int; tuple[str, ...] -> tuple."""
    args = [a for a in typing.get_args(t) if a is not type(None)]
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType) and args:
        return _base_type(args[0])
    return origin or t


def describe_bounds(s: Setting) -> str:
    lo, hi = s.bounds
    if not s.open:
        return f"{lo}..{hi}" if hi is not None else f">= {lo}"
    left = "(" if "lo" in s.open else "["
    right = ")" if "hi" in s.open else "]"
    return f"{left}{lo}, {hi}{right}"


def check(obj) -> None:
    """Every declared option of `obj` against its type, bounds and choices; the first fault is an
    OptionError naming the option. A None is accepted where the declared default is None."""
    for f, s, kind in settings(type(obj)):
        value = getattr(obj, f.name)
        name = flag_of(f)
        if value is None and f.default is None:
            continue
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
                math.isfinite(value)
        elif kind is str:
            ok = isinstance(value, str) or (s.path is not None and isinstance(value, os.PathLike))
        elif kind is tuple:
            ok = isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value)
        else:
            ok = True
        if not ok:
            what = {bool: "true or false", int: "an integer", float: "a finite number",
                    str: "a string", tuple: "a list of strings"}.get(kind, str(kind))
            raise OptionError(name, f"{value!r}: must be {what}")
        if s.choices is not None and value not in s.choices:
            raise OptionError(name, f"{value!r}: one of {', '.join(map(str, s.choices))}")
        if s.bounds is not None:
            lo, hi = s.bounds
            below = lo is not None and (value <= lo if "lo" in s.open else value < lo)
            above = hi is not None and (value >= hi if "hi" in s.open else value > hi)
            if below or above:
                raise OptionError(name, f"{value!r} is outside {describe_bounds(s)}")
        if s.check is not None:
            s.check(value)
