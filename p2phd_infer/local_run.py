"""The local executor of a run plan: every job through one Runtime on this machine.

    RunOptions ─▶ open the engine and the style ─▶ plan() ─▶ Runtime.map (decode, batch,
    synthesize, encode, atomic write) ─▶ RunSummary, one {file, fault} record per failure.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from .api import make_style
from .engines import Engine, describe_engine, open_engine
from .errors import OptionError, record_of
from .files import remove_stale_temps
from .locations import existing, is_uri, join, resolve
from .plan import (IMAGE_SUFFIXES, Plan, RunOptions, RunSummary, plan,
                   sample_labels)
from .runtime import Runtime, default_workers
from .step import RGB, input_kind

COMPARE_FOLDER = "compare"      # run --save-comparison: OUT/compare/<name>.png


def open_run_engine(opts: RunOptions, device=None) -> Engine:
    """The run's engine, chosen as every command chooses it (engines.open_engine)."""
    log = (lambda message: tqdm.write(message, file=sys.stderr)) if opts.progress else None
    return open_engine(opts.engine, opts.device if device is None else device,
                       precision=opts.precision, compile=opts.compile, mode=opts.mode,
                       backend=opts.backend, log=log, calibration=opts.calibration)


def run_palette(engine: Engine, opts: RunOptions):
    """The palette that reads colour label maps for this run (None when no map can be one)."""
    if input_kind(engine) == RGB:
        if opts.palette is not None or opts.label_format == "color":
            raise OptionError("--palette" if opts.palette else "--label-format",
                              "a label_nc 0 model takes RGB images as they are, not label maps")
        return None
    if opts.label_format == "carla" or opts.label_map is not None:
        if opts.palette is not None:
            raise OptionError("--palette", "--label-format carla and --label-map give the ids "
                                           "themselves; drop --palette")
        return None
    if opts.label_format == "ids":
        if opts.palette is not None:
            raise OptionError("--palette", "a palette reads colour label maps: drop "
                                           "--label-format ids (or give auto or color)")
        return None
    from .palette import model_palette
    return model_palette(engine, opts.palette)


def run_label_map(engine: Engine, opts: RunOptions):
    """--label-map FILE, read and checked against the model's ids (None without one)."""
    if opts.label_map is None:
        return None
    if input_kind(engine) == RGB:
        raise OptionError("--label-map", "a label_nc 0 model takes RGB images, not label maps")
    from .label_map import read_label_map
    return read_label_map(opts.label_map).for_model(engine.config.label_nc)


def comparison_writer(engine: Engine, jobs: list, opts: RunOptions, palette):
    """on_written for the Runtime (run --save-comparison): OUT/compare/<name>.png with the
    label map in colour (a label_nc 0 model's input image as it is) | the output | the photo of
    the same name in --photos, if given. 2 px white gutters. A photo of another size is resized
    to the frame's for the picture."""
    import numpy as np

    from .errors import InputError
    from .image_io import read_rgb, write_image
    from .palette import colorize, display_table

    table = display_table(engine, palette) if input_kind(engine) != RGB else None
    by_out = {j.out: j for j in jobs}
    out_root = resolve(opts.out)
    photos = resolve(opts.photos) if opts.photos is not None else None

    def photo_for(name: str) -> str:
        stems = [name]
        for tail in ("_gtFine_labelIds", "_gtFine_color", "_labelIds", "_color"):
            if name.endswith(tail):        # Cityscapes: X_gtFine_labelIds -> X_leftImg8bit
                stems += [name[: -len(tail)] + "_leftImg8bit", name[: -len(tail)]]
        cands = [join(photos, stem + ext) for stem in stems for ext in IMAGE_SUFFIXES]
        found = existing(cands)
        hit = next((c for c in cands if c in found), None)
        if hit is None:
            raise InputError(join(photos, name + ".png"), "no photo of this name for the "
                                                          "comparison (--photos)")
        return hit

    def write(out: str, label, rgb) -> None:
        job = by_out[out]
        lab = label.cpu().numpy()
        first = lab.transpose(1, 2, 0) if table is None else colorize(lab, table)
        parts = [first, rgb]
        if photos is not None:
            photo = read_rgb(photo_for(job.name), opts.max_pixels)
            if photo.shape != rgb.shape:
                from PIL import Image
                photo = np.asarray(Image.fromarray(photo).resize(
                    (rgb.shape[1], rgb.shape[0]), Image.BICUBIC))
            parts.append(photo)
        gutter = np.full((rgb.shape[0], 2, 3), 255, np.uint8)
        row = [parts[0]]
        for part in parts[1:]:
            row += [gutter, part]
        write_image(join(out_root, f"{COMPARE_FOLDER}/{job.name}.png"), np.concatenate(row, 1))

    return write


