#!/usr/bin/env python
"""Load on `p2phd-infer serve` over each way in, beside the same frames through `run`:

  http       tritonclient.http, the binary tensor extension
  grpc       tritonclient.grpc, raw_input_contents / raw_output_contents
  grpc+shm   tritonclient.grpc with system shared memory: each client thread registers one input
             region (label + inst) and one output region once; per request it writes the frame
             into its region, names it, and reads the image back out (a simulator on the same
             host, which never serialises the ids)
  run        `p2phd-infer run` on the same frames (linked into a folder) with the same engine and
             --batch-size = --max-batch-size; frames/s from --summary-json (engine load excluded);
             run once before the server rows and once after, and the mean of the two is the
             reference (on a shared machine the load drifts over a benchmark)

For each protocol and each --concurrency (client threads, each with its own connection and
requests back to back): a warm-up of 2 requests per thread (not counted), then --requests
requests of one frame each, cycled over the label maps. Latency: request sent to image in hand,
per request; frames/s: frames answered over the wall time; mean batch: frames per engine call,
from the server's statistics extension (inference_count / execution_count over the load).
One server (HTTP and gRPC on free loopback ports) serves every row; on a CPU it and `run` both
use plain PyTorch (--mode plain), so the rows compare serving, not engines. The 1-minute load
average is recorded before and after: on a shared machine it says how far to trust the rows.

    python benchmarks/serve_load.py --quick            # bundled demo model, 512x256 samples, CPU
    python benchmarks/serve_load.py --engine model.pt --labels frames/ --instances insts/ \\
        --device cuda --concurrency 1,2,4,8,16 --requests 400 --max-batch-size 8 --out-json s.json
"""
from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import numpy as np

CLI = [sys.executable, "-c", "from p2phd_infer.cli import main; main()"]
PROTOCOLS = ("http", "grpc", "grpc+shm")


def start_server(args: list[str], log: Path, timeout: float = 180
                 ) -> tuple[subprocess.Popen, str, str]:
    """The server on free loopback ports -> (process, HTTP address, gRPC address)."""
    with open(log, "wb") as f:
        proc = subprocess.Popen(CLI + ["serve", "--host", "127.0.0.1", "--port", "0",
                                       "--grpc-port", "0", "--log-level", "warning", *args],
                                stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited {proc.returncode}:\n{log.read_text()}")
        text = log.read_text(errors="replace")
        http = re.search(r"on http://(\S+)", text)
        grpc = re.search(r"gRPC on (\S+)", text)
        if http and grpc:
            try:
                with urllib.request.urlopen(f"http://{http.group(1)}/v2/health/ready",
                                            timeout=5) as r:
                    if r.status == 200:
                        return proc, http.group(1), grpc.group(1)
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


class Client:
    """One thread's connection (and, for grpc+shm, its regions); `infer(label, inst)` -> the
    uint8 [H,W,3] image."""

    def __init__(self, protocol: str, http_url: str, grpc_url: str, model: str, shape):
        self.protocol, self.model = protocol, model
        H, W = shape
        self.n_in, self.n_out = 4 * H * W, 3 * H * W
        if protocol == "http":
            import tritonclient.http as mod
            self.c = mod.InferenceServerClient(http_url, connection_timeout=120,
                                               network_timeout=600)
        else:
            import tritonclient.grpc as mod
            self.c = mod.InferenceServerClient(grpc_url)
        self.mod = mod
        self.regions = []
        if protocol == "grpc+shm":
            import tritonclient.utils.shared_memory as shm
            self.shm = shm
            tag = uuid.uuid4().hex[:10]
            self.rin, self.rout = f"in_{tag}", f"out_{tag}"
            self.hin = shm.create_shared_memory_region(self.rin, f"/{self.rin}", 2 * self.n_in)
            self.hout = shm.create_shared_memory_region(self.rout, f"/{self.rout}", self.n_out)
            self.regions = [self.hin, self.hout]
            self.c.register_system_shared_memory(self.rin, f"/{self.rin}", 2 * self.n_in)
            self.c.register_system_shared_memory(self.rout, f"/{self.rout}", self.n_out)

    def infer(self, label: np.ndarray, inst: np.ndarray | None) -> np.ndarray:
        mod, shape = self.mod, [1, 1, *label.shape]
        names = ["label"] + ([] if inst is None else ["inst"])
        inputs = [mod.InferInput(n, shape, "INT32") for n in names]
        if self.protocol == "grpc+shm":
            maps = [label[None, None]] + ([] if inst is None else [inst[None, None]])
            self.shm.set_shared_memory_region(self.hin, maps)
            for i, t in enumerate(inputs):
                t.set_shared_memory(self.rin, self.n_in, offset=i * self.n_in)
            out = mod.InferRequestedOutput("image")
            out.set_shared_memory(self.rout, self.n_out)
            self.c.infer(self.model, inputs, outputs=[out])
            return self.shm.get_contents_as_numpy(self.hout, np.uint8, [*label.shape, 3]).copy()
        for t, a in zip(inputs, [label, inst]):
            t.set_data_from_numpy(a[None, None])
        return self.c.infer(self.model, inputs).as_numpy("image")[0]

    def close(self) -> None:
        if self.regions:
            self.c.unregister_system_shared_memory(self.rin)
            self.c.unregister_system_shared_memory(self.rout)
            for h in self.regions:
                self.shm.destroy_shared_memory_region(h)
        self.c.close()


def statistics(http_url: str, model: str) -> tuple[int, int]:
    with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/stats", timeout=30) as r:
        s = json.loads(r.read())["model_stats"][0]
    return s["inference_count"], s["execution_count"]


def load(protocol: str, http_url: str, grpc_url: str, frames: list, requests: int,
         threads: int, model: str) -> dict:
    local = threading.local()
    clients: list[Client] = []
    lock = threading.Lock()
    shape = frames[0][0].shape

    def one(i: int) -> float:
        if not hasattr(local, "c"):
            local.c = Client(protocol, http_url, grpc_url, model, shape)
            with lock:
                clients.append(local.c)
        label, inst = frames[i % len(frames)]
        t0 = time.perf_counter()
        img = local.c.infer(label, inst)
        dt = time.perf_counter() - t0
        assert img.shape == (*label.shape, 3)
        return dt

    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(2 * threads)))                    # warm-up
            n0, e0 = statistics(http_url, model)
            t0 = time.perf_counter()
            lat = np.array(list(pool.map(one, range(requests))))
            wall = time.perf_counter() - t0
            n1, e1 = statistics(http_url, model)
    finally:
        for c in clients:
            c.close()
    return {"frames_per_second": requests / wall, "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3), "seconds": wall,
            "mean_batch": (n1 - n0) / max(e1 - e0, 1)}


