"""The local executor of a run plan: every job through one Runtime on this machine.

    RunOptions ─▶ open the engine and the style ─▶ plan() ─▶ Runtime.map (decode, batch,
    synthesize, encode, atomic write) ─▶ RunSummary, one {file, fault} record per failure.
"""
from __future__ import annotations

import time
from typing import Callable

from tqdm import tqdm

from .api import make_style
from .engines import Engine, open_engine
from .errors import record_of
from .files import remove_stale_temps
from .locations import is_uri, resolve
from .plan import Plan, RunOptions, RunSummary, plan
from .runtime import Runtime, default_workers


def open_run_engine(opts: RunOptions, device=None) -> Engine:
    return open_engine(opts.engine, opts.device if device is None else device,
                       precision=opts.precision, compile=opts.compile, mode=opts.mode)


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
    summary = synthesize(engine, style, todo, opts, on_failure)
    summary.settings.update(engine=str(opts.engine or "demo"), device=str(engine.device),
                            precision=engine.info.precision, mode=engine.info.extra.get("mode"),
                            compile=opts.compile, seed=opts.seed, style=opts.style)
    return summary
