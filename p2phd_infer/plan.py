"""The run plan: what `p2phd-infer run` does, written once for every executor.

    RunOptions ─▶ plan(): discover the label maps, pair each with its instance map, name its
    output, drop outputs that exist ─▶ Plan (jobs) ─▶ an executor (local_run.py, ray_run.py)
    ─▶ RunSummary with one {file, fault} record per failed frame.

A frame's label map pairs with an instance map by, in order:
  1. the same relative name in the `instances` folder;
  2. Cityscapes names in one folder (`X_gtFine_labelIds.png` <-> `X_gtFine_instanceIds.png`);
  3. sibling folders: pix2pixHD's `test_label/` <-> `test_inst/` (and `train_A/` <->
     `train_inst/` for RGB inputs), the demo's `labels/` <-> `instances/`.
Locations are local paths or URIs (locations.py); the rules are the same for both.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .engines import BACKENDS, MODES, PRECISIONS
from .errors import InputError, OptionError
from .files import write_atomic
from .image_io import LABEL_FORMATS
from .limits import (DEFAULT_MAX_PIXELS, JPEG_QUALITY, MAX_BATCH, MAX_DELAY_US, MAX_FPS,
                     MAX_GPUS_PER_WORKER, MAX_PIXELS_LIMIT, MAX_RAY_WORKERS, MAX_THREADS)
from .locations import existing, is_uri, join, kind, list_files, resolve, what_is
from .options import check, setting
from .video import frame_rate

LABEL_SUFFIX = "_labelIds.png"
COLOR_SUFFIX = "_color.png"               # Cityscapes colour maps (--label-format color)
INSTANCE_SUFFIX = "_instanceIds.png"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # label_nc 0 models: the inputs are RGB images
AUTO_INSTANCES = "auto"                  # --instances auto: sim.instances_from_labels per frame
OUTPUT_FORMATS = ("png", "jpg", "mp4")   # mp4: one H.264 video per folder (video.py)


@dataclass
class EngineOptions:
    """How a command that synthesizes (run, serve, edit, evaluate) chooses and opens its
    engine."""
    engine: str | None = setting(
        None, "model.pt, .pt2, .onnx, .plan or .xml (OpenVINO).", path="file",
        renamed_from=("--model",), shown_default="the bundled demo model")
    device: str = setting("auto", "cpu, cuda, cuda:N or auto.")
    precision: str = setting("fp32", "fp32; fp16 (CUDA); bf16 (CUDA, or a CPU with native "
                                     "BF16); int8 (OpenVINO on a CPU with VNNI/AMX: the model.pt "
                                     "quantized by NNCF, once, cached).", choices=PRECISIONS)
    calibration: str | None = setting(
        None, "--precision int8: folder of label maps (PNG) to calibrate on (instance maps in a "
              "sibling instances/ folder).", path="dir", shown_default="the bundled samples")
    mode: str = setting("auto", "PyTorch engines: auto (the fast CUDA path, checked once against "
                                "the plain network, else plain), fast (CUDA only, no fallback) "
                                "or plain.", choices=MODES)

    def __post_init__(self):
        check(self)


@dataclass
class RunOptions(EngineOptions):
    """Every option of `run`, in one place: the command line is generated from it
    (cli/options.py), both executors take it, and it is checked whole when built."""
    labels: str | None = setting(None, "", argument=True, path="any")  # None: bundled samples
    # a folder, or "auto": derived from each label map
    instances: str | None = setting(
        None, "Folder of instance maps with the same file names as the label maps, or 'auto': "
              "derive each frame's instance map from its label map (connected regions of each "
              "thing class, numbered class*1000+k).", path="dir")
    out: str = setting("out", "Output folder.", path="dir", required=True)
    # auto: a model.pt on a CPU runs on OpenVINO where it can (engines/choice.py), else
    # PyTorch; torch; openvino (a model.pt, .onnx or .xml on OpenVINO's CPU plugin)
    backend: str = setting(
        "auto", "What runs a model.pt: auto (on a CPU OpenVINO, converted once per frame size "
                "and cached, unless --mode plain/--compile/fp16; else PyTorch), torch, or "
                "openvino (also runs an .onnx on OpenVINO).", choices=BACKENDS)
    compile: bool = setting(
        False, "torch.compile the PyTorch engine (the first batch of each size is slow).")
    batch_size: int = setting(1, "Most frames per engine call (same-size frames batch together).",
                              bounds=(1, MAX_BATCH))
    max_queue_delay_us: int = setting(
        2000, "How long a batch waits for more frames of its size, in microseconds.",
        bounds=(0, MAX_DELAY_US), renamed_from=("--max-delay-us",))
    workers: int | None = setting(None, "Decode threads and encode threads, each.",
                                  bounds=(1, MAX_THREADS), shown_default="CPU count, 2 to 8")
    format: str = setting(
        "png", "Output format (PNG lossless, through fpng when installed; mp4: one H.264 video "
               "per folder of frames, in name order).", choices=OUTPUT_FORMATS)
    fps: float = setting(30.0, "--format mp4: frames per second.", bounds=(0, MAX_FPS),
                         open="lo", check=frame_rate)
    jpeg_quality: int = setting(95, "--format jpg: JPEG quality.", bounds=JPEG_QUALITY,
                                renamed_from=("--quality",))
    overwrite: bool = setting(False, "Rewrite outputs that already exist.")
    style: str | None = setting(
        None, "Features models: fixed cluster per label, e.g. 'car=3,road=1' or '*=0'.")
    seed: int = setting(0, "Features models: seed of the per-instance cluster choice.")
    style_image: str | None = setting(
        None, "Features models: a photo whose instances give the styles (needs the encoder).",
        path="file")
    style_instances: str | None = setting(None, "Instance map of --style-image.", path="file")
    max_pixels: int = setting(
        DEFAULT_MAX_PIXELS, "Refuse frames with more pixels than this (a frame's one-hot grows "
                            "with it).", bounds=(1, MAX_PIXELS_LIMIT))
    # ids (single-channel PNGs), color (RGB PNGs through a palette) or auto (by the PNG's mode)
    label_format: str = setting(
        "auto", "Label maps: ids (single-channel PNGs of class ids), color (RGB PNGs, e.g. "
                "Cityscapes *_color.png or a simulator's semantic camera, mapped to ids by the "
                "palette), auto (by the PNG: one channel ids, RGB/RGBA colours) or carla (CARLA "
                "0.9.14+ segmentation cameras: tag in red; instance camera PNGs as --instances).",
        choices=LABEL_FORMATS)
    # source ids/colours -> model ids (label_map.py formats)
    label_map: str | None = setting(
        None, "Source ids (or colours) -> the model's ids: JSON {\"14\": 26} or `SOURCE ID` "
              "lines; with --label-format carla it replaces the built-in table.", path="file")
    palette: str | None = setting(
        None, "Colours -> ids for colour maps: JSON or `ID NAME R G B` lines (the --label-names "
              "formats).", path="file", shown_default="the model's label colours, else "
                                                      "Cityscapes'")
    save_comparison: bool = setting(
        False, "Also write OUT/compare/<name>.png: the label map in colour | the output "
               "[| the photo].")
    photos: str | None = setting(
        None, "--save-comparison: folder of photos paired with the label maps by name.",
        path="dir")
    summary_json: str | None = setting(
        None, "Also write the summary (counts, frames/s, each failure) as JSON here.",
        path="file")
    progress: bool = setting(True, "No progress bar.", flag="--no-progress")
    # Ray: None runs locally; "" the running (or a new local) cluster; "auto"; "ray://HEAD:10001"
    ray: str | None = setting(
        None, "Run on a Ray cluster: the running one or a new local one, or ADDRESS ('auto', "
              "'ray://HEAD:10001'). LABELS and --out may be URIs (s3://...). Put --ray after "
              "LABELS, or write --ray=ADDRESS.", metavar="[ADDRESS]",
        click=dict(is_flag=False, flag_value=""))
    num_workers: int | None = setting(
        None, "--ray: synthesis actors, one engine each.", bounds=(1, MAX_RAY_WORKERS),
        shown_default="one per GPU, or per CPU")
    gpus_per_worker: float | None = setting(
        None, "--ray: GPUs per actor, fractions share a GPU.", bounds=(0, MAX_GPUS_PER_WORKER),
        shown_default="1 if the cluster has GPUs")

    def __post_init__(self):
        check(self)
        if self.photos is not None and not self.save_comparison:
            raise OptionError("--photos", "photos go into the comparison pictures: add "
                                          "--save-comparison")
        if self.format == "mp4" and self.ray is not None:
            raise OptionError("--format", "mp4 is encoded by the local executor; drop --ray")
        # Ray's workers build the same Runtime as a local run (Runtime.from_options: label
        # format, palette, label map, derived instances); comparison pictures are local only.
        if self.ray is not None and self.save_comparison:
            raise OptionError("--save-comparison", "runs on the local executor only (for now); "
                                                   "drop --ray")


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
    # Engine start to first frame written (local runs), and the frames/s after the first.
    first_frame_seconds: float | None = None
    steady_frames_per_second: float | None = None
    failures: list[dict] = field(default_factory=list)   # {"file": ..., "fault": ...}
    settings: dict = field(default_factory=dict)
    videos: int | None = None     # --format mp4: videos written (`written` counts their frames)

    def add_failure(self, record: dict) -> None:
        self.failed += 1
        self.failures.append(record)

    def line(self, where: str = "") -> str:
        ran = f"; {self.settings['ran']}" if self.settings.get("ran") else ""
        start = ""
        if self.first_frame_seconds is not None:
            start = f"; first frame {self.first_frame_seconds:.2f} s after the engine began " \
                    f"loading" + (f", then {self.steady_frames_per_second:.2f} frames/s"
                                  if self.steady_frames_per_second else "")
        written = f"{self.written} written" if self.videos is None else \
            f"{self.written} written in {self.videos} video{'s' if self.videos != 1 else ''}"
        return (f"{self.frames} frames: {written}, {self.skipped} skipped (exist), "
                f"{self.failed} failed; {self.frames_per_second:.2f} frames/s "
                f"({self.seconds:.1f} s){start}{where}{ran}")

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
        sibling = _sibling_folder(part)
        if sibling is not None:
            new = parts[:i] + [sibling] + parts[i + 1:]
            cands.append("/".join(new) if sep else str(Path(*new)))
    return cands


# Folders of label maps and the sibling folder of their instance maps: pix2pixHD's
# PHASE_label/ <-> PHASE_inst/ and, for label_nc 0 (RGB inputs), PHASE_A/ <-> PHASE_inst/; and
# the plain labels/ <-> instances/ of the bundled demo.
SIBLING_SUFFIXES = (("_label", "_inst"), ("_A", "_inst"))
SIBLING_NAMES = {"labels": "instances", "label": "instances"}


def _sibling_folder(name: str) -> str | None:
    if name in SIBLING_NAMES:
        return SIBLING_NAMES[name]
    for suffix, inst in SIBLING_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)] + inst
    return None


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
    if not is_uri(out) and kind(out) == "file":
        raise OptionError("--out", f"{out} is {what_is(out)}; --out is a folder")
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
