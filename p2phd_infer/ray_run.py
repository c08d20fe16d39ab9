"""`p2phd-infer run ... --ray [ADDRESS]`: the same job as a local run, spread over a Ray cluster.

    driver: list the label/instance pairs, drop those whose output exists (the local rule)
        ─▶ Ray Data dataset of {name, label, inst, out} rows
        ─▶ map_batches over an actor pool: each actor holds one engine and one Runtime on one GPU
           (or, without GPUs, on one CPU slot); it reads and decodes its frames, synthesizes and
           writes each output atomically (temporary name, then rename) where every node sees it
        ─▶ one status row per frame back to the driver, which prints failures and the summary.

Ray does the distributing: Ray Data schedules the batches, streams with backpressure and draws the
progress bars; an actor that dies (a lost node, a killed process) is restarted and its unfinished
batches are retried (Ray's max_restarts / max_task_retries). A retried batch skips outputs that its
first attempt already wrote, and every write is atomic, so no output is partial or written twice
under another name; temporary files of dead attempts are removed at the end. An interrupted job
rerun with the same command synthesizes only what is missing.

Inputs may be local paths (on a cluster: a filesystem every node mounts) or URIs of any filesystem
pyarrow opens (s3://, gs://, hdfs://, file://), the ones Ray Data reads; so may --out.
"""
from __future__ import annotations

import os
import tempfile
import time
import uuid
import warnings
from concurrent.futures import Future
from pathlib import Path, PurePosixPath

import click
import numpy as np

from .frames import INSTANCE_SUFFIX, LABEL_SUFFIX, discover_frames
from .image_io import InputError, encode_image, read_id_png

INSTALL_HINT = 'pip install "p2phd-infer[ray]"'
# Fault drill: while this file exists, the first worker to remove it exits at once, halfway
# through a batch (after that batch's first output is written), as a crashed node would.
CRASH_FILE_ENV = "P2PHD_RAY_CRASH_FILE"
# A batch that kills its worker this many more times fails the job (no endless restart loop).
MAX_TASK_RETRIES = 3


class RayMissing(ImportError):
    def __init__(self):
        super().__init__(f"--ray needs Ray, which is not installed: {INSTALL_HINT}")


class RayJobError(RuntimeError):
    """The Ray job stopped (a batch ran out of retries, the cluster went away)."""


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the [data] part of the extra
    except ImportError:
        raise RayMissing() from None
    return ray


# ----------------------------------------------------------------------------- locations

def is_uri(location: str | os.PathLike | None) -> bool:
    return location is not None and "://" in str(location)


class Filesystems:
    """pyarrow filesystems by URI, one client per scheme and authority (an S3 client is slow to
    make)."""

    def __init__(self):
        self._known: dict[str, tuple[object, str]] = {}   # authority -> (fs, URI prefix of paths)

    def split(self, uri: str):
        """(filesystem, path inside it) for a URI."""
        from pyarrow import fs as pafs
        scheme, rest = uri.split("://", 1)
        authority = f"{scheme}://{rest.split('/', 1)[0]}"
        if authority in self._known:
            fs, prefix = self._known[authority]
            if uri.startswith(prefix):
                return fs, uri[len(prefix):]
        fs, path = pafs.FileSystem.from_uri(uri)
        if uri.endswith(path) and "?" not in uri:
            self._known[authority] = (fs, uri[: len(uri) - len(path)])
        return fs, path

    def prefix(self, uri: str) -> str:
        """What goes before a path of this URI's filesystem to make a URI of it."""
        _, path = self.split(uri)
        return uri[: len(uri) - len(path)]


def _uri_join(base: str, rel: str) -> str:
    return base.rstrip("/") + "/" + rel


def _output_location(out: str, name: str, fmt: str) -> str:
    return _uri_join(out, f"{name}.{fmt}") if is_uri(out) else str(Path(out) / f"{name}.{fmt}")


