"""The `p2phd-infer` command line: one module per command, all registered here.

This package is the only place that turns an error into an `error:` line and an exit status:
every p2phd-infer error (errors.Error) carries the path and the fault, and `fail` (base.py)
prints them.
"""
from __future__ import annotations

import sys

import click

from ..errors import Error
from .base import fail, usage_error


class Group(click.Group):
    """Any p2phd-infer error that escapes a command, and any usage error click finds (a bad
    value, an unknown option), becomes its one `error:` line."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as e:
            raise fail(usage_error(e)) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Error as e:
            raise fail(e) from None
        except click.UsageError as e:
            raise fail(usage_error(e)) from None


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="p2phd-infer")
def main():
    """pix2pixHD: train, export, and synthesize images from semantic label maps."""


def _register():
    from .edit import edit_cmd
    from .evaluate import evaluate_cmd
    from .export import export_cmd
    from .features import features_cmd
    from .import_official import import_official_cmd
    from .make_scenes import make_scenes_cmd
    from .run import run_cmd
    from .serve import serve_cmd
    from .train import train_cmd
    for cmd in (run_cmd, import_official_cmd, features_cmd, train_cmd, make_scenes_cmd,
                export_cmd, serve_cmd, edit_cmd, evaluate_cmd):
        main.add_command(cmd)


_register()

if __name__ == "__main__":
    sys.exit(main())
