"""Click options generated from an options dataclass's declarations (p2phd_infer/options.py):
help, bounds, choices, defaults and deprecated names are written once, on the dataclass field.

    @click.command("run")
    @click_options(RunOptions)
    def run_cmd(**options):
        opts = RunOptions(**options)

A renamed option keeps its old flag as a hidden alias: it still works, and says once (per
process) which name to use instead.
"""
from __future__ import annotations

import functools
from dataclasses import MISSING

import click
from click.core import ParameterSource

from ..errors import OptionError
from ..options import flag_of, settings

_warned: set[str] = set()


def _click_type(s, kind):
    if s.choices is not None:
        return click.Choice([str(c) for c in s.choices])
    if s.path is not None:
        return click.Path(dir_okay=s.path != "file", file_okay=s.path != "dir")
    if s.bounds is not None and kind in (int, float):
        lo, hi = s.bounds
        rng = click.IntRange if kind is int else click.FloatRange
        return rng(lo, hi, min_open="lo" in s.open, max_open="hi" in s.open)
    return {int: click.INT, float: click.FLOAT, str: click.STRING, tuple: click.STRING}.get(
        kind, click.STRING)


def _decls(f, s, kind, default):
    """(param_decls, attrs) of one field's click option."""
    name = flag_of(f)
    attrs = dict(help=s.help, type=_click_type(s, kind), required=s.required)
    if kind is bool:
        attrs.pop("type")
        if "/" in name:            # --check/--no-check: both spellings, the default shown
            attrs.update(default=default, show_default=default is not None)
        elif default is True:      # --no-progress sets progress=False
            attrs.update(flag_value=False, default=True)
        else:
            attrs.update(is_flag=True, default=False)
    else:
        if s.required:
            pass                   # the dataclass's default serves Python callers only
        elif default is not MISSING and default is not None:
            attrs.update(default=default, show_default=True)
        elif s.shown_default:
            attrs.update(default=None, show_default=s.shown_default)
    if s.multiple:
        attrs.update(multiple=True, default=())
        attrs.pop("show_default", None)
    if s.envvar:
        attrs.update(envvar=s.envvar, show_envvar=True)
    if s.metavar:
        attrs["metavar"] = s.metavar
    attrs.update(s.click or {})
    return [name, *s.also, f.name], attrs


def click_options(cls, *, skip: tuple = (), only: tuple | None = None):
    """A decorator adding the click options (and arguments) of every declared field of `cls`,
    in declaration order, plus a hidden option for each deprecated name."""
    chosen = [(f, s, kind) for f, s, kind in settings(cls)
              if s.cli and f.name not in skip and (only is None or f.name in only)]

    def decorate(command):
        aliases = {}              # hidden parameter name -> (old flag, new flag, field name)
        for f, s, kind in chosen:
            for old in s.renamed_from:
                aliases["_old_" + old.lstrip("-").replace("-", "_")] = (old, flag_of(f), f.name)

        @functools.wraps(command)
        def wrapper(*args, **kw):
            ctx = click.get_current_context()
            for hidden, (old, new, name) in aliases.items():
                value = kw.pop(hidden, None)
                if value is None or value == ():
                    continue
                if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
                    raise OptionError(old, f"is the old name of {new}; give one of them")
                if old not in _warned:
                    _warned.add(old)
                    click.echo(f"warning: {old} is deprecated; use {new}", err=True)
                kw[name] = value
            return command(*args, **kw)

        params = []
        for f, s, kind in chosen:
            default = f.default
            if s.argument:
                params.append(click.argument(f.name, required=s.required,
                                             type=_click_type(s, kind)))
                continue
            decls, attrs = _decls(f, s, kind, default)
            params.append(click.option(*decls, **attrs))
            for old in s.renamed_from:
                old_attrs = {k: v for k, v in attrs.items()
                             if k not in ("default", "show_default", "required", "help")}
                if kind is bool:
                    old_attrs.update(default=None)
                params.append(click.option(old, "_old_" + old.lstrip("-").replace("-", "_"),
                                           hidden=True, **old_attrs))
        for p in reversed(params):
            wrapper = p(wrapper)
        return wrapper

    return decorate
