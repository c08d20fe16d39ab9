"""`p2phd-infer import-official`: NVIDIA pix2pixHD checkpoints -> model.pt."""
from __future__ import annotations

import click

from ..checkpoint import save_checkpoint
from ..config import MAX_LABEL_NC
from ..files import check_writable
from ..official import import_official


@click.command("import-official")
@click.option("--generator", "generator", required=True, type=click.Path(dir_okay=False),
              help="NVIDIA pix2pixHD latest_net_G.pth (a plain state dict).")
@click.option("--encoder", type=click.Path(dir_okay=False), help="latest_net_E.pth (feature encoder).")
@click.option("--features", type=click.Path(dir_okay=False),
              help="features_clustered_010.npy (per-class k-means feature dictionary).")
@click.option("--label-nc", default=35, show_default=True, type=click.IntRange(1, MAX_LABEL_NC),
              help="Number of label classes.")
@click.option("--no-instance", is_flag=True, help="The model was trained without instance maps.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output model.pt.")
def import_official_cmd(generator, encoder, features, label_nc, no_instance, out):
    """Convert official pix2pixHD checkpoints into a model.pt.

    The architecture (global or local, ngf, downsamplings, residual blocks, input channels and so
    feature channels) is read off the tensor shapes; stale norm buffers are dropped.
    """
    check_writable(out)
    ckpt = import_official(generator, encoder, features, label_nc, not no_instance)
    save_checkpoint(ckpt, out)
    c = ckpt.config
    n = sum(v.numel() for v in ckpt.generator.values())
    click.echo(f"{out}: {c.netG} generator, ngf {c.ngf}, {c.n_downsample_global} downsamplings, "
               f"{c.n_blocks_global}+{c.n_blocks_local if c.netG == 'local' else 0} blocks, "
               f"{c.input_nc} inputs (label_nc {c.label_nc}, edge {int(c.use_instance)}, "
               f"features {c.feat_num}), {n:,} parameters"
               + (", encoder" if ckpt.encoder is not None else "")
               + (f", features for {len(ckpt.features)} labels" if ckpt.features else ""))
