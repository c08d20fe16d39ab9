"""`p2phd-infer import-official`: NVIDIA pix2pixHD checkpoints -> model.pt."""
from __future__ import annotations

import click

from ..checkpoint import save_checkpoint
from ..config import MAX_LABEL_NC
from ..files import check_writable
from ..label_names import read_label_names
from ..official import import_official


@click.command("import-official")
@click.option("--generator", "generator", required=True, type=click.Path(dir_okay=False),
              help="NVIDIA pix2pixHD latest_net_G.pth (a plain state dict).")
@click.option("--encoder", type=click.Path(dir_okay=False), help="latest_net_E.pth (feature encoder).")
@click.option("--features", type=click.Path(dir_okay=False),
              help="features_clustered_010.npy (per-class k-means feature dictionary).")
@click.option("--label-nc", default=35, show_default=True, type=click.IntRange(0, MAX_LABEL_NC),
              help="Number of label classes (0: the model takes an RGB image, the official "
                   "label_nc 0).")
@click.option("--label-names", type=click.Path(dir_okay=False),
              help="Label names (and colours): JSON {\"26\": \"car\"} or text lines "
                   "`26 car 0 0 142` [Cityscapes names for label_nc 35].")
@click.option("--no-instance", is_flag=True, help="The model was trained without instance maps.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output model.pt.")
def import_official_cmd(generator, encoder, features, label_nc, label_names, no_instance, out):
    """Convert official pix2pixHD checkpoints into a model.pt.

    The architecture (global or local, ngf, downsamplings, residual blocks, input channels and so
    feature channels) is read off the tensor shapes; stale norm buffers are dropped.
    """
    check_writable(out)
    names = read_label_names(label_names, label_nc) if label_names else None
    ckpt = import_official(generator, encoder, features, label_nc, not no_instance)
    if names is not None:
        ckpt.label_names = names[0]
        if names[1]:
            ckpt.extra["label_colors"] = names[1]
    save_checkpoint(ckpt, out)
    c = ckpt.config
    n = sum(v.numel() for v in ckpt.generator.values())
    click.echo(f"{out}: {c.netG} generator, ngf {c.ngf}, {c.n_downsample_global} downsamplings, "
               f"{c.n_blocks_global}+{c.n_blocks_local if c.netG == 'local' else 0} blocks, "
               f"{c.input_nc} inputs (label_nc {c.label_nc}, edge {int(c.use_instance)}, "
               f"features {c.feat_num}), {n:,} parameters"
               + (", encoder" if ckpt.encoder is not None else "")
               + (f", features for {len(ckpt.features)} labels" if ckpt.features else ""))
