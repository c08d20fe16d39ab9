"""Kernel benchmark: each Triton kernel against its torch reference and the bandwidth floor.

On CUDA, at 2048x1024 with ~100 Cityscapes-like instances (stuff ids 7/8/11/21/23, cars 26001..,
people 24001..): every kernel's Triton path (eager, and replayed from a CUDA graph, which removes
Python launch overhead), its reference, for the instance mean also the official pix2pixHD
per-instance Python loop, and the floor: the bytes each kernel must read and write once, divided
by the copy bandwidth measured here on a large tensor copy. Times are CUDA-event medians after a
warmup. Prints a Markdown table and writes JSON (--out).

Without CUDA it runs the references at a small size (--quick is implied) and says so: those are
not the GPU figures.

    python benchmarks/kernels_bench.py --out kernels.json
    python -c "import runpy; runpy.run_path('benchmarks/kernels_bench.py', run_name='x')['run']()"
"""
from __future__ import annotations

import json
import platform
import statistics
import time

import click
import torch

from p2phd_infer.files import write_atomic
from p2phd_infer.kernels import (feature_scatter, feature_scatter_reference, instance_mean,
                                 instance_mean_reference)
from p2phd_infer.labels import label_from_instance

LABEL_NC = 35


def cityscapes_like(B: int, H: int, W: int, n_inst: int, device, seed: int = 0):
    """Instance ids [B,1,H,W] int32 (stuff bands, then n_inst boxes of cars and people) and the
    label ids derived from them the Cityscapes way."""
    g = torch.Generator().manual_seed(seed)
    inst = torch.empty(B, 1, H, W, dtype=torch.int32, device=device)
    for b in range(B):
        inst[b, 0, : 3 * H // 10] = 23                      # sky
        inst[b, 0, 3 * H // 10: H // 2, : W // 2] = 11      # building
        inst[b, 0, 3 * H // 10: H // 2, W // 2:] = 21       # vegetation
        inst[b, 0, H // 2:] = 7                             # road
        inst[b, 0, H // 2:, : W // 8] = 8                   # sidewalks
        inst[b, 0, H // 2:, -W // 8:] = 8
        for k in range(n_inst):
            iid = 26001 + k // 2 if k % 2 == 0 else 24001 + k // 2
            h = int(torch.randint(H // 40, H // 6, (1,), generator=g))
            w = int(torch.randint(W // 60, W // 8, (1,), generator=g))
            y = int(torch.randint(H // 3, H - h, (1,), generator=g))
            x = int(torch.randint(0, W - w, (1,), generator=g))
            inst[b, 0, y:y + h, x:x + w] = iid
    label = label_from_instance(inst.long()).to(torch.int32)
    return label, inst


def official_loop(feat: torch.Tensor, inst: torch.Tensor) -> torch.Tensor:
    """The official encoder's instance-wise average, as structured there: per sample, per unique
    id, per channel, gather the instance's pixels by nonzero() indices and write their mean."""
    out = feat.clone()
    for b in range(feat.shape[0]):
        for i in torch.unique(inst[b]):
            idx = (inst[b:b + 1] == int(i)).nonzero()
            for j in range(feat.shape[1]):
                sel = (idx[:, 0] + b, idx[:, 1] + j, idx[:, 2], idx[:, 3])
                vals = feat[sel]
                out[sel] = torch.mean(vals).expand_as(vals)
    return out


def time_ms(fn, device, warmup: int, reps: int) -> float:
    """Median milliseconds per call: CUDA events around each call, or the wall clock on CPU."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def time_graph_ms(fn, reps: int, calls: int = 20) -> float:
    """Median milliseconds per call of `calls` back-to-back calls replayed from one CUDA graph:
    the GPU time without Python launch overhead (and proof the path captures)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return time_ms(graph.replay, torch.device("cuda"), 3, reps) / calls


def copy_bandwidth_gbps(device, mib: int = 1024) -> float:
    """Read+write bytes per second of a large device copy (the practical memory bandwidth)."""
    src = torch.empty(mib * 2**20 // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, 3, 10 if device.type == "cuda" else 3)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def run(height: int = 1024, width: int = 2048, batch: int = 1, instances: int = 100,
        reps: int = 100, quick: bool = False, out: str | None = None, device: str | None = None,
        official_reps: int = 3) -> dict:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = dev.type == "cuda"
    if quick or not gpu:
        height, width, instances, reps, official_reps = (min(height, 256), min(width, 512),
                                                         min(instances, 30), min(reps, 5), 1)
    B, H, W = batch, height, width
    label, inst = cityscapes_like(B, H, W, instances, dev)
    n_ids = int(sum(inst[b].unique().numel() for b in range(B)))
    bw = copy_bandwidth_gbps(dev, 1024 if gpu else 64)
    g = torch.Generator(device=dev).manual_seed(1)
    rows = []

    def row(kernel, way, ms, nbytes=None):
        rows.append(dict(kernel=kernel, way=way, ms=round(ms, 4),
                         **({"bytes": nbytes} if nbytes is not None else {})))

    def floor(kernel, nbytes):
        row(kernel, "bandwidth floor", nbytes / (bw * 1e9) * 1e3, nbytes)

    def triton_rows(kernel, fn):
        if not gpu:
            return
        row(kernel, "triton", time_ms(fn, dev, 10, reps))
        row(kernel, "triton, CUDA graph", time_graph_ms(fn, reps))

    N = B * H * W
    for dtype in (torch.float32, torch.float16):
        feat = torch.randn(B, 3, H, W, device=dev, generator=g).to(dtype)
        name = f"instance_mean C=3 {str(dtype).replace('torch.', '')}"
        floor(name, 2 * feat.numel() * feat.element_size() + N * 4)
        triton_rows(name, lambda: instance_mean(feat, inst))
        row(name, "torch reference (one-pass scatter)",
            time_ms(lambda: instance_mean_reference(feat, inst), dev, 2, max(3, reps // 5)))
        if dtype == torch.float32:
            row(name, "official per-instance loop",
                time_ms(lambda: official_loop(feat, inst), dev, 1, official_reps))

    # Each sample's ids; rows of different lengths are padded by repeating their first id (the
    # first listing wins, so the padding changes nothing).
    uniq = [torch.unique(inst[b]) for b in range(B)]
    K = max(u.numel() for u in uniq)
    ids = torch.stack([torch.cat([u, u[:1].expand(K - u.numel())]) for u in uniq])
    table = torch.randn(B, ids.shape[1], 3, device=dev, generator=g).to(torch.float16)
    name = "feature_scatter F=3 fp16"
    floor(name, N * 4 + 3 * N * 2)
    triton_rows(name, lambda: feature_scatter(inst, ids, table))
    row(name, "torch reference", time_ms(lambda: feature_scatter_reference(inst, ids, table),
                                         dev, 2, max(3, reps // 5)))

    result = dict(
        device=torch.cuda.get_device_name(dev) if gpu else f"CPU ({platform.processor() or 'cpu'})",
        gpu_figures=gpu and not quick,
        note=("CUDA events, median" if gpu else
              "CPU quick run of the references only: NOT the GPU figures"),
        size=[B, H, W], instances=n_ids, copy_bandwidth_GBps=round(bw, 1),
        torch=torch.__version__, rows=rows)
    try:
        import triton
        result["triton"] = triton.__version__
    except ImportError:
        pass
    print(markdown(result))
    if out:
        write_atomic(out, json.dumps(result, indent=2) + "\n")
    return result


def markdown(result: dict) -> str:
    B, H, W = result["size"]
    lines = [f"Kernels at batch {B} of {W}x{H}, {result['instances']} instance ids, "
             f"on {result['device']}; copy bandwidth {result['copy_bandwidth_GBps']} GB/s; {result['note']}.", "",
             "| kernel | way | ms | x floor |", "| --- | --- | ---: | ---: |"]
    floors = {r["kernel"]: r["ms"] for r in result["rows"] if r["way"] == "bandwidth floor"}
    for r in result["rows"]:
        ratio = r["ms"] / floors[r["kernel"]] if floors.get(r["kernel"]) else float("nan")
        lines.append(f"| {r['kernel']} | {r['way']} | {r['ms']:.4f} | {ratio:.1f} |")
    return "\n".join(lines)


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--height", default=1024, show_default=True)
@click.option("--width", default=2048, show_default=True)
@click.option("--batch", default=1, show_default=True)
@click.option("--instances", default=100, show_default=True, help="Boxes of cars and people.")
@click.option("--reps", default=100, show_default=True, help="Timed calls per Triton row.")
@click.option("--quick", is_flag=True, help="Small size, few repetitions (implied without CUDA).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the results as JSON here.")
@click.option("--device", help="cuda or cpu [cuda when present].")
def main(height, width, batch, instances, reps, quick, out, device):
    run(height, width, batch, instances, reps, quick, out, device)


if __name__ == "__main__":
    main()
