#!/usr/bin/env python
"""The fast path's levers, one run: the official-shape generator every way, ms/frame and PSNR.

On CUDA at 2048x1024 (ModelConfig() defaults: local enhancer, ngf 32, 36 inputs, random weights;
speed does not depend on the values), each row times the engine call (ids on the device in, float
image out) with CUDA events: warmup calls, then the median of --iters calls, divided by the batch.
PSNR of every row against the fp32 eager Synthesizer on the same frames (synthesizer.psnr: images
in [-1, 1], peak-to-peak 2); the quality bar is 40 dB. cudnn.benchmark is on for every row.
The fast rows are the PyTorch engine's fast path, TorchEngine(mode="fast", fast_options=...), the
levers switched one at a time; its own check against the plain network runs inside "setup s".

Rows, in this order (each row's failure is recorded and the run goes on; JSON and Markdown are
rewritten after every row, so a run cut short keeps what it measured):
  official fp32 eager (TF32 off)       the reference, and the anchor's 75.3 ms
  official fp16 eager                  the anchor's 30.1 ms
  fast fp16 (engine defaults), CUDA graph    batch 1, 2, 4 (--batches); the engine's defaults
  fast fp16 without the CUDA graph
  fast fp16, lookup_full off (dense one-hot + cuDNN for G2's first layer instead)
  fast fp16, lookup_pooled on (G1's first layer as a pooled lookup instead of dense + cuDNN)
  fast fp16, fused InstanceNorm off (torch instance_norm + pad)
  fast fp16, NCHW (channels_last off)
  fast bf16 (engine defaults), CUDA graph
  official fp16 torch.compile default  (--compile, default on)
  fast fp16 + torch.compile default, CUDA graph  (--compile)
  official fp16 channels_last torch.compile max-autotune  (--max-autotune: ~2 min to compile)

    python benchmarks/fast_bench.py --out-dir gpu_out/fast_bench
    python benchmarks/fast_bench.py --quick --out-dir /tmp/fb      # CPU: tiny config, runs only

On the CPU (--quick) the fast rows run the FastGenerator's torch references (the engine's fast
mode is CUDA only), so the quick run checks the rows and levers are wired, not the kernels.
"""
from __future__ import annotations

import copy
import datetime
import gc
import json
import math
import platform
import statistics
import time
from pathlib import Path

import click
import torch

from p2phd_infer.checkpoint import Checkpoint
from p2phd_infer.config import ModelConfig
from p2phd_infer.engines import TorchEngine
from p2phd_infer.engines.fast import FastGenerator
from p2phd_infer.engines.pytorch import DTYPES
from p2phd_infer.files import write_atomic
from p2phd_infer.networks import build_generator
from p2phd_infer.synthesizer import Synthesizer, psnr

QUICK_CFG = ModelConfig(label_nc=35, netG="local", ngf=4, n_downsample_global=1,
                        n_blocks_global=1, n_local_enhancers=1, n_blocks_local=1)


