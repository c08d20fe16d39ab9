"""`run --ray`: a local Ray cluster on the CPU (2 workers) gives the same bytes as a local run,
survives a worker that dies mid-run, and a rerun only does what is missing."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from p2phd_infer.checkpoint import Checkpoint, save_checkpoint
from p2phd_infer.cli import main
from p2phd_infer.config import ModelConfig
from p2phd_infer.networks import build_generator
from p2phd_infer.files import remove_temps_of, temp_path
from p2phd_infer.plan import RunOptions
from p2phd_infer.ray_run import SynthesisWorker, run_on_ray

N_MAPS = 12
TINY = ModelConfig(label_nc=8, ngf=4, n_downsample_global=2, n_blocks_global=1,
                   n_blocks_local=1)                                    # local enhancer, stride 8


def run_cli(args):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return res.exit_code, res.output


def test_ray_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)          # import ray -> ImportError
    (tmp_path / "labels").mkdir()
    code, out = run_cli(["run", tmp_path / "labels", "--out", tmp_path / "o", "--ray"])
    assert code == 2
    assert out.strip().splitlines() == [
        'error: --ray: needs Ray, which is not installed: pip install "p2phd-infer[ray]"']


ray = pytest.importorskip("ray", reason="Ray is not installed (pip install \"p2phd-infer[ray]\")")


class CrashingWorker(SynthesisWorker):
    """A worker that dies like a lost node: while the file `crash` exists, the first worker to
    remove it exits at once, after the first output of its batch is written."""

    crash: str = ""

    def after_frame(self, k: int) -> None:
        if k == 0:
            try:
                os.unlink(self.crash)       # atomic: exactly one worker claims it
            except FileNotFoundError:
                return
            os._exit(17)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local 2-CPU Ray cluster."""
    crash = tmp_path_factory.mktemp("drill") / "crash-once"
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield crash
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny random-weight model and 12 label/instance pairs at 32x32 (pix2pixHD folders)."""
    root = tmp_path_factory.mktemp("data")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        G = build_generator(TINY)
    save_checkpoint(Checkpoint(TINY, G.state_dict()), root / "model.pt")
    rng = np.random.default_rng(0)
    for d in ("test_label", "test_inst"):
        (root / d).mkdir()
    for i in range(N_MAPS):
        label = rng.integers(0, 8, (8, 8)).repeat(4, 0).repeat(4, 1)
        inst = np.where(label >= 5, label * 1000 + rng.integers(0, 3, label.shape), label)
        Image.fromarray(label.astype(np.uint8)).save(root / "test_label" / f"m{i:02d}.png")
        Image.fromarray(inst.astype(np.uint16)).save(root / "test_inst" / f"m{i:02d}.png")
    code, out = run_cli(["run", root / "test_label", "--engine", root / "model.pt",
                         "--out", root / "local", "--device", "cpu", "--batch-size", 3])
    assert code == 0, out
    local = {p.name: p.read_bytes() for p in (root / "local").iterdir()}
    assert len(local) == N_MAPS
    return root, local


def outputs(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_ray_run_matches_local_run_bytes(cluster, data, tmp_path):
    root, local = data
    code, out = run_cli(["run", root / "test_label", "--engine", root / "model.pt",
                         "--out", tmp_path / "o", "--ray", "--num-workers", 2, "--batch-size", 2])
    assert code == 0, out
    assert f"{N_MAPS} frames: {N_MAPS} written, 0 skipped (exist), 0 failed" in out
    got = outputs(tmp_path / "o")
    assert sorted(got) == sorted(local)
    assert got == local                                   # byte-identical PNGs
    assert len(set(got.values())) == N_MAPS               # and not one image twelve times

    # Rerun: nothing to do. Remove three outputs: only those are synthesized again.
    for name in ("m01.png", "m05.png", "m11.png"):
        (tmp_path / "o" / name).unlink()
    code, out = run_cli(["run", root / "test_label", "--engine", root / "model.pt",
                         "--out", tmp_path / "o", "--ray", "--num-workers", 2])
    assert code == 0, out
    assert f"{N_MAPS} frames: 3 written, 9 skipped (exist), 0 failed" in out
    assert outputs(tmp_path / "o") == local


def test_worker_killed_mid_run_still_gives_every_output_once(cluster, data, tmp_path):
    root, local = data
    import ray.cloudpickle
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import tests/
    cluster.write_text("armed")      # the first worker to start a batch dies after its 1st write
    worker = type("Crashing", (CrashingWorker,), {"crash": str(cluster)})
    summary = run_on_ray(RunOptions(labels=str(root / "test_label"), out=str(tmp_path / "o"),
                                    engine=str(root / "model.pt"), ray="", num_workers=2,
                                    batch_size=3), worker=worker)
    assert not cluster.exists(), "the drill did not fire: no worker died"
    assert (summary.frames, summary.written, summary.failed) == (N_MAPS, N_MAPS, 0)
    names = sorted(os.listdir(tmp_path / "o"))
    assert names == sorted(local)                          # all 12, once, no temporary files
    assert outputs(tmp_path / "o") == local                # none partial


def test_uri_inputs_and_outputs_read_and_write_through_pyarrow(cluster, data, tmp_path):
    """file:// URIs go through the filesystem code used for s3:// or gs:// (pairing by sibling
    folder, fetch, atomic put); a bad label map fails alone with its URI named."""
    root, local = data
    labels = tmp_path / "in" / "test_label"
    labels.mkdir(parents=True)
    (tmp_path / "in" / "test_inst").symlink_to(root / "test_inst")
    for name in ("m00.png", "m07.png"):
        (labels / name).write_bytes((root / "test_label" / name).read_bytes())
    (labels / "m03.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code, out = run_cli(["run", f"file://{labels}", "--engine", root / "model.pt",
                         "--out", f"file://{tmp_path}/o", "--ray", "--num-workers", 1])
    assert code == 1, out
    assert "3 frames: 2 written, 0 skipped (exist), 1 failed" in out
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"file://{labels}/m03.png: not a readable PNG" in errors[0]
    assert outputs(tmp_path / "o") == {n: local[n] for n in ("m00.png", "m07.png")}


def test_stray_temporaries_of_dead_attempts_are_removed(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    half = temp_path(out / "a.png")
    half.write_bytes(b"half")                                # a killed write of a.png
    other = temp_path(out / "other.png")
    other.write_bytes(b"not ours")                           # another job's
    (out / ".a.png.notes").write_bytes(b"someone's file")    # not a temporary name
    (out / "a.png").write_bytes(b"done")
    assert remove_temps_of([str(out / "a.png"), str(out / "b.png")]) == 1
    assert sorted(os.listdir(out)) == sorted([".a.png.notes", other.name, "a.png"])


def test_a_missing_instance_map_is_named_not_read_as_nan(cluster, data, tmp_path, monkeypatch):
    """A label map without an instance map reaches the worker as "no instance map" (Ray Data
    columns once turned None into the float NaN, and a file named `nan` was read)."""
    root, local = data
    labels = tmp_path / "test_label"
    labels.mkdir()
    (labels / "m00.png").write_bytes((root / "test_label" / "m00.png").read_bytes())
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nan").write_bytes((root / "test_inst" / "m00.png").read_bytes())
    code, out = run_cli(["run", labels, "--engine", root / "model.pt", "--out", tmp_path / "o",
                         "--ray", "--num-workers", 1])
    assert code == 1, out
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: {labels / 'm00.png'}: no instance map found (the model needs one): give "
        f"--instances DIR"), errors
    assert not (tmp_path / "o" / "m00.png").exists()
