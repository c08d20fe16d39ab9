"""`p2phd-infer features`: the per-class style dictionary of a model with an encoder."""
from __future__ import annotations

import click

from ..checkpoint import load_checkpoint, save_checkpoint
from ..errors import InputError
from ..files import check_writable
from ..label_names import read_label_names
from ..official import write_official_features
from ..train.features import MIN_AREA_RATIO, build_dictionary


@click.command("features")
@click.option("--model", required=True, type=click.Path(dir_okay=False),
              help="model.pt with an encoder; the dictionary is stored back into it.")
@click.option("--data", required=True, type=click.Path(file_okay=False),
              help="Training data (pix2pixHD layout: train_label/ train_inst/ train_img/).")
@click.option("--clusters", default=10, show_default=True, type=click.IntRange(1),
              help="k-means centres per label (at most the number of kept instances).")
@click.option("--export-official", "export", type=click.Path(dir_okay=False),
              help="Also write the official features_clustered_010.npy format here.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--dataset-mode", default="pix2pixhd", show_default=True,
              type=click.Choice(["pix2pixhd", "cityscapes"]), help="Folder layout of --data.")
@click.option("--phase", default="train", show_default=True,
              help="Dataset split: <phase>_label/ etc., or the Cityscapes split.")
@click.option("--resize-or-crop", default=None,
              type=click.Choice(["none", "scale_width", "scale_width_and_crop", "crop"]),
              help="Load photos as the model was trained: 'scale_width' resizes to --load-size "
                   "[as recorded in the model, else the trainer's default: scale_width]. The "
                   "crop modes take whole photos (scale_width_and_crop as scale_width, crop as "
                   "none): a random crop would cut instances.")
@click.option("--load-size", default=None, type=click.IntRange(32),
              help="Width photos are scaled to with scale_width [as recorded in the model, else "
                   "the trainer's default: 1024].")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0),
              help="Photo decoding threads.")
@click.option("--label-names", type=click.Path(dir_okay=False),
              help="Also store label names (and colours) in MODEL: JSON {\"26\": \"car\"} or "
                   "{\"26\": {\"name\": \"car\", \"color\": [0, 0, 142]}}, or text lines "
                   "`26 car 0 0 142`; `run --style car=3` then finds them.")
def features_cmd(model, data, clusters, export, device, dataset_mode, phase, resize_or_crop,
                 load_size, workers, label_names):
    """Cluster per-instance encoder features into the per-class dictionary of MODEL.

    Every instance of every photo gets E's instance-mean feature and its area ratio
    pixels / (H*W // 32) under its label; instances with ratio <= 0.5 are dropped; k-means per
    label (k = min(N, --clusters), random_state 0) gives the centres that `run --style` picks
    from. The model file is rewritten atomically. Load the photos as in training (the same
    --resize-or-crop / --load-size as `train`): E then sees them at the resolution it was trained
    at (G1's, for a local model).
    """
    # Every output is checked before the slow work, and model.pt is rewritten last: a failure
    # leaves no half-done state (a new dictionary in the model but no official file).
    check_writable(model)
    if export:
        check_writable(export)
    names = None
    if label_names:       # a bad file fails now, not after the encoding pass
        names = read_label_names(label_names, load_checkpoint(model).config.label_nc)
    feats, seen, kept = build_dictionary(model, data, clusters, device, dataset_mode, phase,
                                         resize_or_crop, load_size, workers)
    ckpt = load_checkpoint(model)
    if not feats:
        raise InputError(data, f"no instance has an area ratio above {MIN_AREA_RATIO} "
                               f"({seen} instances seen); nothing to cluster")
    ckpt.features = feats
    if names is not None:
        ckpt.label_names = names[0]
        if names[1]:
            ckpt.extra["label_colors"] = names[1]
        else:
            ckpt.extra.pop("label_colors", None)
    if export:
        write_official_features(feats, export)
    save_checkpoint(ckpt, model)
    total = sum(v.shape[0] for v in feats.values())
    click.echo(f"{model}: {total} centres for {len(feats)} labels from {kept} of {seen} instances "
               f"(area ratio > {MIN_AREA_RATIO})" + (f"; official format: {export}" if export else ""))
