#!/usr/bin/env python
"""Throughput of every engine present, engine-only and end-to-end, each as a ratio to the
published method run the plain PyTorch way.

  engine-only  ids already on the device -> engine -> float image (synchronised at the end).
  end-to-end   label + instance PNG files -> Runtime (decode, batch, engine, uint8, encode) ->
               image files, through the executor `p2phd-infer run` uses (local_run.run_jobs
               over a plan.Plan of Jobs).
  engines      model.pt as TorchEngine mode="plain" (eager; torch.compile with --compile), on
               CUDA also mode="fast" (the fast path: an error, not a silent fall-back, if it
               cannot run), and the exported engines given or built here.
  baseline     the official generator shape (ModelConfig(): local enhancer, ngf 32, 36 inputs),
               fp32 eager, batch 1, under no_grad, as NVIDIA's test.py runs it: a float label map
               one-hot encoded with a scatter, edges from float instance ids, then G. Its
               end-to-end twin is a serial loop: Pillow decode, forward, tensor-to-numpy on the
               host, Pillow encode in the same format as the row it is compared with.

fp32 rows run with TF32 off (strict fp32, like the baseline); a tf32 precision row turns it on.
Weights are random unless --engine gives a model: speed does not depend on the values.

    python benchmarks/throughput.py --quick                 # CPU, 256x128, 20-60 s on 2 cores
    python benchmarks/throughput.py --size 2048x1024 --device cuda --out-dir benchmarks/results
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

from p2phd_infer.checkpoint import Checkpoint, load_checkpoint
from p2phd_infer.config import ModelConfig
from p2phd_infer.engines import TorchEngine, open_engine, resolve_device
from p2phd_infer.errors import Error
from p2phd_infer.files import write_atomic
from p2phd_infer.local_run import run_jobs
from p2phd_infer.networks import build_generator
from p2phd_infer.plan import Job, Plan, RunOptions

BUILDERS = ("onnx", "aoti", "aoti-fp16", "tensorrt")   # engines p2phd_infer.export can build


def build_engine_file(kind: str, ckpt: Checkpoint, work: Path, H: int, W: int, max_batch: int,
                      device: torch.device) -> Path:
    """Export `kind` with p2phd_infer.export (ImportError when that module is absent)."""
    if kind in ("onnx", "tensorrt"):
        from p2phd_infer.export.onnx_export import export_onnx
        if kind == "onnx":
            onnx_path = work / "built.onnx"
            if not onnx_path.exists():
                export_onnx(ckpt, onnx_path, H, W, max_batch=max_batch)
            return onnx_path
        from p2phd_infer.export.tensorrt_build import build_tensorrt
        onnx_path = work / "built_fp16.onnx"       # TensorRT builds strongly typed from fp16
        if not onnx_path.exists():
            export_onnx(ckpt, onnx_path, H, W, max_batch=max_batch, precision="fp16")
        plan = work / "built.plan"
        build_tensorrt(onnx_path, plan, max_batch=max_batch, fp16=True, device=device,
                       log=lambda *a, **k: None)
        return plan
    from p2phd_infer.export.aoti_export import export_aoti
    fp16 = kind == "aoti-fp16"
    target = work / f"built{'_fp16' if fp16 else ''}.pt2"
    export_aoti(ckpt, target, H, W, max_batch=max_batch, device=device, fp16=fp16)
    return target


@dataclass
class Row:
    mode: str                 # engine-only | end-to-end
    engine: str               # what ran
    precision: str
    batch: int
    frames: int               # frames timed
    ms_per_frame: float
    frames_per_s: float
    peak_mem_mib: float
    mem_kind: str             # cuda max_memory_allocated | process RSS
    format: str = ""          # output format (end-to-end)
    files: int = 0            # end-to-end: output files found on disk after the timed run
    outputs: str = ""         # end-to-end: their folder, relative to the work folder
    vs_baseline: float = 0.0  # baseline ms/frame / this row's ms/frame (same mode and format)
    note: str = ""
    # The engine's 8-bit image of the engine-only input against model.pt fp32 plain's
    # (evaluate.engine_quality); None for the baseline, whose weights are its own.
    psnr_db: float | None = None
    max_diff: int | None = None
    quality: str = ""


# ---------------------------------------------------------------- memory and timing

class PeakMemory:
    """Peak over a block: CUDA max_memory_allocated on a GPU, else the process RSS, sampled."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._stop = threading.Event()
            self.peak = _rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss())

    @property
    def kind(self) -> str:
        return "cuda max_memory_allocated" if self.device.type == "cuda" else "process RSS"

    @property
    def mib(self) -> float:
        return self.peak / 2**20


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:   # not Linux: the process's peak so far
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def off_main(fn, *args, **kwargs):
    """Run fn in a fresh thread and return its result. The Runtime computes in its batcher
    thread; every other timed loop runs off the main thread too, so that all rows share one
    threading setup: on a busy CPU, OpenMP's spin-waiting costs a main-thread loop up to 3x
    (measured on the 2-core dev box), which would flatter the runtime against the baseline."""
    box = {}

    def target():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=target, name="p2phd-bench")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def tf32(enabled: bool):
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


