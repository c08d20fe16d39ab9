#!/usr/bin/env python
"""pix2pixHD on a CPU: the official way against every CPU engine here, in one run.

Rows (batch 1 unless said, random weights: speed does not depend on the values):
  official way   the official generator shape (ModelConfig(): local enhancer, ngf 32, 36 inputs),
                 fp32 eager under no_grad, the label map one-hot encoded by a scatter into zeros
                 and edges from float instance ids, as NVIDIA's test.py runs it;
  PyTorch        our model.pt, TorchEngine --mode plain (the same network, our input encoding);
  ONNX Runtime   our .onnx (export_onnx) on the CPU provider;
  OpenVINO f32   our .onnx read by OpenVINO's ONNX frontend, CPU plugin, f32;
  OpenVINO bf16  the same at INFERENCE_PRECISION_HINT bf16 (only where the CPU has BF16);
  default run    whatever `p2phd-infer run --device cpu` opens by default (local_run): model.pt
                 converted by OpenVINO's PyTorch frontend into the per-user IR cache
                 (engines/openvino.py), f32;
  2 streams      that IR with two frames in flight, one thread each (throughput, not default).
engine-only: int32 ids already in memory -> float image. end-to-end: label + instance PNG files
-> local_run.run_jobs (decode, batch, engine, uint8, PNG encode, atomic write) -> PNG files;
the official way's end-to-end twin is a serial Pillow loop. PSNR is against the official way's
fp32 output of the same input ([-1,1], peak 2) for engine-only rows, against the PyTorch row's
PNGs (8-bit, peak 255) for end-to-end rows (the official tensor2im truncates, `run` rounds).

The machine may be shared: every repetition visits every engine in turn (interleaved), and the
table gives the min and the median over repetitions.

    python benchmarks/cpu_engines.py --quick                 # small config at 256x128
    python benchmarks/cpu_engines.py --size 512x256 --reps 7 --out benchmarks/results/cpu.md
"""
from __future__ import annotations

import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

from p2phd_infer.checkpoint import Checkpoint, save_checkpoint
from p2phd_infer.config import ModelConfig
from p2phd_infer.files import write_atomic
from p2phd_infer.plan import Job, Plan, RunOptions
from p2phd_infer.synthesizer import psnr

QUICK = ModelConfig(ngf=8, n_downsample_global=3, n_blocks_global=3, n_blocks_local=1)


# The same random weights and scenes as the throughput benchmark (this folder's throughput.py).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import (official_encode, official_tensor2im, random_checkpoint,  # noqa: E402
                        random_scene)


# ---------------------------------------------------------------- the official way

class Official:
    """G in the official module tree; inputs encoded as pix2pixHD's encode_input does."""

    def __init__(self, ckpt: Checkpoint):
        self.cfg = ckpt.config
        self.net = ckpt.build_generator().eval()

    @torch.no_grad()
    def __call__(self, label: np.ndarray, inst: np.ndarray) -> torch.Tensor:
        label_f = torch.from_numpy(label).float()[None, None]
        inst_f = torch.from_numpy(inst).float()[None, None]
        return self.net(official_encode(label_f, inst_f, self.cfg.label_nc))

    def file_to_file(self, label_png: Path, inst_png: Path, out: Path) -> None:
        label = np.asarray(Image.open(label_png), dtype=np.int32)
        inst = np.asarray(Image.open(inst_png)).astype(np.int32)
        Image.fromarray(official_tensor2im(self(label, inst))).save(out)


# ---------------------------------------------------------------- timing

def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def stats(seconds: list[float], frames: int) -> dict:
    per = [1000 * s / frames for s in seconds]
    return {"min": min(per), "median": statistics.median(per), "n": len(per)}


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@click.command()
@click.option("--size", default="512x256", show_default=True, help="WxH of the frames.")
@click.option("--quick", is_flag=True, help="A small config at 256x128 (checks the script runs).")
@click.option("--reps", default=5, show_default=True, type=click.IntRange(1),
              help="Engine-only repetitions (one frame per engine per repetition).")
@click.option("--e2e-frames", default=6, show_default=True, type=click.IntRange(1),
              help="Frames per end-to-end repetition.")
@click.option("--e2e-reps", default=2, show_default=True, type=click.IntRange(1),
              help="End-to-end repetitions.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the table here.")
