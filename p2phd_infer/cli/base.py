"""What every command shares: `fail`, the one place an error becomes an `error:` line."""
from __future__ import annotations

import click

from ..errors import Error


def fail(error: Error | str) -> "click.exceptions.Exit":
    """A one-line error, no traceback; exit status 2."""
    click.echo(f"error: {error}", err=True)
    return click.exceptions.Exit(2)


def usage_error(e: "click.UsageError") -> str:
    """Click's usage error in the project's words: `OPTION: fault (see COMMAND --help)`."""
    where = f" (see {e.ctx.command_path} --help)" if e.ctx is not None else ""
    if isinstance(e, click.BadParameter) and e.param is not None:
        name = e.param.opts[0] if getattr(e.param, "opts", None) else e.param.name.upper()
        if isinstance(e, click.MissingParameter):
            return f"{name}: required{where}"
        return f"{name}: {e.message.rstrip('.')}{where}"
    message = e.format_message().rstrip(".")
    return message[:1].lower() + message[1:] + where


class Command(click.Command):
    """A command that also runs outside the `p2phd-infer` group (`python -m p2phd_infer.train`)
    and still reports click's usage errors as the project's one `error:` line."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as e:
            raise fail(usage_error(e)) from None


def engine_options(command):
    """--engine, --device, --precision and --mode: how every command that synthesizes (run,
    serve, edit, evaluate) chooses and opens its engine, declared once (plan.EngineOptions)."""
    from ..plan import EngineOptions
    from .options import click_options
    return click_options(EngineOptions)(command)
