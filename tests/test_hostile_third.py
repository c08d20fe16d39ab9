"""Hostile input, third round: each class of fault is closed by its rule, and each test holds the
example that got through before and at least one more case of the same class.

Cases that need a device node make it with mknod inside a temporary folder (never touching
/dev), and skip with the reason where that is not allowed (not root, no CAP_MKNOD).
"""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from p2phd_infer.cli import main
from p2phd_infer.config import ModelConfig
from p2phd_infer.engines import TorchEngine
from p2phd_infer.errors import OutputError
from p2phd_infer.runtime import Runtime
from helpers import save_random_model

TINY = ModelConfig(label_nc=8, use_instance=False, ngf=2, netG="global", n_downsample_global=2,
                   n_blocks_global=1)                   # no instance map needed; minimum 8x8

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_random_model(tmp_path_factory.mktemp("m") / "model.pt", TINY)


def char_device(path):
    """A character device with /dev/null's numbers (1, 3), made inside a temporary folder."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError) as e:
        pytest.skip(f"mknod needs root (CAP_MKNOD) here: {e}")
    return path


def maps(seed=0, h=16, w=16):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 8, (h // 4, w // 4)).repeat(4, 0).repeat(4, 1).astype(np.uint8)
    return label, (label.astype(np.uint16) * 1000)


def folder(root, n=2):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(maps(i)[0]).save(root / f"f{i}.png")
    return root


def run(*args):
    r = CliRunner().invoke(main, ["run", "--no-progress", "--backend", "torch", *[str(a) for a in args]],
                           catch_exceptions=False)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert "Traceback" not in r.output
    return r.exit_code, errors, r


# ------------------------------------------------- 1. outputs never replace non-regular files

def test_summary_json_on_a_device_or_fifo_is_refused_before_work(tmp_path, model):
    labels = folder(tmp_path / "l")
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    code, errors, _ = run(labels, "--engine", model, "--out", tmp_path / "o",
                          "--summary-json", fifo)
    assert code == 2 and errors == [f"error: {fifo}: is a FIFO (named pipe), not a regular file; "
                                    f"an output never replaces one (remove it or choose another "
                                    f"path)"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and not (tmp_path / "o").exists()
    dev = char_device(tmp_path / "null")
    code, errors, _ = run(labels, "--engine", model, "--out", tmp_path / "o",
                          "--summary-json", dev)
    assert code == 2 and len(errors) == 1 and "is a character device" in errors[0]
    assert stat.S_ISCHR(os.lstat(dev).st_mode)


def test_summary_json_dash_and_dev_stdout_are_streams(tmp_path, model):
    labels = folder(tmp_path / "l")
    for target in ("-", "/dev/stdout"):
        code, errors, r = run(labels, "--engine", model, "--out", tmp_path / target.strip("/-"),
                              "--summary-json", target)
        assert code == 0 and errors == [], r.output
        assert json.loads(r.stdout)["written"] == 2      # stdout holds the JSON alone
    assert not (tmp_path / "-").exists()


def test_runtime_output_onto_a_device_or_symlink_fails_alone(tmp_path, model):
    dev = char_device(tmp_path / "null")
    precious = tmp_path / "precious.png"
    precious.write_bytes(b"keep")
    link = tmp_path / "link.png"
    link.symlink_to(precious)
    label, inst = maps()
    with Runtime(TorchEngine(model, "cpu")) as rt:
        bad = [rt.submit(label, inst, out=dev), rt.submit(label, inst, out=link)]
        good = rt.submit(label, inst, out=tmp_path / "ok.png")
        for f, what in zip(bad, ("character device", "symbolic link")):
            with pytest.raises(OutputError, match=f"is a {what}, not a regular file"):
                f.result(60)
        assert str(good.result(60)) == str(tmp_path / "ok.png")
    assert stat.S_ISCHR(os.lstat(dev).st_mode)
    assert link.is_symlink() and precious.read_bytes() == b"keep"


# ------------------------------------------------- 2. discovery never hangs or multiplies

def test_a_fifo_in_the_labels_folder_fails_alone(tmp_path, model):
    labels = folder(tmp_path / "l")
    os.mkfifo(labels / "pipe.png")
    code, errors, r = run(labels, "--engine", model, "--out", tmp_path / "o")
    assert code == 1 and errors == [f"error: {labels / 'pipe.png'}: is a FIFO (named pipe), "
                                    f"not a regular file"]
    assert sorted(os.listdir(tmp_path / "o")) == ["f0.png", "f1.png"]


def test_links_to_dot_and_loops_give_each_frame_once(tmp_path, model):
    labels = folder(tmp_path / "l")
    for name in ("a", "b", "c"):
        (labels / name).symlink_to(".")
    (labels / "self").symlink_to("../l")
    code, errors, r = run(labels, "--engine", model, "--out", tmp_path / "o")
    assert code == 0 and errors == [] and "2 frames: 2 written" in r.stderr


def test_a_labels_folder_linked_to_root_is_bounded(tmp_path, model, monkeypatch):
    monkeypatch.setattr("p2phd_infer.locations.MAX_ENTRIES", 5000)
    (tmp_path / "l").symlink_to("/")
    code, errors, _ = run(tmp_path / "l", "--engine", model, "--out", tmp_path / "o")
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith("error: /: holds more than 5,000 files")   # the resolved folder
