"""`p2phd-infer features`: the per-class style dictionary of a model with an encoder."""
from __future__ import annotations

import click

from ..checkpoint import load_checkpoint, save_checkpoint
from ..errors import InputError
from ..files import check_writable
from ..label_names import read_label_names
from ..official import write_official_features
from ..train.features import MIN_AREA_RATIO, build_dictionary
from ..train.options import FeaturesOptions
from .options import click_options


@click.command("features")
@click_options(FeaturesOptions)
def features_cmd(**options):
    """Cluster per-instance encoder features into the per-class dictionary of the --engine model.pt.

    Every instance of every photo gets E's instance-mean feature and its area ratio
    pixels / (H*W // 32) under its label; instances with ratio <= 0.5 are dropped; k-means per
    label (k = min(N, --clusters), random_state 0) gives the centres that `run --style` picks
    from. The model file is rewritten atomically. Load the photos as in training (the same
    --resize-or-crop / --load-size as `train`): E then sees them at the resolution it was trained
    at (G1's, for a local model).
    """
    o = FeaturesOptions(**options)
    model, data, export = o.engine, o.data, o.export_official
    # Every output is checked before the slow work, and model.pt is rewritten last: a failure
    # leaves no half-done state (a new dictionary in the model but no official file).
    check_writable(model)
    if export:
        check_writable(export)
    names = None
    if o.label_names:     # a bad file fails now, not after the encoding pass
        names = read_label_names(o.label_names, load_checkpoint(model).config.label_nc)
    feats, seen, kept = build_dictionary(model, data, o.clusters, o.device, o.dataset_mode,
                                         o.phase, o.resize_or_crop, o.load_size, o.workers)
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