def main(size, quick, reps, e2e_frames, e2e_reps, out):
    """Engine-only and end-to-end ms/frame of the CPU engines against the official way."""
    # Every timed loop runs in one non-main thread, as the Runtime computes in its batcher
    # thread: on a busy CPU a main-thread OpenMP loop measured up to 3x slower here, which would
    # flatter everything that runs in a thread against the official way.
    box = {}

    def target():
        try:
            box["ok"] = bench(size, quick, reps, e2e_frames, e2e_reps, out)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            box["error"] = e

    t = threading.Thread(target=target, name="p2phd-bench")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]


def bench(size, quick, reps, e2e_frames, e2e_reps, out):
    from p2phd_infer.engines import TorchEngine
    from p2phd_infer.engines.openvino import OpenvinoEngine, open_openvino
    from p2phd_infer.engines.openvino_cpu import cpu_capabilities, openvino_version
    from p2phd_infer.engines.onnx import OnnxEngine
    from p2phd_infer.export.onnx_export import export_onnx
    from p2phd_infer.local_run import describe_engine, open_run_engine, run_jobs

    W, H = (256, 128) if quick else (int(v) for v in size.lower().split("x"))
    cfg = QUICK if quick else ModelConfig()
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    started = datetime.datetime.now().isoformat(timespec="minutes")
    load_before = load_average()
    work = Path(tempfile.mkdtemp(prefix="p2phd-cpu-"))
    # A private conversion cache (removed at the end): the default `run` row converts there.
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    ckpt = random_checkpoint(cfg)
    pt = work / "model.pt"
    save_checkpoint(ckpt, pt)
    log(f"{'quick config' if quick else 'official 1024p generator shape'} at {W}x{H}; "
        f"exporting ONNX and the OpenVINO IR (once)")
    onnx_path = export_onnx(ckpt, work / "model.onnx", H, W, max_batch=1)
    xml = open_openvino(pt, checkpoint=ckpt, log=log).engine_for(H, W).path

    official = Official(ckpt)
    engines = {"PyTorch (model.pt, --mode plain)": TorchEngine(pt, "cpu", mode="plain"),
               "ONNX Runtime (.onnx, CPU provider)": OnnxEngine(onnx_path, "cpu"),
               "OpenVINO f32 (our .onnx)": OpenvinoEngine(onnx_path, precision="fp32")}
    notes = {}
    if "BF16" in cpu_capabilities():
        engines["OpenVINO bf16"] = OpenvinoEngine(onnx_path, precision="bf16")
    else:
        notes["OpenVINO bf16"] = (f"not run: this CPU has no native BF16 (OpenVINO reports "
                                  f"{', '.join(sorted(cpu_capabilities()))})")
    # Two frames at once, one per stream (1 thread each): throughput rather than latency. Not the
    # default: threads per stream change a frame's last bits, and the image must not depend on
    # --batch-size (engines/openvino.py).
    streams2 = OpenvinoEngine(xml, precision="fp32", streams=2)
    default = open_run_engine(RunOptions(engine=str(pt), device="cpu", progress=False))
    engines[f"default `run` ({default.info.backend} {default.info.precision})"] = default
    log(describe_engine(default))

    rng = np.random.default_rng(0)
    label, inst = random_scene(rng, H, W, cfg.label_nc)
    lab_t = torch.from_numpy(label)[None, None]
    ins_t = torch.from_numpy(inst)[None, None]
    with torch.inference_mode():
        expected = official(label, inst)
        quality = {name: psnr(e(lab_t, ins_t).float(), expected) for name, e in engines.items()}
        # Engine-only, interleaved: every repetition times each engine once.
        times: dict[str, list[float]] = {"official way": [], **{n: [] for n in engines}}
        pair = "OpenVINO f32, 2 streams, batch 2 (ms per frame)"
        lab2, ins2 = lab_t.repeat(2, 1, 1, 1), ins_t.repeat(2, 1, 1, 1)
        quality[pair] = psnr(streams2(lab2, ins2)[:1].float(), expected)
        times[pair] = []
        for n, e in engines.items():            # warm-up (first-call allocations, compiles)
            e(lab_t, ins_t)
        for r in range(reps):
            times["official way"].append(timed(lambda: official(label, inst)))
            for n, e in engines.items():
                times[n].append(timed(lambda e=e: e(lab_t, ins_t)))
            times[pair].append(timed(lambda: streams2(lab2, ins2)) / 2)
            log(f"engine-only repetition {r + 1}/{reps}: " +
                ", ".join(f"{n.split(' (')[0]} {1000 * t[-1]:.0f}" for n, t in times.items()))

    # End-to-end: PNG files in, PNG files out.
    folder = work / "frames"
    (folder / "label").mkdir(parents=True)
    (folder / "inst").mkdir()
    jobs_in = []
    for i in range(e2e_frames):
        lb, ib = random_scene(rng, H, W, cfg.label_nc)
        Image.fromarray(lb.astype(np.uint8)).save(folder / "label" / f"{i}.png")
        Image.fromarray(ib.astype(np.uint16)).save(folder / "inst" / f"{i}.png")
        jobs_in.append((str(folder / "label" / f"{i}.png"), str(folder / "inst" / f"{i}.png")))
    e2e = {"official way": []}
    e2e_engines = {n: e for n, e in engines.items()
                   if n.startswith(("PyTorch", "default", "OpenVINO bf16"))}
    e2e.update({n: [] for n in e2e_engines})
    outs = {n: work / f"out{i}" for i, n in enumerate(e2e)}
    for o in outs.values():
        o.mkdir()
    opts = RunOptions(progress=False, overwrite=True)
    for r in range(e2e_reps):
        def serial():
            for i, (lp, ip) in enumerate(jobs_in):
                official.file_to_file(Path(lp), Path(ip), outs["official way"] / f"{i}.png")
        e2e["official way"].append(timed(serial))
        for n, e in e2e_engines.items():
            todo = Plan([Job(str(i), lp, ip, str(outs[n] / f"{i}.png"))
                         for i, (lp, ip) in enumerate(jobs_in)], e2e_frames, 0)
            summary = run_jobs(e, None, todo, opts)
            if summary.written != e2e_frames:
                raise SystemExit(f"{n}: {summary.failed} frames failed: {summary.failures[:1]}")
            e2e[n].append(summary.seconds)
        log(f"end-to-end repetition {r + 1}/{e2e_reps}: " +
            ", ".join(f"{n.split(' (')[0]} {1000 * t[-1] / e2e_frames:.0f}"
                      for n, t in e2e.items()))

    plain = next(n for n in e2e if n.startswith("PyTorch"))

    def png_psnr(n):
        got = [np.asarray(Image.open(outs[n] / f"{i}.png")) for i in range(e2e_frames)]
        ref = [np.asarray(Image.open(outs[plain] / f"{i}.png")) for i in range(e2e_frames)]
        return psnr(torch.from_numpy(np.stack(got)).float(),
                    torch.from_numpy(np.stack(ref)).float(), peak=255.0)

    base = stats(times["official way"], 1)
    base_e2e = stats(e2e["official way"], e2e_frames)
    shape = f"Quick config {cfg}" if quick else \
        "Official 1024p generator shape (ModelConfig(): local, ngf 32, 36 inputs), random weights"
    lines = [
        f"{shape}, {W}x{H}, batch 1. CPU: {cpu_name()}, {os.cpu_count()} logical CPUs; torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), OpenVINO "
        f"{openvino_version().split('-')[0]}. {started}; load average before {load_before}, "
        f"after {load_average()}. min and median over {reps} engine-only repetitions (one frame "
        f"each) and {e2e_reps} end-to-end repetitions of {e2e_frames} frames, interleaved.",
        "",
        "PSNR: engine-only rows against the official way's fp32 image ([-1,1], peak 2); "
        "end-to-end rows against the PyTorch row's PNGs (8-bit, peak 255: the official way's "
        "tensor2im truncates where `run` rounds, half a level everywhere, so it is no reference "
        "for PNGs).",
        "",
        "| row | engine | ms/frame min | median | × official (median) | PSNR | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    engine_only_median = {}
    for n, t in times.items():
        s = stats(t, 1)
        engine_only_median[n] = s["median"]
        q = "reference" if n == "official way" else f"{quality[n]:.1f} dB"
        lines.append(f"| engine-only | {n} | {s['min']:.0f} | {s['median']:.0f} | "
                     f"{base['median'] / s['median']:.2f} | {q} | |")
    for n, note in notes.items():
        lines.append(f"| engine-only | {n} | - | - | - | - | {note} |")
    for n, t in e2e.items():
        s = stats(t, e2e_frames)
        q = "-" if n == "official way" else "reference" if n == plain else \
            f"{png_psnr(n):.1f} dB (8-bit)"
        note = "serial: Pillow decode, G, Pillow encode" if n == "official way" else \
            f"{s['median'] and engine_only_median[n] / s['median']:.2f} of engine-only speed"
        lines.append(f"| end-to-end | {n} | {s['min']:.0f} | {s['median']:.0f} | "
                     f"{base_e2e['median'] / s['median']:.2f} | {q} | {note} |")
    table = "\n".join(lines) + "\n"
    click.echo(table)
    if out:
        write_atomic(out, table)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
