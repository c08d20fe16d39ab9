"""`p2phd-infer run`: synthesize an image for every label map in a folder, through the Runtime."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
from tqdm import tqdm

from .checkpoint import CheckpointError
from .engines import EngineError, open_engine
from .frames import Frame, discover_frames
from .image_io import InputError, write_atomic
from .runtime import Runtime, default_workers


@dataclass
class RunSummary:
    frames: int = 0               # frames found
    written: int = 0
    skipped: int = 0              # outputs that already existed
    failed: int = 0
    seconds: float = 0.0          # synthesis wall time, engine load excluded
    frames_per_second: float = 0.0
    failures: list[dict] = field(default_factory=list)   # {"file": ..., "fault": ...}
    settings: dict = field(default_factory=dict)


@click.command("run")
@click.argument("labels", required=False, type=click.Path())
@click.option("--engine", "engine_path", type=click.Path(dir_okay=False),
              help="model.pt, .pt2, .onnx or .plan; default: the bundled demo model.")
@click.option("--instances", type=click.Path(file_okay=False),
              help="Folder of instance maps with the same file names as the label maps.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(1),
              help="Most frames per engine call (same-size frames batch together).")
@click.option("--max-delay-us", default=2000, show_default=True, type=click.IntRange(0),
              help="How long a batch waits for more frames of its size, in microseconds.")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Decode threads and encode threads, each  [default: CPU count, 2 to 8].")
@click.option("--format", "fmt", type=click.Choice(["png", "jpg"]), default="png",
              show_default=True, help="Output format (PNG lossless, through fpng when installed).")
@click.option("--quality", default=95, show_default=True, type=click.IntRange(1, 100),
              help="JPEG quality.")
@click.option("--fp16", is_flag=True, help="Half precision (PyTorch engines).")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the PyTorch engine (the first batch of each size is slow).")
@click.option("--overwrite", is_flag=True, help="Rewrite outputs that already exist.")
@click.option("--style", default=None,
              help="Features models: fixed cluster per label, e.g. 'car=3,road=1' or '*=0'.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Features models: seed of the per-instance cluster choice.")
@click.option("--style-image", type=click.Path(dir_okay=False),
              help="Features models: a photo whose instances give the styles (needs the encoder).")
@click.option("--style-instances", type=click.Path(dir_okay=False),
              help="Instance map of --style-image.")
@click.option("--summary-json", type=click.Path(dir_okay=False),
              help="Also write the summary (counts, frames/s, each failure) as JSON here.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None,
              metavar="[ADDRESS]", help="Run on a Ray cluster: the running one or a new local "
              "one, or ADDRESS ('auto', 'ray://HEAD:10001'). LABELS and --out may be URIs "
              "(s3://...). Put --ray after LABELS, or write --ray=ADDRESS.")
@click.option("--num-workers", type=click.IntRange(1), default=None,
              help="--ray: synthesis actors, one engine each [one per GPU, or per CPU].")
@click.option("--gpus-per-worker", type=click.FloatRange(0), default=None,
              help="--ray: GPUs per actor, fractions share a GPU [1 if the cluster has GPUs].")
def run_cmd(labels, engine_path, instances, out, device, batch_size, max_delay_us, workers, fmt,
            quality, fp16, compile_, overwrite, style, seed, style_image, style_instances,
            summary_json, ray_address, num_workers, gpus_per_worker):
    """Synthesize OUT/<name>.png (or .jpg) for every label map in LABELS (a folder or one PNG).

    Instance maps pair by file name in --instances, by Cityscapes names
    (*_gtFine_labelIds.png / *_gtFine_instanceIds.png) in one folder, or by pix2pixHD sibling
    folders (test_label/ / test_inst/). Frames are decoded, batched, synthesized and encoded in
    overlapping stages. A bad file is reported on one line and skipped; the others are still
    written, and the exit status is non-zero at the end. Existing outputs are skipped unless
    --overwrite. With no LABELS, the bundled sample label maps are used.
    """
    if ray_address is not None:      # the same job spread over a Ray cluster: ray_run.py
        from .ray_run import run_on_ray_cli
        return run_on_ray_cli(**click.get_current_context().params)
    from .api import make_style
    from .cli import fail
    try:
        engine = open_engine(engine_path, device, fp16=fp16, compile=compile_)
        frames = discover_frames(labels or _sample_labels(), instances if labels else
                                 instances or _sample_labels().parent / "instances")
        style_control = make_style(engine, style, seed, style_image, style_instances)
    except (EngineError, CheckpointError, InputError, ValueError) as e:
        raise fail(str(e))
    out = Path(out)
    todo = [f for f in frames if overwrite or not (out / f"{f.name}.{fmt}").exists()]
    summary = synthesize_frames(engine, todo, out, batch_size, max_delay_us=max_delay_us,
                                workers=workers, fmt=fmt, quality=quality, style=style_control)
    summary.frames = len(frames)
    summary.skipped = len(frames) - len(todo)
    summary.settings.update(engine=str(engine_path or "demo"), device=str(engine.device),
                            precision=engine.info.precision, compile=compile_, seed=seed,
                            style=style)
    report_run(summary, summary_json)


def report_run(summary, summary_json: str | None, where: str = "") -> None:
    """The closing line (and --summary-json) of a run, local or on Ray; exit 1 if a frame failed."""
    click.echo(f"{summary.frames} frames: {summary.written} written, {summary.skipped} skipped "
               f"(exist), {summary.failed} failed; {summary.frames_per_second:.2f} frames/s "
               f"({summary.seconds:.1f} s){where}", err=True)
    if summary_json:
        write_atomic(summary_json, (json.dumps(asdict(summary), indent=2) + "\n").encode())
    if summary.failed:
        raise click.exceptions.Exit(1)


def _sample_labels() -> Path:
    from .engines import default_engine_path
    return default_engine_path().parent / "labels"


def synthesize_frames(engine, frames: list[Frame], out: Path, batch_size: int = 1, *,
                      max_delay_us: int = 2000, workers: int | None = None, fmt: str = "png",
                      quality: int = 95, style=None, progress: bool = True) -> RunSummary:
    """Run every frame through a Runtime, writing out/<name>.<fmt>; one line per failure."""
    workers = workers or default_workers()
    summary = RunSummary(settings=dict(batch_size=batch_size, max_delay_us=max_delay_us,
                                       workers=workers, format=fmt))
    if not frames:
        return summary
    items = ({"label": f.label, "inst": f.inst, "out": out / f"{f.name}.{fmt}",
              "name": str(f.label)} for f in frames)
    t0 = time.perf_counter()
    with Runtime(engine, max_batch_size=batch_size, max_queue_delay_us=max_delay_us,
                 decode_workers=workers, encode_workers=workers, style=style,
                 jpeg_quality=quality) as rt, \
            tqdm(total=len(frames), unit="frame", desc="synthesize", disable=not progress) as bar:
        for result in rt.map(items, return_exceptions=True):
            if isinstance(result, BaseException):
                summary.failed += 1
                path, fault = _fault_of(result)
                summary.failures.append({"file": path, "fault": fault})
                tqdm.write(f"error: {result}", file=sys.stderr)
            else:
                summary.written += 1
            bar.update(1)
        summary.settings["batches"] = dict(sorted(rt.stats.batch_sizes.items()))
    summary.seconds = time.perf_counter() - t0
    summary.frames_per_second = summary.written / summary.seconds if summary.seconds > 0 else 0.0
    return summary


def _fault_of(error: BaseException) -> tuple[str, str]:
    path = getattr(error, "path", None) or getattr(error, "name", None)
    fault = getattr(error, "fault", None)
    if path is None:
        return "", f"{error.__class__.__name__}: {error}"
    text = str(error)
    return str(path), fault or (text[len(str(path)) + 2:] if text.startswith(f"{path}: ") else text)
