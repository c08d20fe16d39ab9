"""What every command shares: `fail`, the one place an error becomes an `error:` line."""
from __future__ import annotations

import click

from ..errors import Error


def fail(error: Error | str) -> "click.exceptions.Exit":
    """A one-line error, no traceback; exit status 2."""
    click.echo(f"error: {error}", err=True)
    return click.exceptions.Exit(2)
