"""`p2phd-infer train` (also `python -m p2phd_infer.train`, which torchrun launches)."""
from __future__ import annotations

import os

import click
from click.core import ParameterSource

from ..errors import Error
from .base import fail


def _bounded(name: str) -> click.IntRange:
    """The integer range of a TrainOptions field (the one table of bounds, in train/trainer.py),
    so `--batch-size 0` is refused by click before anything runs."""
    from ..train.trainer import INT_BOUNDS
    lo, hi = INT_BOUNDS[name]
    return click.IntRange(lo, hi)


@click.command("train")
@click.option("--dataroot", required=True, type=click.Path(), help="Dataset folder.")
@click.option("--dataset-mode", type=click.Choice(["pix2pixhd", "cityscapes"]), default="pix2pixhd",
              show_default=True, help="Folder layout of --dataroot.")
@click.option("--phase", default="train", show_default=True,
              help="pix2pixhd: folder prefix (train_label...); cityscapes: split.")
@click.option("--name", default="p2phd", show_default=True, help="Run name (folder under --checkpoints-dir).")
@click.option("--checkpoints-dir", default="checkpoints", show_default=True, type=click.Path())
@click.option("--stage", type=click.Choice(["global", "local"]), default="global", show_default=True,
              help="global: G1 at low resolution; local: the local enhancer on a loaded G1.")
@click.option("--load-global", type=click.Path(dir_okay=False),
              help="Stage local: the global stage's model.pt.")
@click.option("--label-nc", type=_bounded("label_nc"),
              help="Label classes [35; local: from the loaded G1]. 0: the input is an RGB image "
                   "(folders PHASE_A/ inputs, PHASE_B/ photos, as the official code).")
@click.option("--label-names", type=click.Path(dir_okay=False),
              help="Label names (and colours) for model.pt: JSON {\"26\": \"car\"} or "
                   "{\"26\": {\"name\": \"car\", \"color\": [0, 0, 142]}}, or text lines "
                   "`26 car 0 0 142` [Cityscapes names for label_nc 35; local: G1's].")
@click.option("--no-instance", is_flag=True, help="No instance edge map input.")
@click.option("--instance-feat", is_flag=True, help="Train the encoder E for per-instance features.")
@click.option("--feat-num", type=_bounded("feat_num"), help="Encoder feature channels [3].")
@click.option("--ngf", type=_bounded("ngf"), help="Generator filters: G1's (global) [64], the "
              "enhancer's (local) [G1's / 2**n_local_enhancers].")
@click.option("--n-downsample-global", type=_bounded("n_downsample_global"),
              help="G1 downsamplings [4].")
@click.option("--n-blocks-global", type=_bounded("n_blocks_global"), help="G1 residual blocks [9].")
@click.option("--n-local-enhancers", default=1, show_default=True,
              type=_bounded("n_local_enhancers"))
@click.option("--n-blocks-local", default=3, show_default=True, type=_bounded("n_blocks_local"))
@click.option("--nef", type=_bounded("nef"), help="Encoder filters [16].")
@click.option("--n-downsample-e", "n_downsample_E", type=_bounded("n_downsample_E"),
              help="Encoder downsamplings [4].")
@click.option("--ndf", default=64, show_default=True, type=_bounded("ndf"),
              help="Discriminator filters.")
@click.option("--n-layers-d", default=3, show_default=True, type=_bounded("n_layers_d"),
              help="Discriminator layers.")
@click.option("--num-d", default=2, show_default=True, type=_bounded("num_d"),
              help="Discriminator scales.")
@click.option("--load-d", type=click.Path(dir_okay=False),
              help="Start D from an official latest_net_D.pth (fine-tuning); its shapes must fit "
                   "--ndf/--n-layers-d/--num-d and the D inputs.")
@click.option("--no-ganFeat-loss", "--no-ganfeat-loss", "no_ganfeat_loss", is_flag=True,
              help="No discriminator feature-matching loss (D returns only its scores).")
@click.option("--no-lsgan", is_flag=True,
              help="Vanilla GAN loss (binary cross-entropy on D's scores) instead of least "
                   "squares.")
@click.option("--pool-size", default=0, show_default=True, type=_bounded("pool_size"),
              help="Image pool of earlier fakes shown to D (0: off, the official default).")
@click.option("--niter", default=100, show_default=True, type=_bounded("niter"),
              help="Epochs at the initial learning rate.")
@click.option("--niter-decay", default=100, show_default=True, type=_bounded("niter_decay"),
              help="Epochs of linear decay to 0.")
@click.option("--niter-fix-global", default=0, show_default=True,
              type=_bounded("niter_fix_global"),
              help="Stage local: epochs training the enhancer alone with G1 frozen.")
@click.option("--lr", default=2e-4, show_default=True,
              type=click.FloatRange(0, 1, min_open=True))
@click.option("--batch-size", default=1, show_default=True, type=_bounded("batch_size"),
              help="Per process.")
@click.option("--resize-or-crop", default="scale_width", show_default=True,
              type=click.Choice(["none", "scale_width", "scale_width_and_crop", "crop"]),
              help="scale_width: width to --load-size; the crop modes then (or without a "
                   "resize) take a random --fine-size square, the same for label, instances and "
                   "photo.")
@click.option("--load-size", default=1024, show_default=True, type=_bounded("load_size"),
              help="Width for scale_width and scale_width_and_crop.")
@click.option("--fine-size", default=512, show_default=True, type=_bounded("fine_size"),
              help="Crop modes: side of the random square crop (a multiple of G's stride; a "
                   "shorter image side is kept whole).")
@click.option("--no-flip", is_flag=True, help="No random horizontal flips.")
@click.option("--num-workers", default=2, show_default=True, type=_bounded("num_workers"),
              help="DataLoader workers (and threads of the dataset check).")
@click.option("--lambda-feat", default=10.0, show_default=True, type=click.FloatRange(0, 1e6),
              help="Weight of feature matching and VGG losses.")
@click.option("--no-vgg", is_flag=True, help="Train without the VGG19 perceptual loss.")
@click.option("--vgg-weights", type=click.Path(dir_okay=False),
              help="torchvision vgg19-dcbb9e9d.pth [torch hub cache]; never downloaded.")
@click.option("--max-steps", type=_bounded("max_steps"),
              help="Stop after this many steps (the schedule is unchanged).")
@click.option("--save-every", default=1000, show_default=True, type=_bounded("save_every"),
              help="Checkpoint every N steps.")
@click.option("--resume", is_flag=True, help="Continue the run in --checkpoints-dir/--name "
              "exactly, with its saved options (all but --max-steps, --save-every, --device, "
              "--num-workers, --dataroot and --no-progress).")
@click.option("--seed", default=0, show_default=True, type=_bounded("seed"))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
              show_default=True, help="auto: bf16 autocast on CUDA, fp32 on the CPU.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.pass_context
def train_cmd(ctx, no_progress, **kw):
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
        path = train(TrainOptions(progress=not no_progress, **kw), given)
    except Error as e:          # python -m p2phd_infer.train runs this command outside `main`
        raise fail(e) from None
    if os.environ.get("RANK", "0") == "0":      # torchrun: one line, from rank 0
        click.echo(f"wrote {path}")