def scene(B: int, H: int, W: int, label_nc: int, device, seed: int = 0):
    """Street-like ids: bands of stuff classes, then boxes of cars (26) and people (24) whose
    instance ids are class*1000+k, so labels, edges and every window kind occur."""
    g = torch.Generator().manual_seed(seed)
    label = torch.empty(B, 1, H, W, dtype=torch.int32)
    inst = torch.empty(B, 1, H, W, dtype=torch.int32)
    for b in range(B):
        label[b, 0, : 3 * H // 10] = 23
        label[b, 0, 3 * H // 10: H // 2] = 11
        label[b, 0, 3 * H // 10: H // 2, W // 2:] = 21
        label[b, 0, H // 2:] = 7
        label[b, 0, H // 2:, : W // 8] = 8
        inst[b] = label[b]
        for k in range(60):
            cls = 26 if k % 2 == 0 else 24
            h = int(torch.randint(max(1, H // 40), max(2, H // 6), (1,), generator=g))
            w = int(torch.randint(max(1, W // 60), max(2, W // 8), (1,), generator=g))
            y = int(torch.randint(H // 3, max(H // 3 + 1, H - h), (1,), generator=g))
            x = int(torch.randint(0, max(1, W - w), (1,), generator=g))
            label[b, 0, y:y + h, x:x + w] = cls
            inst[b, 0, y:y + h, x:x + w] = cls * 1000 + k
    label.clamp_(max=label_nc - 1)
    return label.to(device), inst.to(device)


def time_calls(fn, args, warmup: int, iters: int, device) -> tuple[float, torch.Tensor]:
    """Median ms per call by CUDA events (host clock on the CPU), and the last output."""
    out = None
    for _ in range(warmup):
        out = fn(*args)
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(iters)]
        for s, e in events:
            s.record()
            out = fn(*args)
            e.record()
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) for s, e in events]
    else:
        for _ in range(iters):
            t = time.perf_counter()
            out = fn(*args)
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), out


def markdown(meta: dict, rows: list[dict]) -> str:
    base = next((r["ms_per_frame"] for r in rows
                 if r["name"] == "official fp16 eager" and r.get("ms_per_frame")), None)
    lines = [f"# fast_bench: {meta['size']} on {meta['device_name']}", "",
             f"torch {meta['torch']}, triton {meta['triton']}, {meta['date']}; "
             f"official config, random weights; median of {meta['iters']} calls after "
             f"{meta['warmup']} warmup; PSNR against the fp32 eager Synthesizer (bar 40 dB).", "",
             "| row | batch | ms/frame | frames/s | vs fp16 eager | PSNR dB | peak MiB | "
             "setup s |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['name']} | {r['batch']} | error: {r['error'][:80]} | | | | | |")
            continue
        ms = r["ms_per_frame"]
        vs = f"{base / ms:.2f}x" if base else ""
        p = r["psnr_db"]
        ptxt = "ref" if p is None else ("inf" if math.isinf(p) else f"{p:.1f}")
        lines.append(f"| {r['name']} | {r['batch']} | {ms:.2f} | {1e3 / ms:.1f} | {vs} | {ptxt} "
                     f"| {r['peak_mib']:.0f} | {r['setup_s']:.1f} |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--out-dir", required=True, type=click.Path(file_okay=False),
              help="fast_bench.json and fast_bench.md are written here.")
@click.option("--size", default="2048x1024", show_default=True, help="WIDTHxHEIGHT.")
@click.option("--batches", default="1,2,4", show_default=True,
              help="Batch sizes for the all-levers row.")
@click.option("--iters", default=20, show_default=True, help="Timed calls per row.")
@click.option("--warmup", default=3, show_default=True, help="Untimed calls per row.")
@click.option("--compile/--no-compile", "compile_", default=True, show_default=True,
              help="torch.compile rows (default mode; about a minute each).")
@click.option("--max-autotune", is_flag=True,
              help="Also the official network under torch.compile max-autotune (~2 min).")
@click.option("--only", default="", help="Comma-separated substrings: run only matching rows "
                                          "(the fp32 reference and fp16 eager always run).")
@click.option("--quick", is_flag=True, help="CPU, tiny config, 64x64, 2 calls a row: checks "
                                            "that the script runs; its numbers mean nothing.")
def main(out_dir, size, batches, iters, warmup, compile_, max_autotune, only, quick):
    """Time the official-shape generator every way (baseline, fp16, compile, the fast engine
    with each lever on/off) in one run; PSNR of each against fp32."""
    cuda = torch.cuda.is_available()
    if not cuda and not quick:
        raise click.ClickException("fast_bench needs a CUDA GPU (its numbers are GPU timings); "
                                   "use --quick for a CPU check that it runs")
    dev = torch.device("cuda" if cuda and not quick else "cpu")
    W, H = (int(v) for v in size.lower().split("x"))
    cfg = ModelConfig()
    if quick:
        cfg, W, H, iters, warmup, compile_, max_autotune = QUICK_CFG, 64, 64, 2, 1, False, False
        batches = "1,2"
    if H % cfg.stride or W % cfg.stride:
        raise click.ClickException(f"--size {size}: sides must be multiples of {cfg.stride}")
    bs = [int(b) for b in batches.split(",") if b]
    filters = [f for f in only.split(",") if f]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = dev.type == "cuda"
    torch._dynamo.config.cache_size_limit = 64

    torch.manual_seed(0)
    with torch.device("cpu"):
        g32 = build_generator(cfg).eval()
    ckpt = Checkpoint(cfg, g32.state_dict())
    bmax = max(bs + [1])
    label, inst = scene(bmax, H, W, cfg.label_nc, dev)

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    meta = {"size": f"{W}x{H}", "device_name": torch.cuda.get_device_name(dev) if dev.type ==
            "cuda" else f"CPU ({platform.machine()})", "torch": torch.__version__,
            "triton": triton_version, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "config": cfg.to_dict(), "iters": iters, "warmup": warmup, "quick": quick,
            "fast_rows": "TorchEngine(mode='fast', fast_options=...)" if dev.type == "cuda"
            else "FastGenerator torch references (CPU: the engine's fast mode is CUDA only)"}
    rows: list[dict] = []

    def save():
        write_atomic(out_dir / "fast_bench.json", json.dumps({"meta": meta, "rows": rows},
                                                             indent=1))
        write_atomic(out_dir / "fast_bench.md", markdown(meta, rows))

    # --- the fp32 reference (TF32 off), frame by frame for the PSNR of every row ------------
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    ref_model = Synthesizer(cfg, copy.deepcopy(g32)).to(dev).eval()
    with torch.inference_mode():
        ref = torch.cat([ref_model(label[i:i + 1], inst[i:i + 1]).float()
                         for i in range(bmax)])

    def row(name: str, make, batch: int = 1, tf32: bool = False, is_ref: bool = False):
        # The fp32 reference and fp16 eager (the ratio's base) always run.
        if filters and not is_ref and name != "official fp16 eager" \
                and not any(f in name for f in filters):
            return
        click.echo(f"{name} b{batch} ...", err=True)
        r = {"name": name, "batch": batch}
        torch.backends.cudnn.allow_tf32 = tf32
        try:
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            t0 = time.perf_counter()
            fn = make()
            with torch.inference_mode():
                fn(label[:batch], inst[:batch])        # first call: compiles, captures, tunes
            setup = time.perf_counter() - t0
            with torch.inference_mode():
                ms, out = time_calls(fn, (label[:batch], inst[:batch]), warmup, iters, dev)
            p = None if is_ref else psnr(out.float(), ref[:batch])
            r.update(ms_per_frame=ms / batch, psnr_db=p, setup_s=setup,
                     max_abs=(out.float() - ref[:batch]).abs().max().item(),
                     passes_40db=None if p is None else p >= 40.0,
                     peak_mib=torch.cuda.max_memory_allocated(dev) / 2**20
                     if dev.type == "cuda" else 0.0)
            click.echo(f"  {ms / batch:8.2f} ms/frame  PSNR {p}  setup {setup:.1f}s", err=True)
        except Exception as e:  # noqa: BLE001 - one row's failure must not end the run
            r["error"] = f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            click.echo(f"  error: {r['error']}", err=True)
        rows.append(r)
        save()
        fn = None
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    def official(dtype, channels_last=False, compile_mode=None):
        def make():
            m = Synthesizer(cfg, copy.deepcopy(g32)).to(dev, dtype).eval()
            if channels_last:
                m = m.to(memory_format=torch.channels_last)
            return torch.compile(m, mode=compile_mode) if compile_mode else m
        return make

    def fast(precision="fp16", compile=None, **levers):
        if dev.type != "cuda":   # --quick: the same levers through the torch references
            levers.pop("cuda_graphs", None)
            return lambda: FastGenerator(cfg, ckpt, dev, DTYPES[precision], **levers)
        return lambda: TorchEngine(ckpt, dev, precision=precision, mode="fast", compile=compile,
                                   fast_options=levers)

    row("official fp32 eager (TF32 off)", official(torch.float32), is_ref=True)
    row("official fp16 eager", official(torch.float16))
    for b in bs:
        row("fast fp16 (engine defaults), CUDA graph", fast(), batch=b)
    row("fast fp16, no CUDA graph", fast(cuda_graphs=False))
    row("fast fp16, lookup_full off (dense one-hot + cuDNN)", fast(lookup_full=False))
    row("fast fp16, lookup_pooled on (G1 first layer as lookup)", fast(lookup_pooled=True))
    row("fast fp16, fused IN off", fast(fused_norm=False))
    row("fast fp16, NCHW", fast(channels_last=False))
    row("fast bf16 (engine defaults), CUDA graph", fast("bf16"))
    if compile_:
        row("official fp16 torch.compile default", official(torch.float16, compile_mode="default"))
        row("fast fp16 + torch.compile default, CUDA graph", fast(compile="default"))
    if max_autotune:
        row("official fp16 channels_last torch.compile max-autotune",
            official(torch.float16, channels_last=True, compile_mode="max-autotune"))
    save()
    click.echo(markdown(meta, rows))


if __name__ == "__main__":
    main()