# ---------------------------------------------------------------- inputs

def random_scene(rng: np.random.Generator, h: int, w: int, label_nc: int):
    """Blocky label map with Cityscapes-style instance ids (class*1000+k for label >= 24)."""
    cell = max(4, min(h, w) // 16)
    gh, gw = -(-h // cell), -(-w // cell)
    label = rng.integers(0, label_nc, (gh, gw)).repeat(cell, 0).repeat(cell, 1)[:h, :w]
    inst = np.where(label >= 24, label * 1000 + rng.integers(0, 8, label.shape), label)
    return label.astype(np.int32), inst.astype(np.int32)


def random_checkpoint(cfg: ModelConfig, seed: int = 0) -> Checkpoint:
    """Random weights scaled by 1/sqrt(fan-in), made without running the slow default init."""
    with torch.device("meta"):
        net = build_generator(cfg)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in net.state_dict().items():
        fan_in = int(np.prod(v.shape[1:])) if v.dim() > 1 else 1
        state[k] = torch.randn(v.shape, generator=g) / max(1.0, fan_in) ** 0.5
    return Checkpoint(cfg, state)


@dataclass(frozen=True)
class Frame:
    """One end-to-end input: a name and its label and instance PNG files."""
    name: str
    label: Path
    inst: Path


def write_inputs(folder: Path, n_files: int, n_frames: int, h: int, w: int, label_nc: int
                 ) -> list[Frame]:
    """n_files label/instance PNG pairs, used round-robin for n_frames frames."""
    rng = np.random.default_rng(0)
    (folder / "label").mkdir(parents=True, exist_ok=True)
    (folder / "inst").mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n_files):
        label, inst = random_scene(rng, h, w, label_nc)
        lp, ip = folder / "label" / f"{i}.png", folder / "inst" / f"{i}.png"
        Image.fromarray(label.astype(np.uint8 if label_nc <= 256 else np.uint16)).save(lp)
        Image.fromarray(inst.astype(np.uint16)).save(ip)
        files.append((lp, ip))
    return [Frame(f"f{i:05d}", *files[i % n_files]) for i in range(n_frames)]


# ---------------------------------------------------------------- the baseline (official way)

def official_inputs(label: np.ndarray, inst: np.ndarray, device):
    """What the official data loader hands the model: float tensors [1,1,H,W]."""
    return (torch.from_numpy(label).float()[None, None].to(device),
            torch.from_numpy(inst).float()[None, None].to(device))


def official_encode(label: torch.Tensor, inst: torch.Tensor, label_nc: int) -> torch.Tensor:
    """As pix2pixHD's encode_input: one-hot by scatter into a zero tensor, edges by comparing
    float instance ids with their 4 neighbours, concatenated."""
    B, _, H, W = label.shape
    one_hot = torch.zeros(B, label_nc, H, W, device=label.device).scatter_(1, label.long(), 1.0)
    edge = torch.zeros_like(inst, dtype=torch.bool)
    dx = inst[..., :, 1:] != inst[..., :, :-1]
    dy = inst[..., 1:, :] != inst[..., :-1, :]
    edge[..., :, 1:] |= dx
    edge[..., :, :-1] |= dx
    edge[..., 1:, :] |= dy
    edge[..., :-1, :] |= dy
    return torch.cat([one_hot, edge.float()], 1)


def official_tensor2im(image: torch.Tensor) -> np.ndarray:
    """As the official util.tensor2im: to the host, [-1,1] -> [0,255] in numpy, truncating."""
    x = image[0].cpu().float().numpy()
    x = (np.transpose(x, (1, 2, 0)) + 1) / 2.0 * 255.0
    return np.clip(x, 0, 255).astype(np.uint8)


class Baseline:
    def __init__(self, ckpt: Checkpoint, device: torch.device):
        self.cfg = ckpt.config
        self.device = device
        with torch.device("meta"):
            net = build_generator(self.cfg)
        net.load_state_dict(ckpt.generator, assign=True)
        self.net = net.to(device).eval()

    def forward(self, label_f, inst_f):
        with torch.no_grad():
            return self.net(official_encode(label_f, inst_f, self.cfg.label_nc))

    def engine_only(self, label, inst, warmup: int, frames: int) -> Row:
        label_f, inst_f = official_inputs(label, inst, self.device)
        with tf32(False):
            for _ in range(warmup):
                self.forward(label_f, inst_f)
            with PeakMemory(self.device) as mem:
                t0 = time.perf_counter()
                for _ in range(frames):
                    self.forward(label_f, inst_f)
                sync(self.device)
                dt = time.perf_counter() - t0
        return _row("engine-only", "baseline: official G, eager", "fp32", 1, frames, dt, mem)

    def end_to_end(self, frames: list[Frame], out: Path, fmt: str, quality: int,
                   warmup: bool) -> Row:
        def one(f: Frame):
            label = np.asarray(Image.open(f.label), dtype=np.int32)
            inst = np.asarray(Image.open(f.inst)).astype(np.int32)
            rgb = official_tensor2im(self.forward(*official_inputs(label, inst, self.device)))
            kw = {"quality": quality} if fmt == "jpg" else {}
            Image.fromarray(rgb).save(out / f"{f.name}.{fmt}", **kw)

        out.mkdir(parents=True, exist_ok=True)
        with tf32(False):
            if warmup:
                one(frames[0])
            with PeakMemory(self.device) as mem:
                t0 = time.perf_counter()
                for f in frames:
                    one(f)
                dt = time.perf_counter() - t0
        files = sum(1 for _ in out.glob(f"*.{fmt}"))
        return _row("end-to-end", "baseline: official G, eager, serial", "fp32", 1, len(frames),
                    dt, mem, format=fmt, files=files, outputs=str(out),
                    note="Pillow decode/encode, one frame at a time")


def _row(mode, engine, precision, batch, frames, seconds, mem: PeakMemory, **kw) -> Row:
    return Row(mode, engine, precision, batch, frames, 1000 * seconds / frames, frames / seconds,
               round(mem.mib, 1), mem.kind, **kw)


# ---------------------------------------------------------------- our engines

@dataclass
class EngineSpec:
    name: str
    precision: str
    make: object              # () -> Engine
    note: str = ""


def engine_only(engine, name, precision, label, inst, batch, warmup, frames, device) -> Row:
    lab = torch.from_numpy(label)[None, None].repeat(batch, 1, 1, 1).to(engine.device)
    ins = torch.from_numpy(inst)[None, None].repeat(batch, 1, 1, 1).to(engine.device)
    feat = None
    if engine.config.feat_num > 0:
        feat = torch.zeros(batch, engine.config.feat_num, *label.shape, device=engine.device)
    calls = max(1, -(-frames // batch))
    with tf32(precision == "tf32"):
        for _ in range(warmup):
            engine(lab, ins, feat)
        with PeakMemory(device) as mem:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(calls):
                engine(lab, ins, feat)
            sync(device)
            dt = time.perf_counter() - t0
    return _row("engine-only", name, precision, batch, calls * batch, dt, mem)


def image_of(engine, precision, label, inst) -> np.ndarray:
    """The engine's uint8 [H,W,3] image of one frame."""
    from p2phd_infer.synthesizer import to_uint8
    lab = torch.from_numpy(label)[None, None].to(engine.device)
    ins = torch.from_numpy(inst)[None, None].to(engine.device)
    feat = None
    if engine.config.feat_num > 0:
        feat = torch.zeros(1, engine.config.feat_num, *label.shape, device=engine.device)
    with tf32(precision == "tf32"), torch.inference_mode():
        return to_uint8(engine(lab, ins, feat))[0].cpu().numpy()


def quality_of(image: np.ndarray, reference: np.ndarray) -> tuple[float | None, int, str]:
    """(PSNR dB or None when identical, max level difference, the table's text)."""
    from p2phd_infer.evaluate import engine_quality
    q = engine_quality({"frame": image}, {"frame": reference})
    text = "identical" if q["max_diff"] == 0 else \
        f"{q['psnr_db']:.1f} dB, SSIM {q['ssim']:.4f}, max {q['max_diff']}"
    return q["psnr_db"], q["max_diff"], text


def run_plan(frames: list[Frame], out: Path, fmt: str) -> Plan:
    """The plan `p2phd-infer run` would make for these inputs into an empty folder `out`."""
    jobs = [Job(f.name, str(f.label), str(f.inst), str(out / f"{f.name}.{fmt}")) for f in frames]
    return Plan(jobs, len(jobs), 0)


def end_to_end(engine, name, precision, frames: list[Frame], out: Path, batch, fmt, quality,
               workers, delay_us, device, warmup: bool) -> Row:
    opts = RunOptions(batch_size=batch, max_queue_delay_us=delay_us, workers=workers, format=fmt,
                      jpeg_quality=quality, progress=False)
    with tf32(precision == "tf32"):
        if warmup:   # the engine-only row warmed the engine at this batch size; this warms the rest
            warm = run_jobs(engine, None, run_plan(frames[:batch], out / "warmup", fmt), opts)
            if warm.failed:
                raise RuntimeError(f"{name}: {warm.failures[0]}")
        with PeakMemory(device) as mem:
            s = run_jobs(engine, None, run_plan(frames, out / "timed", fmt), opts)
    if s.failed:
        raise RuntimeError(f"{name}: {s.failures[0]}")
    files = sum(1 for _ in (out / "timed").glob(f"*.{fmt}"))
    return _row("end-to-end", name, precision, batch, s.written, s.seconds, mem, format=fmt,
                files=files, outputs=str(out / "timed"),
                note=f"{workers} decode + {workers} encode threads")


def engine_specs(ckpt: Checkpoint, ckpt_name: str, device: torch.device, precisions, compile_,
                 paths, builds, size, max_batch, work: Path):
    """Every engine to time: model.pt eager (and compiled) per precision, engine files given,
    and engines built on the fly by p2phd_infer.export where it offers a builder."""
    specs = []
    for prec in precisions:
        if prec in ("fp16", "tf32") and device.type != "cuda":
            continue
        # tf32 is the fp32 engine with TF32 convolutions allowed (tf32() around its rows).
        p = "fp32" if prec == "tf32" else prec
        # Plain rows (mode="plain") are the official module tree; the fast path gets its own rows
        # (mode="fast": an error if it cannot run, never a silent fall-back to plain), so every
        # row measures what its name says. `run`'s default on CUDA, mode="auto", is the fast row
        # when its check passes.
        specs.append(EngineSpec(f"{ckpt_name} eager", prec,
                                lambda p=p: TorchEngine(ckpt, device, precision=p, mode="plain")))
        if compile_:
            specs.append(EngineSpec(f"{ckpt_name} torch.compile", prec,
                                    lambda p=p: TorchEngine(ckpt, device, precision=p,
                                                            compile="default", mode="plain")))
        if device.type == "cuda":
            specs.append(EngineSpec(f"{ckpt_name} fast (run's default)", prec,
                                    lambda p=p: TorchEngine(ckpt, device, precision=p,
                                                            mode="fast")))
            if compile_:
                specs.append(EngineSpec(f"{ckpt_name} fast + torch.compile", prec,
                                        lambda p=p: TorchEngine(ckpt, device, precision=p,
                                                                compile="default", mode="fast")))
    for p in paths:
        specs.append(EngineSpec(Path(p).name, "file", lambda p=p: open_engine(p, device)))
    H, W = size
    for kind in builds:
        if kind in ("aoti-fp16", "tensorrt") and device.type != "cuda":
            continue
        specs.append(EngineSpec(f"{kind} (built here)", "file",
                                lambda kind=kind: open_engine(build_engine_file(
                                    kind, ckpt, work, H, W, max_batch, device), device)))
    return specs


# ---------------------------------------------------------------- report

def markdown(meta: dict, rows: list[Row]) -> str:
    lines = [f"Throughput at {meta['size']} on {meta['device_name']} ({meta['date']}), "
             f"torch {meta['torch']}. {meta['weights']}.", "",
             "| mode | engine | precision | batch | format | ms/frame | frames/s | × baseline "
             "| peak MiB | quality vs fp32 | note |",
             "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in rows:
        lines.append(f"| {r.mode} | {r.engine} | {r.precision} | {r.batch} | {r.format or '-'} "
                     f"| {r.ms_per_frame:.2f} | {r.frames_per_s:.2f} | {r.vs_baseline:.2f} "
                     f"| {r.peak_mem_mib:.0f} | {r.quality or '-'} | {r.note} |")
    lines += ["", f"× baseline: the baseline's ms/frame divided by the row's (same mode and "
                  f"format); above 1 is faster. Peak memory: {rows[0].mem_kind if rows else ''}"
                  f" (on CUDA, ONNX Runtime and TensorRT workspaces outside torch's allocator "
                  f"are not counted). Quality: the engine's 8-bit image of the engine-only frame "
                  f"against {meta.get('quality_reference', 'model.pt fp32')}'s (PSNR, SSIM, "
                  f"largest level difference; `benchmarks/quality.py` adds the segmentation "
                  f"score and FID on real scenes)."]
    return "\n".join(lines) + "\n"


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(h), int(w)


@click.command()
@click.option("--quick", is_flag=True,
              help="CPU, 256x128, batches 1 and 2, 2 frames a row, fp32 eager only, nothing "
                   "built: about a minute on 2 cores. Options given explicitly still apply.")
@click.option("--size", default="2048x1024", show_default=True, help="WIDTHxHEIGHT.")
@click.option("--device", default="auto", show_default=True)
@click.option("--model", type=click.Path(dir_okay=False),
              help="model.pt to time (default: random weights in the official shape).")
@click.option("--engine", "engine_paths", multiple=True, type=click.Path(dir_okay=False),
              help="Engine files (.pt2, .onnx, .plan) to time as well; repeatable.")
@click.option("--build", default="onnx,aoti,aoti-fp16,tensorrt", show_default=True,
              help="Engines to build on the fly with p2phd_infer.export ('' for none); fp16 AOTI "
                   "and TensorRT on CUDA only.")
@click.option("--batch-sizes", default="1,2,4,8", show_default=True)
@click.option("--precisions", default="fp32,tf32,fp16", show_default=True,
              help="tf32 and fp16 run on CUDA only.")
@click.option("--compile/--no-compile", "compile_", default=None,
              help="Also time torch.compile  [default: on for CUDA].")
@click.option("--frames", default=32, show_default=True, help="Frames timed per row.")
@click.option("--warmup", default=3, show_default=True, help="Untimed calls before each row.")
@click.option("--formats", default="jpg,png", show_default=True, help="End-to-end outputs.")
@click.option("--jpeg-quality", "quality", default=95, show_default=True,
              help="JPEG quality of the jpg rows (run --jpeg-quality).")
@click.option("--workers", type=int, default=None, help="Runtime decode/encode threads each.")
@click.option("--max-queue-delay-us", "max_delay_us", default=2000, show_default=True,
              help="The Runtime's batching delay (run --max-queue-delay-us).")
@click.option("--out-dir", default="benchmarks/results", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--work-dir", type=click.Path(file_okay=False),
              help="Keep the input PNGs and every row's output images in this new or empty "
                   "folder (default: a temporary folder, removed at the end).")
def main(quick, size, device, model, engine_paths, build, batch_sizes, precisions, compile_,
         frames, warmup, formats, quality, workers, max_delay_us, out_dir, work_dir):
    """Engine-only and end-to-end throughput of every engine, as ratios to the official way."""
    if quick:   # small CPU defaults; options given on the command line still win
        given = click.get_current_context().get_parameter_source
        quick_defaults = {"size": "256x128", "device": "cpu", "batch_sizes": "1,2",
                          "precisions": "fp32", "frames": 2, "warmup": 1, "build": ""}
        values = dict(size=size, device=device, batch_sizes=batch_sizes, precisions=precisions,
                      frames=frames, warmup=warmup, build=build)
        for k, v in quick_defaults.items():
            if given(k) == click.core.ParameterSource.DEFAULT:
                values[k] = v
        size, device, batch_sizes, precisions, frames, warmup, build = values.values()
        compile_ = False if compile_ is None else compile_
    H, W = parse_size(size)
    try:
        dev = resolve_device(device)
    except Error as e:
        raise click.ClickException(str(e))
    compile_ = dev.type == "cuda" if compile_ is None else compile_
    batches = [int(b) for b in batch_sizes.split(",") if b]
    precs = [p for p in precisions.split(",") if p]
    fmts = [f for f in formats.split(",") if f]
    builds = [b for b in build.split(",") if b]
    for b in builds:
        if b not in BUILDERS:
            raise click.ClickException(f"--build {b!r}: one of {', '.join(BUILDERS)}")
    workers = workers or max(2, min(16, os.cpu_count() or 2))
    torch.backends.cudnn.benchmark = dev.type == "cuda"
    if compile_:
        torch._dynamo.config.automatic_dynamic_shapes = False     # one static graph per batch
        torch._dynamo.config.cache_size_limit = max(16, 2 * len(batches))

    official = ModelConfig()
    baseline_ckpt = random_checkpoint(official)
    if model:
        ckpt, ckpt_name, weights = load_checkpoint(model), Path(model).name, f"weights: {model}"
    else:
        ckpt, ckpt_name = baseline_ckpt, "model.pt"
        weights = "Random weights (timing does not depend on them)"
    for cfg in {official, ckpt.config}:
        if H % cfg.stride or W % cfg.stride or min(H, W) < 2 * cfg.stride:
            # the innermost feature map must be at least 2 px for the reflection padding
            raise click.ClickException(f"--size {size}: sides must be multiples of {cfg.stride}, "
                                       f"at least {2 * cfg.stride}")

    meta = {"size": f"{W}x{H}", "device": str(dev), "date": datetime.date.today().isoformat(),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda"
            else f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
            "torch": torch.__version__, "weights": weights, "quick": quick,
            "model_config": ckpt.config.to_dict(), "baseline_config": official.to_dict(),
            "workers": workers, "max_delay_us": max_delay_us}
    rng = np.random.default_rng(0)
    label, inst = random_scene(rng, H, W, official.label_nc)
    rows: list[Row] = []
    skipped: list[str] = []
    out_dir = Path(out_dir)
    t_start = time.perf_counter()

    def say(row: Row):
        click.echo(f"  {row.mode:11s} {row.engine:40s} {row.precision:5s} b{row.batch:<3d} "
                   f"{row.format or '-':4s} {row.ms_per_frame:9.2f} ms/frame "
                   f"{row.frames_per_s:8.2f} frames/s  {row.peak_mem_mib:8.0f} MiB", err=True)

    if work_dir is not None:
        if Path(work_dir).exists() and any(Path(work_dir).iterdir()):
            raise click.ClickException(f"--work-dir {work_dir}: not empty")
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    with (nullcontext(work_dir) if work_dir is not None
          else tempfile.TemporaryDirectory(prefix="p2phd-bench-")) as tmp:
        tmp = Path(tmp)
        n_e2e = -(-max(frames, max(batches)) // max(batches)) * max(batches)   # full batches
        inputs = write_inputs(tmp / "in", min(n_e2e, 16), n_e2e, H, W, official.label_nc)
        meta["end_to_end_frames"] = n_e2e     # what each engine's end-to-end row must write
        click.echo(f"baseline (official G {W}x{H}, fp32 eager, batch 1, no_grad)", err=True)
        base = Baseline(baseline_ckpt, dev)
        b_eng = off_main(base.engine_only, label, inst, warmup, max(2, min(frames, 8)))
        b_eng.vs_baseline = 1.0
        rows.append(b_eng)
        say(b_eng)
        b_e2e = {}
        for fmt in fmts:
            b_e2e[fmt] = off_main(base.end_to_end, inputs[: max(2, min(frames, 8))],
                                  tmp / f"base_{fmt}", fmt, quality, warmup=not quick)
            b_e2e[fmt].vs_baseline = 1.0
            b_e2e[fmt].outputs = str(Path(b_e2e[fmt].outputs).relative_to(tmp))
            rows.append(b_e2e[fmt])
            say(b_e2e[fmt])
        del base
        # The quality reference: model.pt in strict fp32, plain, on this device.
        reference = off_main(image_of, TorchEngine(ckpt, dev, precision="fp32", mode="plain"),
                             "fp32", label, inst)
        meta["quality_reference"] = f"{ckpt_name} fp32 plain on {dev.type}"
        for spec in engine_specs(ckpt, ckpt_name, dev, precs, compile_, engine_paths, builds,
                                 (H, W), max(batches), tmp):
            click.echo(f"{spec.name} {spec.precision}", err=True)
            try:
                engine = spec.make()
            except Exception as e:  # noqa: BLE001 - a missing backend skips its rows only
                skipped.append(f"{spec.name} {spec.precision}: {e.__class__.__name__}: {e}")
                click.echo(f"skip {spec.name}: {e}", err=True)
                continue
            precision = engine.info.precision if spec.precision == "file" else spec.precision
            providers = getattr(engine, "providers", None)     # ONNX Runtime: which one ran
            note = f"{providers[0]}" if providers else ""
            try:
                judged = quality_of(off_main(image_of, engine, precision, label, inst),
                                    reference)
            except Exception as e:  # noqa: BLE001 - e.g. a fixed-batch engine: no figure then
                judged = (None, None, f"not measured ({e.__class__.__name__})")
            for b in batches:
                if engine.info.max_batch is not None and b > engine.info.max_batch:
                    continue
                try:
                    r = off_main(engine_only, engine, spec.name, precision, label, inst, b,
                                 warmup, frames, dev)
                    r.vs_baseline = b_eng.ms_per_frame / r.ms_per_frame
                    r.note = note
                    r.psnr_db, r.max_diff, r.quality = judged
                    rows.append(r)
                    say(r)
                    for fmt in fmts:
                        r = end_to_end(engine, spec.name, precision, inputs,
                                       tmp / f"{len(rows)}", b, fmt, quality, workers,
                                       max_delay_us, dev, warmup=not quick)
                        r.vs_baseline = b_e2e[fmt].ms_per_frame / r.ms_per_frame
                        r.outputs = str(Path(r.outputs).relative_to(tmp))
                        r.psnr_db, r.max_diff, r.quality = judged
                        rows.append(r)
                        say(r)
                except Exception as e:  # noqa: BLE001 - e.g. out of memory at a large batch
                    skipped.append(f"{spec.name} {precision} batch {b}: "
                                   f"{e.__class__.__name__}: {e}")
                    click.echo(f"skip {spec.name} batch {b}: {e}", err=True)
            del engine
            if dev.type == "cuda":
                torch.cuda.empty_cache()

    meta["seconds"] = round(time.perf_counter() - t_start, 1)
    meta["skipped"] = skipped
    stem = "throughput_quick" if quick else f"throughput_{dev.type}_{W}x{H}"
    write_atomic(out_dir / f"{stem}.json",
                 json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    table = markdown(meta, rows)
    if skipped:
        table += "\nNot timed:\n" + "".join(f"- {s}\n" for s in skipped)
    write_atomic(out_dir / f"{stem}.md", table)
    click.echo(table)
    click.echo(f"wrote {out_dir / stem}.json and .md in {meta['seconds']} s", err=True)


if __name__ == "__main__":
    main()