def through_run(pairs: list, requests: int, run_args: list[str], work: Path) -> dict:
    work.mkdir()
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


def markdown(result: dict) -> str:
    """The table RESULTS.md quotes."""
    run_fps = result["run"]["frames_per_second"]
    lines = ["| protocol | concurrency | frames/s | x run | p50 ms | p99 ms | mean batch |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in result["rows"]:
        lines.append(f"| {row['protocol']} | {row['concurrency']} | "
                     f"{row['frames_per_second']:.2f} | {row['frames_per_second'] / run_fps:.2f} "
                     f"| {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | {row['mean_batch']:.2f} |")
    before, after = (result["run"][k]["frames_per_second"] for k in ("before", "after"))
    lines.append(f"| run (--batch-size {result['max_batch_size']}; before {before:.2f}, after "
                 f"{after:.2f}) | - | {run_fps:.2f} | 1.00 | - | - | - |")
    return "\n".join(lines)


@click.command()
@click.option("--engine", type=click.Path(dir_okay=False), default=None,
              help="Engine file [the bundled demo model].")
@click.option("--labels", type=click.Path(exists=True), default=None,
              help="Label maps [the bundled samples].")
@click.option("--instances", type=click.Path(exists=True, file_okay=False), default=None,
              help="Instance maps paired with the label maps by name.")
@click.option("--device", default="auto", show_default=True, help="Engine device.")
@click.option("--mode", default="auto", show_default=True,
              help="PyTorch engines' mode (on a CPU: plain for both the server and run).")
@click.option("--concurrency", default="1,2,4,8", show_default=True,
              help="Client thread counts, comma-separated; one row per protocol and count.")
@click.option("--protocols", default=",".join(PROTOCOLS), show_default=True,
              help="Which of http, grpc, grpc+shm to load.")
@click.option("--requests", default=64, show_default=True, type=click.IntRange(1),
              help="Requests (one frame each) per row, after the warm-up.")
@click.option("--max-batch-size", default=4, show_default=True, type=click.IntRange(1),
              help="The server's --max-batch-size and run's --batch-size.")
@click.option("--max-queue-delay-us", default=30000, show_default=True, type=click.IntRange(0),
              help="The server's and run's --max-queue-delay-us. Closed-loop clients' requests "
                   "come back staggered by their answers; a window of a few percent of a "
                   "frame's compute time lets them batch (2 ms on a CPU frame of ~1 s mostly "
                   "does not).")
@click.option("--threads", default=None, type=click.IntRange(1),
              help="OMP/MKL threads of the server and of run [all]: the same for both.")
@click.option("--quick", is_flag=True, help="Demo model and samples, 16 requests per row.")
@click.option("--out-json", type=click.Path(dir_okay=False), default=None,
              help="Write every figure here (JSON).")
def main(engine, labels, instances, device, mode, concurrency, protocols, requests,
         max_batch_size, max_queue_delay_us, threads, quick, out_json):
    """HTTP vs gRPC vs gRPC + shared memory vs `run` on one engine."""
    from p2phd_infer.engines import default_engine_path
    from p2phd_infer.engines.base import resolve_device
    from p2phd_infer.image_io import read_id_png
    from p2phd_infer.plan import discover, sample_labels

    if quick:
        requests = 16
    levels = [int(c) for c in concurrency.split(",") if c.strip()]
    chosen = [p.strip() for p in protocols.split(",") if p.strip()]
    unknown = set(chosen) - set(PROTOCOLS)
    if unknown or not levels or min(levels) < 1:
        raise click.BadParameter(f"protocols from {', '.join(PROTOCOLS)}, concurrency >= 1")
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
    if len({f[0].shape for f in frames}) != 1:
        raise SystemExit("the label maps differ in size; the shared-memory regions hold one")
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    dev = resolve_device(device)
    mode = "plain" if dev.type == "cpu" and mode == "auto" else mode
    common = ["--engine", engine, "--device", str(dev), "--mode", mode, "--max-queue-delay-us",
              str(max_queue_delay_us)]
    load_before = os.getloadavg()[0]
    rows = []
    run_args = common + ["--batch-size", str(max_batch_size)]
    with tempfile.TemporaryDirectory(prefix="p2phd-serve-load-") as tmp:
        work = Path(tmp)
        ran_before = through_run(pairs, requests, run_args, work / "run_before")
        proc, http_url, grpc_url = start_server(
            common + ["--max-batch-size", str(max_batch_size), "--max-queue",
                      str(max(64, 2 * max(levels)))], work / "server.log")
        try:
            for protocol in chosen:
                for c in levels:
                    row = load(protocol, http_url, grpc_url, frames, requests, c, "p2phd")
                    rows.append({"protocol": protocol, "concurrency": c, **row})
                    print(f"  {protocol:9s} c={c:<3d} {row['frames_per_second']:8.2f} frames/s"
                          f"   p50 {row['p50_ms']:8.1f} ms   p99 {row['p99_ms']:8.1f} ms"
                          f"   mean batch {row['mean_batch']:.2f}", file=sys.stderr)
        finally:
            code = stop_server(proc)
        if code != 0:
            print(f"warning: the server exited {code} on SIGTERM", file=sys.stderr)
        ran_after = through_run(pairs, requests, run_args, work / "run_after")
    ran = {"frames_per_second": (ran_before["frames_per_second"] +
                                 ran_after["frames_per_second"]) / 2,
           "before": ran_before, "after": ran_after}
    H, W = frames[0][0].shape
    result = {"engine": engine, "device": str(dev), "mode": mode, "size": f"{W}x{H}",
              "requests": requests, "max_batch_size": max_batch_size,
              "max_queue_delay_us": max_queue_delay_us, "threads": threads, "rows": rows, "run": ran,
              "load_average_1min": [load_before, os.getloadavg()[0]],
              "host": platform.node(), "cpus": os.cpu_count()}
    print(f"{requests} frames of {W}x{H} per row on {dev} ({mode}), max batch "
          f"{max_batch_size}, delay {max_queue_delay_us} us; load average "
          f"{load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(markdown(result))
    if out_json:
        from p2phd_infer.files import write_atomic
        write_atomic(out_json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
