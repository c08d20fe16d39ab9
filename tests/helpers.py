"""Small builders the test modules share (conftest.py has the fixtures)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import torch

from p2phd_infer.checkpoint import Checkpoint, save_checkpoint
from p2phd_infer.config import ModelConfig
from p2phd_infer.networks import build_generator


def random_checkpoint(cfg: ModelConfig, seed: int = 0, features=None,
                      std: float | None = None) -> Checkpoint:
    """A generator with random weights (PyTorch's init, or N(0, std) for livelier images), without
    touching the global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = build_generator(cfg)
        if std is not None:
            for p in net.parameters():
                p.data.normal_(0, std)
    return Checkpoint(cfg, net.state_dict(), features=features)


def save_random_model(path, cfg: ModelConfig, seed: int = 0, **kw):
    save_checkpoint(random_checkpoint(cfg, seed, **kw), path)
    return path


def char_device(path):
    """A character device with /dev/null's numbers (1, 3), made inside a temporary folder (never
    touching /dev); the test is skipped, saying why, where mknod is not allowed."""
    import stat

    import pytest
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except OSError as e:
        pytest.skip(f"mknod needs root (CAP_MKNOD) here: {e}")
    return path


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def cli_server(args: list, log: Path, threads: int = 1, timeout_s: float = 90):
    """`p2phd-infer ARGS --host 127.0.0.1 --port P` as a subprocess, yielded as (proc, url) once
    /v2/health/ready answers 200; stopped with SIGTERM (then killed) at the end. Output goes to
    `log`, which an error quotes."""
    port = free_port()
    if args[0] == "serve" and "--grpc-port" not in args and "--no-grpc" not in args:
        args = [*args, "--grpc-port", "0"]     # never the shared default 8001
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from p2phd_infer.cli import main; main()",
             *map(str, args), "--host", "127.0.0.1", "--port", str(port)],
            stdout=logf, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{args[0]} exited {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url + "/v2/health/ready", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{args[0]} not ready in {timeout_s} s:\n{log.read_text()}")
            time.sleep(0.2)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
