#!/usr/bin/env python
"""Load on `p2phd-infer serve`: N client threads (tritonclient.http, the binary extension)
against a local server, frames/s and latency percentiles, beside the same frames through `run`.

  server   started here as a subprocess on a free loopback port (--max-batch-size,
           --max-delay-us as given), stopped with SIGTERM at the end.
  load     --requests requests, one frame each, cycled over the label maps, sent by --threads
           threads, each with its own connection; a few warm-up requests first (not counted).
           Latency: request sent to answer decoded, per request; frames/s: answered frames over
           the wall time of the whole load.
  run      the same frames (the same files, --requests of them, linked into a folder) through
           `p2phd-infer run` with the same engine and batching; its frames/s from
           --summary-json (engine load excluded). On a CPU both use the PyTorch engine
           (run --mode plain), so the rows compare serving, not engines.

    python benchmarks/serve_load.py --quick            # bundled demo model, 512x256 samples, CPU
    python benchmarks/serve_load.py --engine model.pt --labels frames/ --instances insts/ \\
        --device cuda --threads 16 --requests 2000 --max-batch-size 8 --out-json serve.json
"""
from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import numpy as np

CLI = [sys.executable, "-c", "from p2phd_infer.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], log: Path, timeout: float = 180) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log, "wb") as f:
        proc = subprocess.Popen(CLI + ["serve", "--host", "127.0.0.1", "--port", str(port),
                                       "--log-level", "warning", *args],
                                stdout=f, stderr=subprocess.STDOUT)
    url = f"127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=5) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server was not ready in {timeout} s:\n{log.read_text()}")


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def load(url: str, frames: list, requests: int, threads: int, model: str) -> dict:
    import tritonclient.http as th

    local = threading.local()

    def client():
        if not hasattr(local, "c"):
            local.c = th.InferenceServerClient(url, connection_timeout=120, network_timeout=600)
        return local.c

    def one(i: int) -> float:
        label, inst = frames[i % len(frames)]
        inputs = [th.InferInput("label", [1, 1, *label.shape], "INT32")]
        inputs[0].set_data_from_numpy(label[None, None])
        if inst is not None:
            inputs.append(th.InferInput("inst", [1, 1, *inst.shape], "INT32"))
            inputs[1].set_data_from_numpy(inst[None, None])
        t0 = time.perf_counter()
        img = client().infer(model, inputs).as_numpy("image")
        dt = time.perf_counter() - t0
        assert img.shape == (1, *label.shape, 3)
        return dt

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(min(requests, 2 * threads))))        # warm-up
        t0 = time.perf_counter()
        lat = np.array(list(pool.map(one, range(requests))))
        wall = time.perf_counter() - t0
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=30) as r:
        metrics = r.read().decode()
    sizes = {}
    for line in metrics.splitlines():
        if line.startswith("p2phd_batch_size_count") or line.startswith("p2phd_batch_size_sum"):
            sizes[line.split()[0]] = float(line.split()[1])
    mean_batch = sizes.get("p2phd_batch_size_sum", 0) / max(sizes.get("p2phd_batch_size_count",
                                                                      1), 1)
    return {"frames_per_second": requests / wall, "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3), "seconds": wall,
            "mean_batch": mean_batch}


def through_run(pairs: list, requests: int, run_args: list[str], work: Path) -> dict:
    labels, insts = work / "run_labels", work / "run_insts"
    labels.mkdir()
    insts.mkdir()
    for i in range(requests):
        label, inst = pairs[i % len(pairs)]
        os.symlink(label, labels / f"f{i:06d}.png")
        if inst is not None:
            os.symlink(inst, insts / f"f{i:06d}.png")
    summary = work / "run_summary.json"
    cmd = CLI + ["run", str(labels), "--out", str(work / "run_out"), "--no-progress",
                 "--summary-json", str(summary), *run_args]
    if any(inst is not None for _, inst in pairs):
        cmd += ["--instances", str(insts)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"run failed ({res.returncode}):\n{res.stderr}")
    s = json.loads(summary.read_text())
    return {"frames_per_second": s["frames_per_second"], "seconds": s["seconds"]}


