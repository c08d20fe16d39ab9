#!/usr/bin/env python
"""pix2pixHD on a CPU: the official way against the OpenVINO engines (fp32, fp32 with the
table-lookup first layer, bf16, int8), each beside its floor and its quality, in one run.

- GEMM peaks: this CPU's fp32, bf16 and int8 matrix-multiply rates, measured first in the same
  run (an OpenVINO MatMul microbenchmark); a row's floor is its FLOPs / its peak.
- Rows (batch 1, random weights of the official 1024p generator shape: speed does not depend on
  the values): the official way (fp32 eager, inputs encoded as NVIDIA's test.py does), then each
  engine on int32 ids in memory -> float image. Quality: 8-bit PSNR against the official way's
  fp32 image of the same input.
- End to end: label + instance PNGs -> the default engine `run` opens (through the Runtime) ->
  PNGs, against a serial Pillow loop of the official way; PSNR against the official fp32 images
  rounded as `run` rounds.
- Time to first frame: `p2phd-infer run` in a new process on the warm cache, from the run's
  summary (first_frame_seconds apart from the steady frames/s).
- The bundled demo model's bf16 and int8 images against its fp32 ones (trained weights).

The machine may be shared: every round runs every row once (interleaved), the table gives the
min and the median, and the load average before and after.

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


def gemm_peaks(quick: bool, log) -> dict[str, float]:
    """This CPU's matrix-multiply rate in GFLOP/s for fp32, bf16 and int8, through OpenVINO's CPU
    plugin (the kernels the engines use), on all the cores this process may use: one MatMul of
    [n, n] by an [n, n] constant, best of several timed loops. int8: the activations through a
    FakeQuantize and int8 weights with a scale, which the plugin runs as an int8 GEMM."""
    import openvino as ov
    import openvino.opset13 as ops

    from p2phd_infer.engines.openvino_cpu import core, cpu_capabilities, cpu_cores
    n = 512 if quick else 2048
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, n)).astype(np.float32)
    x = rng.standard_normal((n, n)).astype(np.float32)
    requests = {}
    for kind in ("fp32", "bf16", "int8"):
        if kind == "bf16" and "BF16" not in cpu_capabilities():
            continue
        inp = ops.parameter([n, n], ov.Type.f32, name="x")
        if kind == "int8":
            lo, hi = ops.constant(np.float32(-4)), ops.constant(np.float32(4))
            act = ops.fake_quantize(inp, lo, hi, lo, hi, 256)
            scale = (np.abs(w).max(0) / 127).astype(np.float32)
            q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            weights = ops.multiply(ops.convert(ops.constant(q), ov.Type.f32),
                                   ops.constant(scale[None]))
        else:
            act, weights = inp, ops.constant(w)
        model = ov.Model([ops.matmul(act, weights, False, False)], [inp])
        hint = "bf16" if kind == "bf16" else "f32"
        compiled = core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                       "NUM_STREAMS": "1",
                                                       "INFERENCE_NUM_THREADS": str(cpu_cores())})
        requests[kind] = compiled.create_infer_request()
        requests[kind].infer({0: x})
    loops = 3 if quick else 4
    best = {k: float("inf") for k in requests}
    for _ in range(6):                   # interleaved, as the rows: the load changes meanwhile
        for kind, request in requests.items():
            best[kind] = min(best[kind], timed(lambda r=request: [r.infer({0: x})
                                                                  for _ in range(loops)]) / loops)
    peaks = {k: 2 * n ** 3 / t / 1e9 for k, t in best.items()}
    log("GEMM peaks: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()) +
        f" ({n}x{n}x{n})")
    return peaks


def conv_flops(ckpt: Checkpoint, H: int, W: int) -> dict:
    """FLOPs of one frame (2 per multiply-add), in all and for the layers the int8 graph keeps in
    float (the 7x7 convolutions reading the input and the one to RGB) and for the
    full-resolution first layer the lookup replaces."""
    from p2phd_infer.synthesizer import Synthesizer
    cfg = ckpt.config
    synth = Synthesizer(cfg, ckpt.build_generator()).eval()
    found = []

    def hook(module, args, out):
        k = module.kernel_size[0] * module.kernel_size[1]
        if isinstance(module, torch.nn.ConvTranspose2d):
            flops = 2 * args[0].numel() * module.out_channels * k
        else:
            flops = 2 * out.numel() * module.in_channels * k
        found.append((module, flops, out.shape[-1]))

    handles = [m.register_forward_hook(hook) for m in synth.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    label = torch.zeros(1, 1, H, W, dtype=torch.int32)
    with torch.inference_mode():
        synth(label, label)
    for h in handles:
        h.remove()
    total = sum(f for _, f, _ in found)
    kept = sum(f for m, f, _ in found if m.kernel_size == (7, 7) and
               (m.in_channels == cfg.input_nc or m.out_channels == cfg.output_nc))
    lookup = sum(f for m, f, w in found if m.kernel_size == (7, 7) and
                 m.in_channels == cfg.input_nc and w == W)
    return {"total": total, "kept_float": kept, "lookup": lookup}


def demo_quality(log) -> dict[str, float]:
    """8-bit PSNR of the bundled demo model's bf16 and int8 images against its fp32 images, on
    the bundled sample maps (trained weights: their outliers are what int8 finds hard)."""
    from p2phd_infer.engines import default_engine_path
    from p2phd_infer.engines.demo import demo_labels
    from p2phd_infer.engines.openvino import open_openvino
    from p2phd_infer.engines.openvino_cpu import cpu_capabilities
    from p2phd_infer.image_io import read_id_png
    from p2phd_infer.styles import StyleControl
    from p2phd_infer.synthesizer import to_uint8
    path = default_engine_path()
    engines = {"fp32": open_openvino(path)}
    if "BF16" in cpu_capabilities():
        engines["bf16"] = open_openvino(path, precision="bf16")
    engines["int8"] = open_openvino(path, precision="int8", log=log)
    images = {k: [] for k in engines}
    for label_path in sorted(demo_labels().glob("*.png")):
        label = torch.from_numpy(read_id_png(label_path))[None, None]
        inst = torch.from_numpy(read_id_png(demo_labels().parent / "instances" /
                                            label_path.name))[None, None]
        feat = StyleControl.for_engine(engines["fp32"], seed=0).feature_map(label, inst)
        for k, e in engines.items():
            images[k].append(to_uint8(e(label, inst, feat)).float())
    ref = torch.cat(images["fp32"])
    return {k: psnr(torch.cat(v), ref, peak=255.0) for k, v in images.items() if k != "fp32"}


def time_to_first_frame(pt: Path, folder: Path, work: Path, runs: int = 2) -> list[dict]:
    """`p2phd-infer run` in a new process, `runs` times, on a warm cache (the IR and its
    compiled blob exist): the summary's first_frame_seconds and steady frames/s of each, or
    {"error": ...} for a run that failed."""
    import json
    import subprocess
    out = []
    for i in range(runs):
        summary = work / f"ttff{i}.json"
        done = subprocess.run(
            [sys.executable, "-c", "from p2phd_infer.cli import main; main()", "run",
             str(folder / "label"), "--instances", str(folder / "inst"), "--engine", str(pt),
             "--out", str(work / f"ttff{i}"), "--device", "cpu", "--no-progress",
             "--summary-json", str(summary)], env=dict(os.environ), capture_output=True,
            text=True)
        if done.returncode != 0 or not summary.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            out.append({"error": f"exit {done.returncode}: {last}"})
        else:
            out.append(json.loads(summary.read_text()))
    return out


def bench(size, quick, reps, e2e_frames, e2e_reps, out):
    from p2phd_infer.engines import open_engine
    from p2phd_infer.engines.openvino import open_openvino
    from p2phd_infer.engines.openvino_cpu import cpu_capabilities, openvino_version
    from p2phd_infer.local_run import run_jobs
    from p2phd_infer.synthesizer import to_uint8

    W, H = (256, 128) if quick else (int(v) for v in size.lower().split("x"))
    cfg = QUICK if quick else ModelConfig()
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    started = datetime.datetime.now().isoformat(timespec="minutes")
    load_before = load_average()
    work = Path(tempfile.mkdtemp(prefix="p2phd-cpu-"))
    # A private conversion cache (removed at the end).
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    ckpt = random_checkpoint(cfg)
    pt = work / "model.pt"
    save_checkpoint(ckpt, pt)
    peaks = gemm_peaks(quick, log)
    rate = {k: v * 1e9 for k, v in peaks.items()}           # FLOP/s
    flops = conv_flops(ckpt, H, W)
    log(f"{flops['total'] / 1e9:.1f} GFLOP per {W}x{H} frame; converting (once)")

    official = Official(ckpt)
    engines = {"OpenVINO f32 (the default `run` engine)": open_openvino(pt, log=log),
               "OpenVINO f32 + lookup first layer": open_openvino(pt, lookup=True, log=log)}
    if "BF16" in cpu_capabilities():
        engines["OpenVINO bf16"] = open_openvino(pt, precision="bf16", log=log)
    engines["OpenVINO int8 (NNCF, bundled calibration)"] = open_openvino(pt, precision="int8",
                                                                          log=log)
    floors = {"official way": flops["total"] / rate["fp32"],
              "OpenVINO f32 (the default `run` engine)": flops["total"] / rate["fp32"],
              "OpenVINO f32 + lookup first layer": (flops["total"] - flops["lookup"]) /
              rate["fp32"],
              "OpenVINO bf16": flops["total"] / rate.get("bf16", rate["fp32"]),
              "OpenVINO int8 (NNCF, bundled calibration)":
                  flops["kept_float"] / rate["fp32"] +
                  (flops["total"] - flops["kept_float"]) / rate["int8"]}

    rng = np.random.default_rng(0)
    label, inst = random_scene(rng, H, W, cfg.label_nc)
    lab_t = torch.from_numpy(label)[None, None]
    ins_t = torch.from_numpy(inst)[None, None]
    with torch.inference_mode():
        expected = to_uint8(official(label, inst)).float()
        quality = {n: psnr(to_uint8(e(lab_t, ins_t)).float(), expected, peak=255.0)
                   for n, e in engines.items()}
        times: dict[str, list[float]] = {"official way": [], **{n: [] for n in engines}}
        for r in range(reps):            # interleaved: each round runs every row once
            times["official way"].append(timed(lambda: official(label, inst)))
            for n, e in engines.items():
                times[n].append(timed(lambda e=e: e(lab_t, ins_t)))
            log(f"round {r + 1}/{reps} (load {load_average()}): " +
                ", ".join(f"{n.split(' (')[0]} {1000 * t[-1]:.0f}" for n, t in times.items()))

    # End-to-end: PNG files in, PNG files out; the default engine as `run` opens it.
    folder = work / "frames"
    (folder / "label").mkdir(parents=True)
    (folder / "inst").mkdir()
    jobs_in = []
    for i in range(e2e_frames):
        lb, ib = random_scene(rng, H, W, cfg.label_nc)
        Image.fromarray(lb.astype(np.uint8)).save(folder / "label" / f"{i}.png")
        Image.fromarray(ib.astype(np.uint16)).save(folder / "inst" / f"{i}.png")
        jobs_in.append((str(folder / "label" / f"{i}.png"), str(folder / "inst" / f"{i}.png")))
    default = open_engine(pt, "cpu")
    log(default.info.extra["engine"])
    e2e = {"official way": [], "default `run`": []}
    outs = {n: work / f"out{i}" for i, n in enumerate(e2e)}
    for o in outs.values():
        o.mkdir()
    opts = RunOptions(progress=False, overwrite=True)
    for r in range(e2e_reps):
        def serial():
            for i, (lp, ip) in enumerate(jobs_in):
                official.file_to_file(Path(lp), Path(ip), outs["official way"] / f"{i}.png")
        e2e["official way"].append(timed(serial))
        todo = Plan([Job(str(i), lp, ip, str(outs["default `run`"] / f"{i}.png"))
                     for i, (lp, ip) in enumerate(jobs_in)], e2e_frames, 0)
        summary = run_jobs(default, None, todo, opts)
        if summary.written != e2e_frames:
            raise SystemExit(f"default run: {summary.failed} frames failed: "
                             f"{summary.failures[:1]}")
        e2e["default `run`"].append(summary.seconds)
        log(f"end-to-end round {r + 1}/{e2e_reps}: " +
            ", ".join(f"{n} {1000 * t[-1] / e2e_frames:.0f}" for n, t in e2e.items()))
    with torch.inference_mode():         # fp32 reference PNGs, rounded as `run` rounds
        ref = torch.stack([to_uint8(official(np.asarray(Image.open(lp), dtype=np.int32),
                                             np.asarray(Image.open(ip)).astype(np.int32)))[0]
                           for lp, ip in jobs_in]).float()
    got = torch.stack([torch.from_numpy(np.asarray(Image.open(outs["default `run`"] /
                                                              f"{i}.png")))
                       for i in range(e2e_frames)]).float()
    e2e_psnr = psnr(got, ref, peak=255.0)
    ttff = time_to_first_frame(pt, folder, work) if not quick else []
    demo = demo_quality(log)
    load_after = load_average()

    base = stats(times["official way"], 1)
    base_e2e = stats(e2e["official way"], e2e_frames)
    shape = f"Quick config {cfg}" if quick else \
        "Official 1024p generator shape (ModelConfig(): local, ngf 32, 36 inputs), random weights"
    lines = [
        f"{shape}, {W}x{H}, batch 1, {flops['total'] / 1e9:.1f} GFLOP/frame. CPU: {cpu_name()}, "
        f"{os.cpu_count()} logical CPUs, shared (load average before {load_before}, after "
        f"{load_after}); torch {torch.__version__}, OpenVINO {openvino_version().split('-')[0]}. "
        f"{started}. min and median over {reps} interleaved rounds (each runs every row once).",
        "",
        "GEMM peaks (OpenVINO MatMul, this run): " +
        ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()) +
        ". Floor = FLOPs / peak (int8: the layers kept in f32 at the fp32 peak, the rest at "
        "the int8 peak; lookup: without the replaced layer's FLOPs).",
        "",
        "| row | ms/frame min | median | floor ms | × official (median) | 8-bit PSNR vs fp32 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    medians = {}
    for n, t in times.items():
        s = stats(t, 1)
        medians[n] = s["median"]
        q = "reference" if n == "official way" else f"{quality[n]:.1f} dB"
        lines.append(f"| {n} | {s['min']:.0f} | {s['median']:.0f} | {1000 * floors[n]:.0f} | "
                     f"{base['median'] / s['median']:.2f} | {q} |")
    for n, t in e2e.items():
        s = stats(t, e2e_frames)
        medians["e2e " + n] = s["median"]
        q = "-" if n == "official way" else f"{e2e_psnr:.1f} dB"
        what = "serial Pillow decode, G, encode" if n == "official way" else \
            "PNG in -> PNG out, the Runtime"
        lines.append(f"| end-to-end {n} ({what}, {e2e_frames} frames) | {s['min']:.0f} | "
                     f"{s['median']:.0f} | - | {base_e2e['median'] / s['median']:.2f} | {q} |")
    lines.append("")
    for i, t in enumerate(ttff):
        what = f"failed ({t['error']})" if "error" in t else \
            f"{t['first_frame_seconds']:.2f} s after the engine began loading, then " \
            f"{t['steady_frames_per_second']:.2f} frames/s ({e2e_frames} frames)"
        lines.append(f"- time to first frame, `p2phd-infer run` in a new process on a warm cache "
                     f"(run {i + 1}): {what}")
    lines.append("- bundled demo model (trained weights), 8-bit PSNR against its fp32 images on "
                 "the bundled samples: " + ", ".join(f"{k} {v:.1f} dB" for k, v in demo.items()))
    lines.append("- FID / mIoU deltas: not run (`p2phd-infer evaluate` needs the FID Inception "
                 "and a segmenter's weights, which are not on this machine).")
    speed = {n: base["median"] / m for n, m in medians.items() if not n.startswith("e2e")}
    int8 = "OpenVINO int8 (NNCF, bundled calibration)"
    checks = [("int8 >= 6x at >= 32 dB (official shape)", speed[int8], 6.0, quality[int8], 32.0,
               floors[int8]),
              ("int8 >= 30 dB on the demo model", None, None, demo.get("int8", 0.0), 30.0, None),
              ("default fp32 run >= 2.2x end to end at >= 60 dB",
               base_e2e["median"] / medians["e2e default `run`"], 2.2, e2e_psnr, 60.0,
               floors["OpenVINO f32 (the default `run` engine)"])]
    if "OpenVINO bf16" in speed:
        checks.append(("bf16 >= 5x at >= 40 dB", speed["OpenVINO bf16"], 5.0,
                       quality["OpenVINO bf16"], 40.0, floors["OpenVINO bf16"]))
    lines += ["", "| target | measured | met |", "| --- | --- | --- |"]
    for name, x, want_x, db, want_db, floor in checks:
        got_s = (f"{x:.2f}x, " if x is not None else "") + f"{db:.1f} dB" + \
            (f" (floor {1000 * floor:.0f} ms = {base['median'] / (1000 * floor):.1f}x)"
             if floor else "")
        ok = (x is None or x >= want_x) and db >= want_db
        lines.append(f"| {name} | {got_s} | {'met' if ok else 'missed'} |")
    table = "\n".join(lines) + "\n"
    click.echo(table)
    if out:
        write_atomic(out, table)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
