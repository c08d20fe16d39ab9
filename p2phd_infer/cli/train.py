"""`p2phd-infer train` (also `python -m p2phd_infer.train`, which torchrun launches)."""
from __future__ import annotations

import os

import click
from click.core import ParameterSource

from ..errors import Error
from .base import Command, fail
from .options import click_options


def _train_options(command):
    """TrainOptions' click options, imported on use (the trainer's packages load only when
    training)."""
    from ..train.options import TrainOptions
    return click_options(TrainOptions)(command)


@click.command("train", cls=Command)
@_train_options
@click.pass_context
def train_cmd(ctx, **kw):
    """Train one pix2pixHD stage (multi-GPU: launch with torchrun).

    \b
    p2phd-infer train --dataroot DATA --name city_g --stage global --load-size 1024
    p2phd-infer train --dataroot DATA --name city_l --stage local \\
        --load-global checkpoints/city_g/model.pt --niter-fix-global 10 --load-size 2048

    Writes model.pt, trainer_state.pt, loss_log.csv and samples/ into CHECKPOINTS_DIR/NAME.
    """
    from ..train.trainer import TrainOptions, train
    # What was typed (not defaulted): a resumed run names the options its saved state overrides.
    given = {name for name in kw if ctx.get_parameter_source(name) in
             (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    try:
        path = train(TrainOptions(**kw), given)
    except Error as e:          # python -m p2phd_infer.train runs this command outside `main`
        raise fail(e) from None
    if os.environ.get("RANK", "0") == "0":      # torchrun: one line, from rank 0
        click.echo(f"wrote {path}")
