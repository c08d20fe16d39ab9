"""The run plan: what `p2phd-infer run` does, written once for every executor.

    RunOptions ─▶ plan(): discover the label maps, pair each with its instance map, name its
    output, drop outputs that exist ─▶ Plan (jobs) ─▶ an executor (local_run.py, ray_run.py)
    ─▶ RunSummary with one {file, fault} record per failed frame.

A frame's label map pairs with an instance map by, in order:
  1. the same relative name in the `instances` folder;
  2. Cityscapes names in one folder (`X_gtFine_labelIds.png` <-> `X_gtFine_instanceIds.png`);
  3. pix2pixHD sibling folders (`test_label/` <-> `test_inst/`).
Locations are local paths or URIs (locations.py); the rules are the same for both.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import InputError, OptionError
from .files import write_atomic
from .image_io import LABEL_FORMATS
from .locations import existing, is_uri, join, kind, list_files, resolve

LABEL_SUFFIX = "_labelIds.png"
COLOR_SUFFIX = "_color.png"               # Cityscapes colour maps (--label-format color)
INSTANCE_SUFFIX = "_instanceIds.png"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # label_nc 0 models: the inputs are RGB images
AUTO_INSTANCES = "auto"                  # --instances auto: sim.instances_from_labels per frame
OUTPUT_FORMATS = ("png", "jpg", "mp4")   # mp4: one H.264 video per folder (video.py)
DEFAULT_MAX_PIXELS = 2048 * 2048 * 2     # twice Cityscapes' 2048x1024: an 8 K frame still fits


@dataclass
class RunOptions:
    """Every option of `run`, in one place: the CLI builds it, both executors take it."""
    labels: str | None = None            # folder, one PNG, or a URI; None: the bundled samples
    out: str = "out"
    instances: str | None = None         # a folder, or "auto": derived from each label map
    engine: str | None = None            # None: the bundled demo model
    device: str = "auto"
    precision: str = "fp32"
    mode: str = "auto"                   # PyTorch engine: auto, fast, plain
    # auto: a model.pt on a CPU runs on OpenVINO where it can (engines/choice.py), else
    # PyTorch; torch; openvino (a model.pt, .onnx or .xml on OpenVINO's CPU plugin)
    backend: str = "auto"
    compile: bool = False
    batch_size: int = 1
    max_delay_us: int = 2000
    workers: int | None = None
    format: str = "png"
    quality: int = 95
    fps: float = 30.0                    # --format mp4: frames per second of each video
    overwrite: bool = False
    style: str | None = None
    seed: int = 0
    style_image: str | None = None
    style_instances: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    summary_json: str | None = None
    progress: bool = True
    # Ray: None runs locally; "" the running (or a new local) cluster; "auto"; "ray://HEAD:10001"
    ray: str | None = None
    num_workers: int | None = None
    gpus_per_worker: float | None = None
    # ids (single-channel PNGs), color (RGB PNGs through a palette) or auto (by the PNG's mode)
    label_format: str = "auto"
    palette: str | None = None           # palette file for colour maps (label_names.py formats)
    label_map: str | None = None         # source ids/colours -> model ids (label_map.py formats)
    save_comparison: bool = False        # also OUT/compare/<name>.png: label | output [| photo]
    photos: str | None = None            # photos for the comparison, paired by relative name

    def __post_init__(self):
        checks = [("--batch-size", self.batch_size, 1, 4096), ("--quality", self.quality, 1, 100),
                  ("--max-delay-us", self.max_delay_us, 0, 60_000_000),
                  ("--max-pixels", self.max_pixels, 1, 2**34)]
        if self.workers is not None:
            checks.append(("--workers", self.workers, 1, 256))
        if self.num_workers is not None:
            checks.append(("--num-workers", self.num_workers, 1, 100_000))
        for name, value, lo, hi in checks:
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise OptionError(name, f"{value!r} is outside {lo}..{hi}")
        if self.backend not in ("auto", "torch", "openvino"):
            raise OptionError("--backend", f"{self.backend!r}: one of auto, torch, openvino")
        if self.label_format not in LABEL_FORMATS:
            raise OptionError("--label-format", f"{self.label_format!r}: one of "
                                                f"{', '.join(LABEL_FORMATS)}")
        if self.photos is not None and not self.save_comparison:
            raise OptionError("--photos", "photos go into the comparison pictures: add "
                                          "--save-comparison")
        if self.format not in OUTPUT_FORMATS:
            raise OptionError("--format", f"{self.format!r}: one of {', '.join(OUTPUT_FORMATS)}")
        if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or \
                not 0 < self.fps <= 1000:
            raise OptionError("--fps", f"{self.fps!r} is outside (0, 1000]")
        if self.gpus_per_worker is not None and not 0 <= self.gpus_per_worker <= 1024:
            raise OptionError("--gpus-per-worker", f"{self.gpus_per_worker!r} is outside 0..1024")


@dataclass(frozen=True)
class Job:
    """One frame to synthesize: locations of its maps and its output."""
    name: str                 # output name relative to the output folder, without suffix
    label: str
    inst: str | None          # None when no instance map was found
    out: str


@dataclass
class Plan:
    jobs: list[Job]           # what is left to do
    frames: int               # frames found
    skipped: int              # outputs that already existed


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

    def add_failure(self, record: dict) -> None:
        self.failed += 1
        self.failures.append(record)

    def line(self, where: str = "") -> str:
        ran = f"; {self.settings['ran']}" if self.settings.get("ran") else ""
        return (f"{self.frames} frames: {self.written} written, {self.skipped} skipped (exist), "
                f"{self.failed} failed; {self.frames_per_second:.2f} frames/s "
                f"({self.seconds:.1f} s){where}{ran}")

    def write_json(self, path: str) -> None:
        write_atomic(path, json.dumps(asdict(self), indent=2) + "\n", streams=True)


def sample_labels() -> Path:
    """The sample label maps bundled with the demo model."""
    from .engines import default_engine_path
    return default_engine_path().parent / "labels"


def _is_png(location: str) -> bool:
    return location.lower().endswith(".png")


def _instance_candidates(label: str, rel: str, instances: str | None) -> list[str]:
    sep = "/" if is_uri(label) else None
    cands = []
    if instances is not None:
        cands.append(join(instances, rel))
    for suffix in (LABEL_SUFFIX, COLOR_SUFFIX):
        if label.endswith(suffix):
            cands.append(label[: -len(suffix)] + INSTANCE_SUFFIX)
    parts = label.split("/") if sep else list(Path(label).parts)
    for i, part in enumerate(parts[:-1]):
        if part.endswith("_label"):      # test_label/ -> test_inst/, train_label/ -> train_inst/
            new = parts[:i] + [part[: -len("_label")] + "_inst"] + parts[i + 1:]
            cands.append("/".join(new) if sep else str(Path(*new)))
    return cands


def discover(labels: str, instances: str | None = None, *, label_format: str = "ids",
             images: bool = False) -> list[tuple[str, str, str | None]]:
    """(name, label, inst) for every label map under `labels` (a folder, searched recursively,
    or one file; local or a URI), sorted by name. `name` is the path relative to the folder
    without its suffix; `inst` is None where no instance map pairs. label_format "color" takes a
    Cityscapes folder's `*_color.png` maps instead of its `*_labelIds.png`; `images` (a label_nc 0
    model) takes JPEGs as well as PNGs."""
    labels = resolve(labels)
    if instances is not None:
        if is_uri(instances) != is_uri(labels):
            raise OptionError("--instances", "label maps and instance maps must both be local "
                                             "paths or both be URIs")
        instances = resolve(instances)
        if kind(instances) != "dir":
            raise InputError(instances, "instance folder does not exist")
    what = kind(labels)
    if what == "missing":
        raise InputError(labels, "no such file or folder")
    if what == "file":
        files, base = [labels], None
    else:
        base = labels
        files = [f for f in list_files(labels)
                 if (f.lower().endswith(IMAGE_SUFFIXES) if images else _is_png(f))]
        if not images and any(f.endswith(LABEL_SUFFIX) for f in files):
            # A Cityscapes folder also holds instance, colour and polygon files: labelIds only,
            # or its colour maps with --label-format color.
            suffix = COLOR_SUFFIX if label_format == "color" else LABEL_SUFFIX
            files = [f for f in files if f.endswith(suffix)]
    rows, wanted = [], []
    for f in files:
        rel = (f[len(base):].lstrip("/") if is_uri(f) else str(Path(f).relative_to(base))) \
            if base is not None else (f.rsplit("/", 1)[-1] if is_uri(f) else Path(f).name)
        cands = _instance_candidates(f, rel, instances)
        name = rel[: -len(Path(rel).suffix)] if Path(rel).suffix else rel
        rows.append((name, f, cands))
        wanted += cands
    found = existing(wanted)
    return [(name, f, next((c for c in cands if c in found), None)) for name, f, cands in rows]


def plan(opts: RunOptions, images: bool = False) -> Plan:
    """The jobs of a run: every frame found, less those whose output exists (unless
    overwrite). Refuses an output folder that would write onto an input file. images: the
    model takes RGB images (label_nc 0): JPEG inputs too."""
    labels = opts.labels
    instances = opts.instances
    if labels is None:
        labels = str(sample_labels())
        instances = instances or str(sample_labels().parent / "instances")
    if instances == AUTO_INSTANCES:      # derived from each label map: nothing to pair
        frames = [(name, label, None) for name, label, _ in
                  discover(labels, None, label_format=opts.label_format, images=images)]
    else:
        frames = discover(labels, instances, label_format=opts.label_format, images=images)
    out = resolve(opts.out)
    if not is_uri(out) and Path(out).exists() and not Path(out).is_dir():
        raise OptionError("--out", f"{out} is a file; --out is a folder")
    jobs = [Job(name, label, inst, join(out, f"{name}.{opts.format}"))
            for name, label, inst in frames]
    inputs = {j.label for j in jobs} | {j.inst for j in jobs if j.inst is not None}
    clash = next((j.out for j in jobs if j.out in inputs), None)
    if clash is not None:
        raise OptionError("--out", f"{out}: writing {clash} would overwrite an input map; choose "
                                   f"another output folder")
    if opts.overwrite:
        return Plan(jobs, len(jobs), 0)
    done = existing([j.out for j in jobs])
    todo = [j for j in jobs if j.out not in done]
    return Plan(todo, len(jobs), len(jobs) - len(todo))
