"""`p2phd-infer make-scenes`: synthetic street scenes in the pix2pixHD layout."""
from __future__ import annotations

import click

from ..errors import OptionError
from ..train.scenes import make_scenes, parse_size


@click.command("make-scenes")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Dataset folder to write.")
@click.option("--count", default=100, show_default=True, type=click.IntRange(1), help="Number of scenes.")
@click.option("--size", default="512x256", show_default=True, help="WxH of every scene.")
@click.option("--seed", default=0, show_default=True, help="Scene i depends only on (seed, i).")
@click.option("--phase", default="train", show_default=True,
              help="Folder prefix: <phase>_label, <phase>_inst, <phase>_img.")
def make_scenes_cmd(out, count, size, seed, phase):
    """Write synthetic street scenes in the pix2pixHD layout.

    Cityscapes label ids (road, sidewalk, building, vegetation, sky, car, person), 16-bit instance
    maps (class*1000+k for cars and persons) and photos rendered from them with per-class texture
    and shading and a colour per car and person.
    """
    try:
        w, h = parse_size(size)
    except ValueError as e:
        raise OptionError("--size", str(e)) from None
    make_scenes(out, count, w, h, seed, phase, progress=True)
    click.echo(f"{out}: {count} scenes at {w}x{h} (seed {seed})")
