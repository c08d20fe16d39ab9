"""The Ray executor of a run plan: the same jobs as a local run, spread over a Ray cluster.

    driver: plan() (discovery, pairing, the skip rule: plan.py)
        ─▶ Ray Data dataset of {name, label, inst, out} rows
        ─▶ map_batches over an actor pool: each actor holds one engine and one Runtime on one GPU
           (or, without GPUs, on one CPU slot); it synthesizes its rows and writes each output
           atomically (files.py) where every node sees it
        ─▶ one status row per frame back to the driver: the RunSummary and its failure records.

Ray does the distributing: Ray Data schedules the batches, streams with backpressure and draws the
progress bars; an actor that dies (a lost node, a killed process) is restarted and its unfinished
batches are retried (Ray's max_restarts / max_task_retries). A retried batch skips outputs that its
first attempt already wrote, and every write is atomic, so no output is partial or written twice;
temporary files of dead attempts are removed at the end. An interrupted job rerun with the same
command synthesizes only what is missing.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from concurrent.futures import Future

import numpy as np

from .devices import parse_device
from .errors import JobError, MissingDependency, OptionError, record_of
from .files import remove_temps_of
from .locations import existing, resolve
from .plan import RunOptions, RunSummary, plan
from .step import RGB

INSTALL_HINT = 'pip install "p2phd-infer[ray]"'
# A batch that kills its worker this many more times fails the job (no endless restart loop).
MAX_TASK_RETRIES = 3
_NO_INST = ""      # Ray Data columns carry strings: "" is "no instance map" (never a float NaN)


def run_input_kind(opts: RunOptions) -> str:
    """The input kind of the run's model (config.INPUT_KINDS) without opening an engine: a
    model.pt's architecture says; an exported engine takes label ids (graphs are traced with
    them)."""
    from pathlib import Path

    from .checkpoint import load_checkpoint
    from .engines import default_engine_path
    path = Path(opts.engine) if opts.engine is not None else default_engine_path()
    if path.suffix.lower() != ".pt" or not path.is_file():
        return "ids"        # a missing file is the workers' one-line error, as without Ray
    return load_checkpoint(path).config.input_kind


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the [data] part of the extra
    except ImportError:
        raise MissingDependency("--ray", f"needs Ray, which is not installed: {INSTALL_HINT}") \
            from None
    return ray


class SynthesisWorker:
    """One Ray actor: one engine and one Runtime on this actor's device.

    Called by Ray Data with a batch {name, label, inst, out} (numpy object arrays); returns
    {label, status, file, fault}, status 'written' or 'failed'."""

    def __init__(self, opts: RunOptions, device: str, cpus: float):
        import torch
        from .api import make_style
        from .local_run import open_run_engine, run_label_map, run_palette
        from .runtime import Runtime
        self.opts = opts
        self.init_error: dict | None = None
        try:
            if device == "cpu" and cpus:
                torch.set_num_threads(max(1, int(cpus)))
            engine = open_run_engine(opts, device)
            style = make_style(engine, opts.style, opts.seed, opts.style_image,
                               opts.style_instances)
            # The same Runtime as a local run's: label format, palette, label map, instances.
            self.runtime = Runtime.from_options(engine, opts, style=style,
                                                palette=run_palette(engine, opts),
                                                label_map=run_label_map(engine, opts))
        except Exception as e:  # noqa: BLE001 - reported on every row, once by the driver
            record = record_of(e)
            self.init_error = {"file": record["file"],
                               "fault": f"the worker could not start: {record['fault']}"}

    def __call__(self, batch: dict) -> dict:
        labels = [str(x) for x in batch["label"]]
        insts = [None if str(x) == _NO_INST else str(x) for x in batch["inst"]]
        outs = [str(x) for x in batch["out"]]
        n = len(labels)
        status, records = ["failed"] * n, [{"file": "", "fault": ""} for _ in range(n)]
        if self.init_error is not None:
            return self._rows(labels, status, [self.init_error] * n)
        # An earlier attempt of this batch (before its worker died) may have written some.
        done = existing(outs) if not self.opts.overwrite else set()
        futures: list[tuple[int, Future]] = []
        for i in range(n):
            if outs[i] in done:
                status[i] = "written"
                continue
            try:
                futures.append((i, self.runtime.submit(labels[i], insts[i], out=outs[i],
                                                       name=labels[i])))
            except Exception as e:  # noqa: BLE001 - a bad request fails alone
                records[i] = record_of(e, labels[i])
        for k, (i, fut) in enumerate(futures):
            try:
                fut.result()
                status[i] = "written"
            except Exception as e:  # noqa: BLE001 - InputError, EngineFault, OutputError
                records[i] = record_of(e, labels[i])
            self.after_frame(k)
        return self._rows(labels, status, records)

    def after_frame(self, k: int) -> None:
        """Called after the k-th synthesized frame of each batch (tests crash a worker here)."""

    @staticmethod
    def _rows(labels, status, records) -> dict:
        return {"label": np.array(labels, dtype=object), "status": np.array(status, dtype=object),
                "file": np.array([r["file"] for r in records], dtype=object),
                "fault": np.array([r["fault"] for r in records], dtype=object)}


def run_on_ray(opts: RunOptions, on_failure=None, worker=SynthesisWorker) -> RunSummary:
    """Synthesize every missing output of the plan on a Ray cluster.

    opts.ray: "" connects to the running cluster or starts a local one (ray.init()); "auto" only
    connects; "ray://host:10001" or "host:6379" names one. When Ray is already initialised in
    this process, that cluster is used. opts.num_workers: actors (default: one per GPU of the
    cluster / gpus_per_worker, or one per CPU without GPUs). on_failure(record) is called for
    each failed frame as its result arrives (once per distinct fault)."""
    ray = import_ray()
    # The syntax only: the driver may see no GPU while the cluster's workers do.
    device = parse_device(opts.device)
    gpus_per_worker = opts.gpus_per_worker
    if device is not None and device.type == "cpu" and gpus_per_worker:
        raise OptionError("--device", "cpu with --gpus-per-worker: choose one")
    if device is not None and device.type == "cpu":
        gpus_per_worker = 0.0
    elif device is not None and gpus_per_worker is None:
        gpus_per_worker = 1.0       # Ray picks each actor's GPU; an index in --device is moot
    # Paths every node resolves the same way: absolute, or URIs.
    opts = dataclasses.replace(
        opts, engine=None if opts.engine is None else resolve(opts.engine),
        style_image=None if opts.style_image is None else resolve(opts.style_image),
        calibration=None if opts.calibration is None else resolve(opts.calibration),
        style_instances=None if opts.style_instances is None else resolve(opts.style_instances),
        palette=None if opts.palette is None else resolve(opts.palette),
        label_map=None if opts.label_map is None else resolve(opts.label_map),
        progress=False)
    # The driver plans before any worker opens an engine: the model file says whether its
    # inputs are RGB images (JPEG too) or label maps.
    todo = plan(opts, images=run_input_kind(opts) == RGB)
    summary = RunSummary(frames=todo.frames, skipped=todo.skipped)
    if not todo.jobs:
        return summary

    if not ray.is_initialized():
        ray.init(address=opts.ray or None)
    resources = ray.cluster_resources()
    cluster_gpus, cluster_cpus = resources.get("GPU", 0.0), resources.get("CPU", 1.0)
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if cluster_gpus >= 1 else 0.0
    if gpus_per_worker > cluster_gpus:
        raise OptionError("--gpus-per-worker", f"{gpus_per_worker:g}, but the Ray cluster has "
                                               f"{cluster_gpus:g} GPUs")
    cpus_per_worker = 1.0
    num_workers = opts.num_workers
    if num_workers is None:
        num_workers = int(cluster_gpus // gpus_per_worker) if gpus_per_worker > 0 else \
            int(cluster_cpus // cpus_per_worker)
        num_workers = max(1, min(num_workers, -(-len(todo.jobs) // opts.batch_size)))
    summary.settings.update(ray=True, num_workers=num_workers, gpus_per_worker=gpus_per_worker,
                            batch_size=opts.batch_size, format=opts.format,
                            engine=str(opts.engine or "demo"), seed=opts.seed, style=opts.style)

    rows = [{"name": j.name, "label": j.label, "inst": j.inst or _NO_INST, "out": j.out}
            for j in todo.jobs]
    ds = ray.data.from_items(rows)
    stage = dict(fn_constructor_kwargs={"opts": opts,
                                        "device": "cuda" if gpus_per_worker > 0 else "cpu",
                                        "cpus": cpus_per_worker},
                 batch_size=opts.batch_size, batch_format="numpy",
                 compute=ray.data.ActorPoolStrategy(size=num_workers),
                 num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None)
    # A dead actor is restarted and the batches it held are retried on it, each a bounded number
    # of times, so a frame that crashes its worker every time ends the job instead of looping.
    # Ray Data plans to drop these actor options (2.64); without them its own default applies:
    # restart and retry without limit.
    retries = dict(max_restarts=-1, max_task_retries=MAX_TASK_RETRIES)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        try:
            ds = ds.map_batches(worker, **stage, **retries)
        except TypeError:
            ds = ds.map_batches(worker, **stage)
    t0 = time.perf_counter()
    seen: set[tuple[str, str]] = set()
    outputs = [j.out for j in todo.jobs]
    try:
        for row in ds.iter_rows():
            if row["status"] == "written":
                summary.written += 1
                continue
            record = {"file": row["file"] or row["label"], "fault": row["fault"] or "failed"}
            summary.add_failure(record)
            key = (record["file"] if row["file"] else "", record["fault"])
            if on_failure is not None and key not in seen:
                on_failure(record)
            seen.add(key)           # a worker's start-up error would repeat on every frame
    except Exception as e:  # noqa: BLE001 - Ray wraps the cause in long multi-line errors
        remove_temps_of(outputs)    # the job's actors are gone
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise JobError("--ray", f"the Ray job stopped ({e.__class__.__name__}: "
                                f"{lines[-1] if lines else e}); outputs already written stay, "
                                f"rerun the command to finish the rest") from e
    # Not on Ctrl-C: actors may still be writing until Ray reaps them; the next run cleans up.
    remove_temps_of(outputs)
    summary.seconds = time.perf_counter() - t0
    summary.frames_per_second = summary.written / summary.seconds if summary.seconds else 0.0
    return summary