def list_uri_pairs(labels: str, instances: str | None = None) -> list[dict]:
    """discover_frames for a URI: the same files (*.png, recursive, hidden names left out, only
    *_labelIds.png in a Cityscapes folder) and the same three ways to pair an instance map.
    Rows {name, label, inst} with URIs."""
    from pyarrow import fs as pafs
    fss = Filesystems()
    fs, root = fss.split(labels)
    prefix = fss.prefix(labels)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise InputError(labels, "no such file or folder")
    if info.type == pafs.FileType.File:
        files, base = [root], str(PurePosixPath(root).parent)
    else:
        base = root.rstrip("/")
        found = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        files = sorted(f.path for f in found if f.type == pafs.FileType.File
                       and f.path.lower().endswith(".png") and not f.base_name.startswith("."))
        if any(f.endswith(LABEL_SUFFIX) for f in files):
            files = [f for f in files if f.endswith(LABEL_SUFFIX)]
    inst_fs = inst_root = None
    if instances is not None:
        if not is_uri(instances):
            raise InputError(instances, "with a URI for the label maps, --instances must be a "
                                        "URI too")
        inst_fs, inst_root = fss.split(instances)
        if inst_fs.get_file_info(inst_root).type != pafs.FileType.Directory:
            raise InputError(instances, "instance folder does not exist")
    rows = []
    wanted: list[tuple[object, str, str]] = []     # (fs, path, uri) of every candidate
    for f in files:
        rel = f[len(base):].lstrip("/")
        cands = []
        if inst_root is not None:
            cands.append((inst_fs, inst_root.rstrip("/") + "/" + rel,
                          _uri_join(instances, rel)))
        if f.endswith(LABEL_SUFFIX):
            p = f[: -len(LABEL_SUFFIX)] + INSTANCE_SUFFIX
            cands.append((fs, p, prefix + p))
        parts = f.split("/")
        for i, part in enumerate(parts[:-1]):
            if part.endswith("_label"):    # test_label/ -> test_inst/
                p = "/".join(parts[:i] + [part[: -len("_label")] + "_inst"] + parts[i + 1:])
                cands.append((fs, p, prefix + p))
        rows.append({"name": str(PurePosixPath(rel).with_suffix("")), "label": prefix + f,
                     "cands": cands})
        wanted += cands
    existing = set()
    for cfs in {id(c[0]): c[0] for c in wanted}.values():   # one listing call per filesystem
        mine = [c for c in wanted if c[0] is cfs]
        for c, info in zip(mine, cfs.get_file_info([c[1] for c in mine])):
            if info.type == pafs.FileType.File:
                existing.add(c[2])
    for row in rows:
        row["inst"] = next((c[2] for c in row.pop("cands") if c[2] in existing), None)
    return rows


# ----------------------------------------------------------------------------- the Ray worker

