"""What every command shares: `fail`, the one place an error becomes an `error:` line."""
from __future__ import annotations

import click

from ..engines import MODES, PRECISIONS
from ..errors import Error


def fail(error: Error | str) -> "click.exceptions.Exit":
    """A one-line error, no traceback; exit status 2."""
    click.echo(f"error: {error}", err=True)
    return click.exceptions.Exit(2)


def engine_options(command):
    """--engine, --device, --precision and --mode: how every command that synthesizes (run,
    serve, edit) chooses and opens its engine, declared once."""
    options = [
        click.option("--engine", type=click.Path(dir_okay=False),
                     help="model.pt, .pt2, .onnx, .plan or .xml (OpenVINO); default: the bundled "
                          "demo model."),
        click.option("--device", default="auto", show_default=True,
                     help="cpu, cuda, cuda:N or auto."),
        click.option("--precision", type=click.Choice(PRECISIONS), default="fp32",
                     show_default=True, help="PyTorch engines: fp32, fp16 (CUDA) or bf16."),
        click.option("--mode", type=click.Choice(MODES), default="auto", show_default=True,
                     help="PyTorch engines: auto (the fast CUDA path, checked once against the "
                          "plain network, else plain), fast (CUDA only, no fallback) or plain."),
    ]
    for option in reversed(options):
        command = option(command)
    return command
