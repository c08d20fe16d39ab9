"""The `p2phd-infer` command line. Each area keeps its commands in its own module; they are
registered at the bottom of this file."""
from __future__ import annotations

import sys

import click

from .checkpoint import CheckpointError, save_checkpoint


def fail(message: str) -> "click.exceptions.Exit":
    """A one-line error, no traceback."""
    click.echo(f"error: {message}", err=True)
    return click.exceptions.Exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="p2phd-infer")
def main():
    """pix2pixHD: train, export, and synthesize images from semantic label maps."""


@main.command("import-official")
@click.option("--generator", "generator", required=True, type=click.Path(dir_okay=False),
              help="NVIDIA pix2pixHD latest_net_G.pth (a plain state dict).")
@click.option("--encoder", type=click.Path(dir_okay=False), help="latest_net_E.pth (feature encoder).")
@click.option("--features", type=click.Path(dir_okay=False),
              help="features_clustered_010.npy (per-class k-means feature dictionary).")
@click.option("--label-nc", default=35, show_default=True, help="Number of label classes.")
@click.option("--no-instance", is_flag=True, help="The model was trained without instance maps.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output model.pt.")
def import_official_cmd(generator, encoder, features, label_nc, no_instance, out):
    """Convert official pix2pixHD checkpoints into a model.pt.

    The architecture (global or local, ngf, downsamplings, residual blocks, input channels and so
    feature channels) is read off the tensor shapes; stale norm buffers are dropped.
    """
    from .official import import_official
    try:
        ckpt = import_official(generator, encoder, features, label_nc, not no_instance)
    except CheckpointError as e:
        raise fail(str(e))
    save_checkpoint(ckpt, out)
    c = ckpt.config
    n = sum(v.numel() for v in ckpt.generator.values())
    click.echo(f"{out}: {c.netG} generator, ngf {c.ngf}, {c.n_downsample_global} downsamplings, "
               f"{c.n_blocks_global}+{c.n_blocks_local if c.netG == 'local' else 0} blocks, "
               f"{c.input_nc} inputs (label_nc {c.label_nc}, edge {int(c.use_instance)}, "
               f"features {c.feat_num}), {n:,} parameters"
               + (", encoder" if ckpt.encoder is not None else "")
               + (f", features for {len(ckpt.features)} labels" if ckpt.features else ""))


def _register():
    from .run_command import run_cmd
    main.add_command(run_cmd)
    from .train.cli import make_scenes_cmd, train_cmd
    main.add_command(train_cmd)
    main.add_command(make_scenes_cmd)
    from .train.features import features_cmd
    main.add_command(features_cmd)
    from .export.commands import export_cmd
    main.add_command(export_cmd)


_register()

if __name__ == "__main__":
    sys.exit(main())