class SynthesisWorker:
    """One Ray actor: one engine and one Runtime on this actor's device.

    Called by Ray Data with a batch {name, label, inst, out} (numpy object arrays); returns
    {name, label, status, error}, status 'written' or 'failed'."""

    def __init__(self, spec: dict):
        import torch
        from .api import make_style
        from .engines import open_engine
        from .runtime import Runtime
        self.spec = spec
        self.overwrite = spec["overwrite"]
        self.fmt, self.quality = spec["fmt"], spec["quality"]
        self.init_error = None
        self._filesystems = Filesystems()
        try:
            device = "cuda" if spec["gpus_per_worker"] > 0 else "cpu"
            if device == "cpu" and spec["cpus_per_worker"]:
                torch.set_num_threads(max(1, int(spec["cpus_per_worker"])))
            engine = open_engine(spec["engine_path"], device, fp16=spec["fp16"],
                                 compile=spec["compile"])
            style = make_style(engine, spec["style"], spec["seed"], spec["style_image"],
                               spec["style_instances"])
            self.runtime = Runtime(engine, max_batch_size=spec["batch_size"],
                                   max_queue_delay_us=spec["max_delay_us"],
                                   decode_workers=spec["workers"], encode_workers=spec["workers"],
                                   style=style, jpeg_quality=self.quality)
            self.cfg = engine.config
        except Exception as e:  # noqa: BLE001 - reported on every row, once by the driver
            self.init_error = f"the worker could not start: {e.__class__.__name__}: {e}"

    def __call__(self, batch: dict) -> dict:
        names = [str(n) for n in batch["name"]]
        labels = [str(x) for x in batch["label"]]
        insts = [None if x is None else str(x) for x in batch["inst"]]
        outs = [str(x) for x in batch["out"]]
        status, errors = ["failed"] * len(names), [""] * len(names)
        if self.init_error is not None:
            return self._rows(names, labels, status, [self.init_error] * len(names))
        futures: list[tuple[int, Future | None]] = []
        for i in range(len(names)):
            if not self.overwrite and self._exists(outs[i]):
                # An earlier attempt of this batch (before its worker died) wrote it.
                status[i] = "written"
                futures.append((i, None))
                continue
            try:
                futures.append((i, self._submit(labels[i], insts[i], outs[i])))
            except Exception as e:  # noqa: BLE001 - a bad file fails alone
                errors[i] = str(e) if isinstance(e, InputError) else \
                    f"{labels[i]}: {e.__class__.__name__}: {e}"
                futures.append((i, None))
        crash = os.environ.get(CRASH_FILE_ENV)
        for k, (i, fut) in enumerate(futures):
            if fut is None:
                continue
            try:
                result = fut.result()
                if is_uri(outs[i]):
                    self._put(outs[i], result)
                status[i] = "written"
            except Exception as e:  # noqa: BLE001 - InputError, EngineFault, OutputError
                errors[i] = str(e)
            if crash and k == 0 and _claim(crash):
                os._exit(17)
        return self._rows(names, labels, status, errors)

    @staticmethod
    def _rows(names, labels, status, errors) -> dict:
        return {"name": np.array(names, dtype=object), "label": np.array(labels, dtype=object),
                "status": np.array(status, dtype=object), "error": np.array(errors, dtype=object)}

    # -- local paths go straight to the Runtime (it decodes, writes atomically); URIs are fetched

    def _submit(self, label: str, inst: str | None, out: str) -> Future:
        if not is_uri(label):
            return self.runtime.submit(label, inst, out=None if is_uri(out) else out, name=label)
        label_ids = self._fetch_ids(label)
        inst_ids = self._fetch_ids(inst) if inst is not None and \
            self.cfg.needs_instance_map else None
        return self.runtime.submit(label_ids, inst_ids, out=None if is_uri(out) else out,
                                   name=label)

    def _fs(self, uri: str):
        return self._filesystems.split(uri)

    def _fetch_ids(self, uri: str) -> np.ndarray:
        fs, path = self._fs(uri)
        try:
            with fs.open_input_stream(path) as f:
                data = f.read()
        except Exception as e:  # noqa: BLE001 - missing, no permission, network
            raise InputError(uri, f"could not be read ({e.__class__.__name__}: {e})") from None
        # read_id_png takes a path: the bytes go through a local temporary file.
        with tempfile.NamedTemporaryFile(suffix=".png") as tmp:
            tmp.write(data)
            tmp.flush()
            try:
                return read_id_png(tmp.name)
            except InputError as e:
                raise InputError(uri, e.fault) from None

    def _exists(self, out: str) -> bool:
        if not is_uri(out):
            return Path(out).exists()
        from pyarrow import fs as pafs
        fs, path = self._fs(out)
        return fs.get_file_info(path).type == pafs.FileType.File

    def _put(self, out: str, rgb: np.ndarray) -> None:
        """Write to a temporary name beside the output, then move it into place."""
        fs, path = self._fs(out)
        parent, name = path.rsplit("/", 1)
        tmp = f"{parent}/.{name}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}"
        data = encode_image(rgb, self.fmt, self.quality)
        fs.create_dir(parent, recursive=True)
        try:
            with fs.open_output_stream(tmp) as f:
                f.write(data)
            fs.move(tmp, path)
        except Exception as e:  # noqa: BLE001
            from .runtime import OutputError
            raise OutputError(out, e) from None


