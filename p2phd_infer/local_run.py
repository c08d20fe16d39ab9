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
from .engines import Engine, open_engine
from .errors import Error, OptionError, record_of
from .files import remove_stale_temps
from .locations import is_uri, resolve
from .plan import Plan, RunOptions, RunSummary, plan, sample_labels
from .runtime import Runtime, default_workers


def choose_backend(opts: RunOptions, device=None) -> tuple[str, str]:
    """(backend, why) for `run`: "openvino" or "torch" for a model.pt, "file" for an exported
    engine (its suffix decides). On a CPU, a model.pt runs on OpenVINO by default: about twice
    as fast as PyTorch eager in fp32 (benchmarks/RESULTS.md, "Fastest on a CPU") and within
    1e-4 of it (tests/test_engine_openvino.py). PyTorch instead with --mode plain/fast,
    --compile, --precision fp16, bf16 on a CPU without native BF16, or without openvino."""
    device = opts.device if device is None else device
    is_pt = opts.engine is None or Path(opts.engine).suffix.lower() == ".pt"
    if not is_pt:
        return "file", "an exported engine file"
    if opts.backend != "auto":
        return opts.backend, f"--backend {opts.backend}"
    from .engines import resolve_device
    if resolve_device(device).type != "cpu":
        return "torch", "the device is not the CPU"
    for given, why in ((opts.mode != "auto", f"--mode {opts.mode}"),
                       (bool(opts.compile), "--compile"),
                       (opts.precision == "fp16", "--precision fp16")):
        if given:
            return "torch", why
    from .engines.openvino import check_precision, import_openvino
    try:
        import_openvino()
        check_precision(opts.precision)
    except Error as e:
        return "torch", f"OpenVINO: {e.fault}"
    return "openvino", "the CPU default"


def open_run_engine(opts: RunOptions, device=None) -> Engine:
    device = opts.device if device is None else device
    backend, why = choose_backend(opts, device)
    if backend == "openvino" and (opts.engine is None or
                                  Path(opts.engine).suffix.lower() == ".pt"):
        if opts.mode == "fast" or opts.compile:
            raise OptionError("--backend", "openvino takes neither --mode fast nor --compile "
                                           "(PyTorch engine options)")
        from .engines import default_engine_path
        from .engines.openvino import open_openvino
        log = (lambda message: tqdm.write(message, file=sys.stderr)) if opts.progress else None
        engine = open_openvino(opts.engine or default_engine_path(), device,
                               precision=opts.precision, log=log)
    else:
        engine = open_engine(opts.engine, device, precision=opts.precision,
                             compile=opts.compile, mode=opts.mode,
                             backend="openvino" if backend == "openvino" else "auto")
    engine.info.extra["chosen_because"] = why
    return engine


def describe_engine(engine: Engine) -> str:
    """One line: which engine ran, and why it was chosen."""
    info = engine.info
    extra = info.extra
    if info.backend == "openvino":
        what = f"OpenVINO {str(extra.get('openvino', '')).split('-')[0]} CPU {info.precision}"
        if extra.get("source") == "pt":
            what += " (model.pt converted once per frame size, cached)"
    elif info.backend == "torch":
        what = f"PyTorch {engine.device} {info.precision} {extra.get('mode') or ''}".rstrip()
    else:
        what = f"{info.backend} {engine.device} {info.precision}"
    why = extra.get("chosen_because")
    return f"engine: {what}" + (f" [{why}]" if why else "")


def synthesize(engine: Engine, style, todo: Plan, opts: RunOptions,
               on_failure: Callable[[dict], None] | None = None) -> RunSummary:
    """Run the plan's jobs through a Runtime over `engine`; the summary of what happened."""
    workers = opts.workers or default_workers()
    summary = RunSummary(frames=todo.frames, skipped=todo.skipped,
                         settings=dict(batch_size=opts.batch_size, max_delay_us=opts.max_delay_us,
                                       workers=workers, format=opts.format))
    if not todo.jobs:
        return summary
    t0 = time.perf_counter()
    with Runtime(engine, max_batch_size=opts.batch_size, max_queue_delay_us=opts.max_delay_us,
                 decode_workers=workers, encode_workers=workers, style=style,
                 jpeg_quality=opts.quality, max_pixels=opts.max_pixels) as rt, \
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
            bar.update(1)
        summary.settings["batches"] = dict(sorted(rt.stats.batch_sizes.items()))
    summary.seconds = time.perf_counter() - t0
    summary.frames_per_second = summary.written / summary.seconds if summary.seconds > 0 else 0.0
    return summary


def run_local(opts: RunOptions, on_failure: Callable[[dict], None] | None = None) -> RunSummary:
    """The whole run on this machine. Errors.Error for what stops it before the first frame
    (engine, options, inputs); per-frame faults are records in the summary."""
    engine = open_run_engine(opts)
    style = make_style(engine, opts.style, opts.seed, opts.style_image, opts.style_instances)
    todo = plan(opts)
    if not is_uri(opts.out):
        remove_stale_temps(resolve(opts.out))     # left by a killed earlier run
    if opts.format == "mp4":
        summary = synthesize_videos(engine, style, todo, opts, on_failure)
    else:
        summary = synthesize(engine, style, todo, opts, on_failure)
    summary.settings.update(engine=str(opts.engine or "demo"), device=str(engine.device),
                            precision=engine.info.precision, mode=engine.info.extra.get("mode"),
                            compile=opts.compile, seed=opts.seed, style=opts.style,
                            backend=engine.info.backend, ran=describe_engine(engine))
    return summary


def synthesize_videos(engine: Engine, style, todo: Plan, opts: RunOptions,
                      on_failure: Callable[[dict], None] | None = None) -> RunSummary:
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
                         settings=dict(batch_size=opts.batch_size, max_delay_us=opts.max_delay_us,
                                       format="mp4", fps=opts.fps))
    if not opts.overwrite:
        done = {v for v, _ in videos if os.path.exists(v)}
        summary.skipped += sum(len(jobs) for v, jobs in videos if v in done)
        videos = [(v, jobs) for v, jobs in videos if v not in done]
    summary.settings["videos"] = len(videos)
    if not videos:
        return summary

    def fail(record: dict) -> None:
        summary.add_failure(record)
        if on_failure is not None:
            on_failure(record)

    workers = opts.workers or default_workers()
    t0 = time.perf_counter()
    jobs = [j for _, group in videos for j in group]
    with Runtime(engine, max_batch_size=opts.batch_size, max_queue_delay_us=opts.max_delay_us,
                 decode_workers=workers, encode_workers=1, style=style,
                 max_pixels=opts.max_pixels) as rt, \
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
        summary.settings["batches"] = dict(sorted(rt.stats.batch_sizes.items()))
    summary.seconds = time.perf_counter() - t0
    summary.frames_per_second = summary.written / summary.seconds if summary.seconds > 0 else 0.0
    return summary
