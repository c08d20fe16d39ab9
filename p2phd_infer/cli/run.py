"""`p2phd-infer run`: synthesize an image for every label map in a folder, locally or on Ray.

The options are declared here once and become a RunOptions (plan.py), which both executors
take: local_run.run_local and ray_run.run_on_ray.
"""
from __future__ import annotations

import sys

import click
from tqdm import tqdm

from ..engines import BACKENDS
from ..errors import InputError, OptionError
from ..files import check_writable
from ..locations import kind
from ..plan import DEFAULT_MAX_PIXELS, LABEL_FORMATS, OUTPUT_FORMATS, RunOptions, RunSummary
from .base import engine_options


@click.command("run")
@click.argument("labels", required=False, type=click.Path())
@click.option("--instances", type=click.Path(file_okay=False),
              help="Folder of instance maps with the same file names as the label maps, or "
                   "'auto': derive each frame's instance map from its label map (connected "
                   "regions of each thing class, numbered class*1000+k).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@engine_options
@click.option("--fp16", is_flag=True, help="Shorthand for --precision fp16.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="What runs a model.pt: auto (on a CPU OpenVINO, converted once per frame size "
                   "and cached, unless --mode plain/--compile/fp16; else PyTorch), torch, or "
                   "openvino (also runs an .onnx on OpenVINO).")
@click.option("--compile", is_flag=True,
              help="torch.compile the PyTorch engine (the first batch of each size is slow).")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(1, 4096),
              help="Most frames per engine call (same-size frames batch together).")
@click.option("--max-delay-us", default=2000, show_default=True,
              type=click.IntRange(0, 60_000_000),
              help="How long a batch waits for more frames of its size, in microseconds.")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Decode threads and encode threads, each  [default: CPU count, 2 to 8].")
@click.option("--format", type=click.Choice(OUTPUT_FORMATS), default="png",
              show_default=True, help="Output format (PNG lossless, through fpng when installed; "
              "mp4: one H.264 video per folder of frames, in name order).")
@click.option("--fps", default=30.0, show_default=True,
              type=click.FloatRange(0, 1000, min_open=True),
              help="--format mp4: frames per second.")
@click.option("--quality", default=95, show_default=True, type=click.IntRange(1, 100),
              help="JPEG quality.")
@click.option("--overwrite", is_flag=True, help="Rewrite outputs that already exist.")
@click.option("--style", default=None,
              help="Features models: fixed cluster per label, e.g. 'car=3,road=1' or '*=0'.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Features models: seed of the per-instance cluster choice.")
@click.option("--style-image", type=click.Path(dir_okay=False),
              help="Features models: a photo whose instances give the styles (needs the encoder).")
@click.option("--style-instances", type=click.Path(dir_okay=False),
              help="Instance map of --style-image.")
@click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True,
              type=click.IntRange(1, 2**34),
              help="Refuse frames with more pixels than this (a frame's one-hot grows with it).")
@click.option("--label-format", type=click.Choice(LABEL_FORMATS), default="auto",
              show_default=True,
              help="Label maps: ids (single-channel PNGs of class ids), color (RGB PNGs, e.g. "
                   "Cityscapes *_color.png or a simulator's semantic camera, mapped to ids by "
                   "the palette), auto (by the PNG: one channel ids, RGB/RGBA colours) or carla "
                   "(CARLA 0.9.14+ segmentation cameras: tag in red; instance camera PNGs as "
                   "--instances).")
@click.option("--label-map", type=click.Path(dir_okay=False),
              help="Source ids (or colours) -> the model's ids: JSON {\"14\": 26} or "
                   "`SOURCE ID` lines; with --label-format carla it replaces the built-in table.")
@click.option("--palette", type=click.Path(dir_okay=False),
              help="Colours -> ids for colour maps: JSON or `ID NAME R G B` lines (the "
                   "--label-names formats) [default: the model's label colours, else "
                   "Cityscapes'].")
@click.option("--save-comparison", is_flag=True,
              help="Also write OUT/compare/<name>.png: the label map in colour | the output "
                   "[| the photo].")
@click.option("--photos", type=click.Path(file_okay=False),
              help="--save-comparison: folder of photos paired with the label maps by name.")
@click.option("--summary-json", type=click.Path(dir_okay=False),
              help="Also write the summary (counts, frames/s, each failure) as JSON here.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--ray", is_flag=False, flag_value="", default=None,
              metavar="[ADDRESS]", help="Run on a Ray cluster: the running one or a new local "
              "one, or ADDRESS ('auto', 'ray://HEAD:10001'). LABELS and --out may be URIs "
              "(s3://...). Put --ray after LABELS, or write --ray=ADDRESS.")
@click.option("--num-workers", type=click.IntRange(1), default=None,
              help="--ray: synthesis actors, one engine each [one per GPU, or per CPU].")
@click.option("--gpus-per-worker", type=click.FloatRange(0), default=None,
              help="--ray: GPUs per actor, fractions share a GPU [1 if the cluster has GPUs].")
def run_cmd(fp16, no_progress, **options):
    """Synthesize OUT/<name>.png (or .jpg) for every label map in LABELS (a folder or one PNG).

    Instance maps pair by file name in --instances, by Cityscapes names
    (*_gtFine_labelIds.png / *_gtFine_instanceIds.png) in one folder, or by pix2pixHD sibling
    folders (test_label/ / test_inst/). Frames are decoded, batched, synthesized and encoded in
    overlapping stages. A bad file is reported on one line and skipped; the others are still
    written, and the exit status is non-zero at the end. Existing outputs are skipped unless
    --overwrite. With no LABELS, the bundled sample label maps are used.
    """
    if fp16:
        options["precision"] = "fp16"
    if options["labels"] is None and options["ray"] and kind(options["ray"]) != "missing":
        # `run --ray LABELS`: click took the folder for the optional address; a Ray address is
        # never an existing path.
        options["labels"], options["ray"] = options["ray"], ""
    opts = RunOptions(progress=not no_progress, **options)
    if opts.summary_json:
        check_writable(opts.summary_json, streams=True)
    if opts.format == "mp4" and opts.ray is not None:
        raise OptionError("--format", "mp4 is encoded by the local executor; drop --ray")
    if opts.ray is not None:
        for name, given in (("--label-format", opts.label_format == "color"),
                            ("--palette", opts.palette is not None),
                            ("--save-comparison", opts.save_comparison)):
            if given:
                raise OptionError(name, "runs on the local executor only (for now); drop --ray")
        for name, given in (("--label-format", opts.label_format == "carla"),
                            ("--label-map", opts.label_map is not None),
                            ("--instances", opts.instances == "auto")):
            if given:
                raise OptionError(name, "runs on the local executor only (for now); drop --ray")

    def report(record: dict) -> None:
        line = f"{record['file']}: {record['fault']}" if record["file"] else record["fault"]
        tqdm.write(f"error: {line}", file=sys.stderr)     # above the progress bar

    if opts.ray is not None:
        from ..ray_run import run_on_ray
        summary = run_on_ray(opts, on_failure=report)
        where = " on Ray"
    else:
        from ..local_run import run_local
        summary = run_local(opts, on_failure=report)
        where = ""
    finish(summary, opts, where)


def finish(summary: RunSummary, opts: RunOptions, where: str) -> None:
    """The closing line (and --summary-json) of a run; exit 1 if a frame failed."""
    click.echo(summary.line(where), err=True)
    if opts.summary_json:
        summary.write_json(opts.summary_json)
    if summary.frames == 0:
        raise InputError(opts.labels or "", "no label maps (*.png) found")
    if summary.failed:
        raise click.exceptions.Exit(1)