def _claim(path: str) -> bool:
    """True for exactly one caller while the file exists (unlink is atomic)."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


# ----------------------------------------------------------------------------- the driver

def plan(labels: str | os.PathLike, out: str, instances: str | None, fmt: str,
         overwrite: bool) -> tuple[list[dict], int]:
    """The rows to synthesize ({name, label, inst, out}, absolute paths or URIs) and how many
    frames were found; outputs that exist are left out unless `overwrite` (the local rule)."""
    if is_uri(labels):
        pairs = list_uri_pairs(str(labels), instances)
    else:
        if is_uri(instances):
            raise InputError(instances, "a URI for --instances needs a URI for the label maps")
        pairs = [{"name": f.name, "label": str(f.label.resolve()),
                  "inst": str(f.inst.resolve()) if f.inst is not None else None}
                 for f in discover_frames(labels, instances)]
    out = str(out) if is_uri(out) else str(Path(out).resolve())
    for p in pairs:
        p["out"] = _output_location(out, p["name"], fmt)
    if overwrite:
        return pairs, len(pairs)
    existing = _existing_outputs(out, fmt)
    return [p for p in pairs if p["out"] not in existing], len(pairs)


def _existing_outputs(out: str, fmt: str) -> set[str]:
    if not is_uri(out):
        root = Path(out)
        return {str(p) for p in root.rglob(f"*.{fmt}")} if root.is_dir() else set()
    from pyarrow import fs as pafs
    fss = Filesystems()
    fs, root = fss.split(out)
    prefix = fss.prefix(out)
    found = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return {prefix + f.path for f in found if f.type == pafs.FileType.File}


def remove_stray_temps(rows: list[dict]) -> int:
    """Remove the temporary files that attempts killed mid-write left beside these outputs
    (`.<output name>.tmp...`); only after every worker of the job has finished."""
    by_dir: dict[str, set[str]] = {}
    for r in rows:
        parent, _, name = r["out"].rpartition("/")
        by_dir.setdefault(parent, set()).add(name)
    removed = 0
    fss = Filesystems()
    for parent, names in by_dir.items():
        if is_uri(parent):
            from pyarrow import fs as pafs
            fs, path = fss.split(parent + "/")
            entries = [(i.base_name, i.path) for i in fs.get_file_info(
                pafs.FileSelector(path.rstrip("/"), allow_not_found=True))]
            delete = fs.delete_file
        else:
            fs = None
            try:
                entries = [(e.name, e.path) for e in os.scandir(parent)]
            except FileNotFoundError:
                continue
            delete = os.unlink
        for base, path in entries:
            if base.startswith(".") and ".tmp" in base and base[1:base.rindex(".tmp")] in names:
                try:
                    delete(path)
                    removed += 1
                except (FileNotFoundError, OSError):
                    pass
    return removed


def run_on_ray(labels, out, *, address: str | None = None, instances=None, engine_path=None,
               num_workers: int | None = None, gpus_per_worker: float | None = None,
               cpus_per_worker: float = 1, batch_size: int = 1, max_delay_us: int = 2000,
               workers: int | None = None, fmt: str = "png", quality: int = 95,
               fp16: bool = False, compile: bool = False, overwrite: bool = False,
               style: str | None = None, seed: int = 0, style_image=None, style_instances=None,
               on_failure=None):
    """Synthesize every missing output on a Ray cluster; returns a run_command.RunSummary.

    address: None or "" connects to the running cluster or starts a local one (ray.init());
    "auto" only connects; "ray://host:10001" or "host:6379" names one. When Ray is already
    initialised in this process, that cluster is used. num_workers: actors (default: one per GPU
    of the cluster / gpus_per_worker, or one per CPU / cpus_per_worker without GPUs).
    on_failure(message) is called for each failed frame as its result arrives.
    Raises RayMissing, InputError, EngineError, ValueError (settings), RayJobError."""
    from .engines import EngineError
    from .run_command import RunSummary
    ray = import_ray()
    todo, n_frames = plan(labels, out, instances, fmt, overwrite)
    summary = RunSummary(frames=n_frames, skipped=n_frames - len(todo))
    if engine_path is not None:
        engine_path = str(Path(engine_path).resolve())
        if not Path(engine_path).is_file():
            raise EngineError(f"{engine_path}: no such engine file")
    for p in (style_image, style_instances):
        if p is not None and not Path(p).is_file():
            raise InputError(p, "no such file")
    if not todo:
        return summary

    if not ray.is_initialized():
        ray.init(address=address or None)
    resources = ray.cluster_resources()
    cluster_gpus, cluster_cpus = resources.get("GPU", 0.0), resources.get("CPU", 1.0)
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if cluster_gpus >= 1 else 0.0
    if gpus_per_worker > cluster_gpus:
        raise ValueError(f"--gpus-per-worker {gpus_per_worker:g}, but the Ray cluster has "
                         f"{cluster_gpus:g} GPUs")
    if num_workers is None:
        num_workers = int(cluster_gpus // gpus_per_worker) if gpus_per_worker > 0 else \
            int(cluster_cpus // cpus_per_worker)
        num_workers = max(1, min(num_workers, -(-len(todo) // batch_size)))
    spec = dict(engine_path=engine_path, gpus_per_worker=gpus_per_worker,
                cpus_per_worker=cpus_per_worker, batch_size=batch_size,
                max_delay_us=max_delay_us, workers=workers, fmt=fmt, quality=quality, fp16=fp16,
                compile=compile, overwrite=overwrite, style=style, seed=seed,
                style_image=str(Path(style_image).resolve()) if style_image else None,
                style_instances=str(Path(style_instances).resolve()) if style_instances else None)
    summary.settings.update(ray=True, num_workers=num_workers, gpus_per_worker=gpus_per_worker,
                            batch_size=batch_size, format=fmt,
                            engine=str(engine_path or "demo"), seed=seed, style=style)

    ds = ray.data.from_items(todo)
    stage = dict(fn_constructor_kwargs={"spec": spec}, batch_size=batch_size,
                 batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=num_workers),
                 num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None)
    # A dead actor is restarted and the batches it held are retried on it, each a bounded number
    # of times, so a frame that crashes its worker every time ends the job instead of looping.
    # Ray Data plans to drop these actor options (2.64); without them its own default applies:
    # restart and retry without limit.
    retries = dict(max_restarts=-1, max_task_retries=MAX_TASK_RETRIES)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        try:
            ds = ds.map_batches(SynthesisWorker, **stage, **retries)
        except TypeError:
            ds = ds.map_batches(SynthesisWorker, **stage)
    t0 = time.perf_counter()
    seen_errors: set[str] = set()
    try:
        for row in ds.iter_rows():
            if row["status"] == "written":
                summary.written += 1
                continue
            summary.failed += 1
            message = row["error"] or f"{row['label']}: failed"
            path, _, fault = message.partition(": ")
            summary.failures.append({"file": path, "fault": fault})
            if on_failure is not None and message not in seen_errors:
                on_failure(message)
            seen_errors.add(message)     # a worker's engine error would repeat on every frame
    except Exception as e:  # noqa: BLE001 - Ray wraps the cause in long multi-line errors
        remove_stray_temps(todo)    # the job's actors are gone
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise RayJobError(f"the Ray job stopped ({e.__class__.__name__}: "
                          f"{lines[-1] if lines else e}); outputs already written stay, rerun "
                          f"the command to finish the rest") from e
    # Not on Ctrl-C: actors may still be writing until Ray reaps them; the next run cleans up.
    remove_stray_temps(todo)
    summary.seconds = time.perf_counter() - t0
    summary.frames_per_second = summary.written / summary.seconds if summary.seconds else 0.0
    return summary


def run_on_ray_cli(*, labels, out, ray_address, num_workers, gpus_per_worker, engine_path=None,
                   instances=None, batch_size=1, max_delay_us=2000, workers=None, fmt="png",
                   quality=95, fp16=False, compile_=False, overwrite=False, style=None, seed=0,
                   style_image=None, style_instances=None, summary_json=None, device="auto"):
    """`p2phd-infer run ... --ray`: run_on_ray with the run command's options, its messages and
    exit status. Every option of `run` is named here, so a new one that --ray does not carry fails
    loudly (TypeError in the tests) instead of being dropped."""
    from .checkpoint import CheckpointError
    from .cli import fail
    from .engines import EngineError
    from .run_command import _sample_labels, report_run
    if labels is None and ray_address and Path(ray_address).exists():
        # `run --ray LABELS`: click took the folder for the optional address; a Ray address is
        # never an existing path.
        labels, ray_address = ray_address, ""
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda"):
        raise fail(f"--device {device}: unknown device")
    if device == "cpu" and gpus_per_worker:
        raise fail("--device cpu with --gpus-per-worker: choose one")
    if device == "cpu":
        gpus_per_worker = 0.0
    elif str(device).startswith("cuda") and gpus_per_worker is None:
        gpus_per_worker = 1.0       # Ray picks each actor's GPU; an index in --device is moot
    if labels is None:
        labels = _sample_labels()
        instances = instances or str(_sample_labels().parent / "instances")
    try:
        summary = run_on_ray(
            labels, out, address=ray_address, instances=instances, engine_path=engine_path,
            num_workers=num_workers, gpus_per_worker=gpus_per_worker, batch_size=batch_size,
            max_delay_us=max_delay_us, workers=workers, fmt=fmt, quality=quality, fp16=fp16,
            compile=compile_, overwrite=overwrite, style=style, seed=seed, style_image=style_image,
            style_instances=style_instances,
            on_failure=lambda m: click.echo(f"error: {m}", err=True))
    except RayMissing as e:
        raise fail(str(e))
    except (EngineError, CheckpointError, InputError, ValueError, RayJobError) as e:
        raise fail(str(e))
    report_run(summary, summary_json, " on Ray")