def run_jobs(engine: Engine, style, todo: Plan, opts: RunOptions,
               on_failure: Callable[[dict], None] | None = None, palette=None,
               label_map=None, started: float | None = None) -> RunSummary:
    """Run the plan's jobs through a Runtime over `engine`; the summary of what happened.
    started: time.perf_counter() when the engine began to load (for time-to-first-frame)."""
    workers = opts.workers or default_workers()
    summary = RunSummary(frames=todo.frames, skipped=todo.skipped,
                         settings=dict(batch_size=opts.batch_size,
                                       max_queue_delay_us=opts.max_queue_delay_us, workers=workers,
                                       format=opts.format))
    if not todo.jobs:
        return summary
    on_written = comparison_writer(engine, todo.jobs, opts, palette) \
        if opts.save_comparison else None
    t0 = time.perf_counter()
    with Runtime.from_options(engine, opts, style=style, palette=palette, label_map=label_map,
                              on_written=on_written) as rt, \
            tqdm(total=len(todo.jobs), unit="frame", desc="synthesize",
                 disable=not opts.progress) as bar:
        for job, result in zip(todo.jobs, rt.map(todo.jobs, return_exceptions=True)):
            if isinstance(result, BaseException):
                record = record_of(result, job.label)
                summary.add_failure(record)
                if on_failure is not None:
                    on_failure(record)
            else:
                summary.written += 1
                if summary.written == 1:
                    first = time.perf_counter()
            bar.update(1)
        summary.settings["batches"] = dict(sorted(rt.stats.batch_sizes.items()))
    end = time.perf_counter()
    summary.seconds = end - t0
    summary.frames_per_second = summary.written / summary.seconds if summary.seconds > 0 else 0.0
    if summary.written:
        time_first_frame(summary, first - (t0 if started is None else started), end - first)
    return summary


def time_first_frame(summary: RunSummary, first_seconds: float, rest_seconds: float) -> None:
    """The start apart from the steady rate: seconds from the engine starting to load to the
    first frame written (conversion, compile or import of the compiled blob, first-call
    allocations, the pipeline filling), and the frames/s of the frames after it."""
    summary.first_frame_seconds = first_seconds
    rest = summary.written - 1
    summary.steady_frames_per_second = rest / rest_seconds if rest and rest_seconds > 0 else 0.0


def run_local(opts: RunOptions, on_failure: Callable[[dict], None] | None = None) -> RunSummary:
    """The whole run on this machine. Errors.Error for what stops it before the first frame
    (engine, options, inputs); per-frame faults are records in the summary."""
    if opts.format == "mp4" and opts.save_comparison:
        raise OptionError("--save-comparison", "comparison pictures go with image outputs; "
                                               "drop --format mp4")
    started = time.perf_counter()
    engine = open_run_engine(opts)
    palette = run_palette(engine, opts)
    label_map = run_label_map(engine, opts)
    style = make_style(engine, opts.style, opts.seed, opts.style_image, opts.style_instances)
    todo = plan(opts, images=input_kind(engine) == RGB)
    if not is_uri(opts.out):
        remove_stale_temps(resolve(opts.out))     # left by a killed earlier run
    if opts.format == "mp4":
        summary = run_videos(engine, style, todo, opts, on_failure, palette, label_map)
    else:
        summary = run_jobs(engine, style, todo, opts, on_failure, palette, label_map, started)
    summary.settings.update(engine=str(opts.engine or "demo"), device=str(engine.device),
                            precision=engine.info.precision, mode=engine.info.extra.get("mode"),
                            compile=opts.compile, seed=opts.seed, style=opts.style,
                            backend=engine.info.backend, ran=describe_engine(engine))
    return summary


