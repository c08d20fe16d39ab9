"""`p2phd-infer run`: synthesize an image for every label map in a folder, locally or on Ray.

The options are declared once, on RunOptions (plan.py), which both executors take
(local_run.run_local and ray_run.run_on_ray); the click options are generated from it.
"""
from __future__ import annotations

import sys

import click
from tqdm import tqdm

from ..errors import InputError
from ..files import check_writable
from ..locations import kind
from ..plan import RunOptions, RunSummary
from .options import click_options


@click.command("run")
@click_options(RunOptions)
@click.option("--fp16", is_flag=True, help="Shorthand for --precision fp16.")
def run_cmd(fp16, **options):
    """Synthesize OUT/<name>.png (or .jpg) for every label map in LABELS (a folder or one PNG).

    Instance maps pair by file name in --instances, by Cityscapes names
    (*_gtFine_labelIds.png / *_gtFine_instanceIds.png) in one folder, or by sibling folders
    (test_label/ / test_inst/, train_A/ / train_inst/, labels/ / instances/). Frames are decoded, batched, synthesized and encoded in
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
    opts = RunOptions(**options)
    if opts.summary_json:
        check_writable(opts.summary_json, streams=True)

    report = FaultReport()
    if opts.ray is not None:
        from ..ray_run import run_on_ray
        summary = run_on_ray(opts, on_failure=report)
        where = " on Ray"
    else:
        from ..local_run import run_local
        summary = run_local(opts, on_failure=report)
        where = ""
    report.close()
    finish(summary, opts, where)


class FaultReport:
    """Each frame's fault as one `error:` line above the progress bar; a fault every frame meets
    (an engine built for another size, a folder-wide problem) only the first time, and at the
    end how many more frames had it. --summary-json still lists every frame."""

    def __init__(self):
        self.seen: dict[str, int] = {}      # fault -> frames with it after the first

    def __call__(self, record: dict) -> None:
        fault = record["fault"]
        if fault in self.seen:
            self.seen[fault] += 1
            return
        self.seen[fault] = 0
        line = f"{record['file']}: {fault}" if record["file"] else fault
        tqdm.write(f"error: {line}", file=sys.stderr)

    def close(self) -> None:
        for fault, more in self.seen.items():
            if more:
                click.echo(f"error: {more} more frame{'s' if more > 1 else ''} failed the same "
                           f"way: {fault}", err=True)


def finish(summary: RunSummary, opts: RunOptions, where: str) -> None:
    """The closing line (and --summary-json) of a run; exit 1 if a frame failed. A run that
    found no frame is an error, with no summary line before it."""
    if opts.summary_json:
        summary.write_json(opts.summary_json)
    if summary.frames == 0:
        raise InputError(opts.labels or "", "no label maps (*.png) found")
    click.echo(summary.line(where), err=True)
    if summary.failed:
        raise click.exceptions.Exit(1)