@click.command()
@click.option("--engine", type=click.Path(dir_okay=False), default=None,
              help="Engine file [the bundled demo model].")
@click.option("--labels", type=click.Path(exists=True), default=None,
              help="Label maps [the bundled samples].")
@click.option("--instances", type=click.Path(exists=True, file_okay=False), default=None)
@click.option("--device", default="auto", show_default=True)
@click.option("--mode", default="auto", show_default=True, help="PyTorch engines' mode.")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 1024))
@click.option("--requests", default=200, show_default=True, type=click.IntRange(1))
@click.option("--max-batch-size", default=4, show_default=True, type=click.IntRange(1))
@click.option("--max-delay-us", default=2000, show_default=True, type=click.IntRange(0))
@click.option("--quick", is_flag=True, help="Demo model, samples, 4 threads, 24 requests.")
@click.option("--out-json", type=click.Path(dir_okay=False), default=None)
def main(engine, labels, instances, device, mode, threads, requests, max_batch_size,
         max_delay_us, quick, out_json):
    from p2phd_infer.engines import default_engine_path
    from p2phd_infer.engines.base import resolve_device
    from p2phd_infer.image_io import read_id_png
    from p2phd_infer.plan import discover, sample_labels

    if quick:
        threads, requests = 4, 24
    if labels is None:
        labels, instances = str(sample_labels()), instances or str(sample_labels().parent /
                                                                   "instances")
    engine = str(engine or default_engine_path())
    pairs = [(Path(label).resolve(), None if inst is None else Path(inst).resolve())
             for _, label, inst in discover(labels, instances)]
    if not pairs:
        raise SystemExit(f"no label maps in {labels}")
    frames = [(read_id_png(label), None if inst is None else read_id_png(inst))
              for label, inst in pairs]
    dev = resolve_device(device)
    # On a CPU `run` may default to another backend; plain PyTorch in both rows compares the
    # serving path, not engines.
    run_mode = "plain" if dev.type == "cpu" and mode == "auto" else mode
    common = ["--engine", engine, "--device", str(dev), "--max-delay-us", str(max_delay_us)]
    with tempfile.TemporaryDirectory(prefix="p2phd-serve-load-") as tmp:
        work = Path(tmp)
        proc, url = start_server(common + ["--mode", mode, "--max-batch-size",
                                           str(max_batch_size), "--max-queue",
                                           str(max(64, 2 * threads))], work / "server.log")
        try:
            served = load(url, frames, requests, threads, "p2phd")
        finally:
            code = stop_server(proc)
        if code != 0:
            print(f"warning: the server exited {code} on SIGTERM", file=sys.stderr)
        ran = through_run(pairs, requests, common + ["--mode", run_mode, "--batch-size",
                                                     str(max_batch_size)], work)
    H, W = frames[0][0].shape
    result = {"engine": engine, "device": str(dev), "size": f"{W}x{H}", "threads": threads,
              "requests": requests, "max_batch_size": max_batch_size,
              "max_delay_us": max_delay_us, "serve": served, "run": ran,
              "host": platform.node(), "cpus": os.cpu_count()}
    print(f"{requests} frames of {W}x{H} on {dev}, {threads} client threads, max batch "
          f"{max_batch_size}, delay {max_delay_us} us")
    print(f"  serve: {served['frames_per_second']:8.2f} frames/s   p50 {served['p50_ms']:8.1f} ms"
          f"   p99 {served['p99_ms']:8.1f} ms   mean batch {served['mean_batch']:.2f}")
    print(f"  run:   {ran['frames_per_second']:8.2f} frames/s")
    if out_json:
        from p2phd_infer.files import write_atomic
        write_atomic(out_json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