def run_videos(engine: Engine, style, todo: Plan, opts: RunOptions,
                      on_failure: Callable[[dict], None] | None = None,
                      palette=None, label_map=None) -> RunSummary:
    """`--format mp4`: the plan's frames, grouped by output sub-folder (video.video_of), each
    group encoded in name order as one video from the Runtime's in-memory results, in this
    process. A video that exists is skipped (unless overwrite); a frame that fails fails its
    video (nothing is written for it) and the other videos go on."""
    import itertools
    import os

    from .video import video_of, write_video

    if is_uri(opts.out):
        raise OptionError("--format", "mp4 is written to a local --out folder, not a URI")
    out = resolve(opts.out)
    root = Path(resolve(opts.labels)) if opts.labels is not None else sample_labels()
    root_name = (root.stem if root.is_file() else root.name) or "video"
    keyed = sorted(((video_of(j.name, root_name, out), j) for j in todo.jobs),
                   key=lambda vj: (vj[0], vj[1].name))
    videos = [(v, [j for _, j in group]) for v, group in
              itertools.groupby(keyed, key=lambda vj: vj[0])]
    summary = RunSummary(frames=todo.frames, skipped=todo.skipped,
                         settings=dict(batch_size=opts.batch_size,
                                       max_queue_delay_us=opts.max_queue_delay_us, format="mp4",
                                       fps=opts.fps))
    if not opts.overwrite:
        done = {v for v, _ in videos if os.path.exists(v)}
        summary.skipped += sum(len(jobs) for v, jobs in videos if v in done)
        videos = [(v, jobs) for v, jobs in videos if v not in done]
    summary.settings["videos"] = len(videos)
    summary.videos = 0
    if not videos:
        return summary

    def fail(record: dict) -> None:
        summary.add_failure(record)
        if on_failure is not None:
            on_failure(record)

    t0 = time.perf_counter()
    jobs = [j for _, group in videos for j in group]
    with Runtime.from_options(engine, opts, style=style, palette=palette, label_map=label_map,
                              encode_workers=1) as rt, \
            tqdm(total=len(jobs), unit="frame", desc="synthesize",
                 disable=not opts.progress) as bar:
        # One ordered stream over every video, so the pipeline stays full across video ends.
        results = rt.map(({"label": j.label, "inst": j.inst, "name": j.label} for j in jobs),
                         return_exceptions=True)
        for path, group in videos:
            taken = 0

            def frames():
                nonlocal taken
                for job in group:
                    rgb = next(results)
                    taken += 1
                    bar.update(1)
                    if isinstance(rgb, BaseException):
                        raise rgb
                    yield rgb

            try:
                written = write_video(frames(), path, opts.fps, names=[j.label for j in group])
            except Exception as e:  # noqa: BLE001 - this video fails, the others go on
                record = record_of(e, path)
                if record["file"] != path:
                    record["fault"] += f" (so {path} was not written)"
                fail(record)
                for _ in range(len(group) - taken):      # its frames still in the stream
                    next(results)
                    bar.update(1)
            else:
                summary.written += written
                summary.videos += 1
        summary.settings["batches"] = dict(sorted(rt.stats.batch_sizes.items()))
    summary.seconds = time.perf_counter() - t0
    summary.frames_per_second = summary.written / summary.seconds if summary.seconds > 0 else 0.0
    return summary
