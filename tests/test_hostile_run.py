"""Hostile input and faults against `run`, the Runtime and the API: nothing executes, nothing
hangs, nothing is lost or overwritten. Each test names the class of fault it closes."""
from __future__ import annotations

import io
import os
import threading
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from p2phd_infer.api import Pix2PixHD
from p2phd_infer.cli import main
from p2phd_infer.config import ModelConfig
from p2phd_infer.engines import Engine, EngineInfo, TorchEngine
from p2phd_infer.errors import EngineError, EngineFault, InputError, OptionError, RuntimeClosed
from p2phd_infer.files import temp_path
from p2phd_infer.runtime import Runtime
from helpers import save_random_model

TINY = ModelConfig(label_nc=8, ngf=4, n_downsample_global=2, n_blocks_global=1,
                   n_blocks_local=1)                     # local enhancer: stride 8, minimum 16


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_random_model(tmp_path_factory.mktemp("m") / "model.pt", TINY)


def maps(rng, h=32, w=32):
    label = rng.integers(0, 8, (h // 4, w // 4)).repeat(4, 0).repeat(4, 1)
    inst = np.where(label >= 5, label * 1000 + rng.integers(0, 3, label.shape), label)
    return label.astype(np.uint8), inst.astype(np.uint16)


def folder(root, n=3, seed=0, h=32, w=32):
    rng = np.random.default_rng(seed)
    for d in ("test_label", "test_inst"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label, inst = maps(rng, h, w)
        Image.fromarray(label).save(root / "test_label" / f"f{i}.png")
        Image.fromarray(inst).save(root / "test_inst" / f"f{i}.png")
    return root / "test_label"


def run(*args):
    # PyTorch: what run does with bad inputs, outputs and batches is tested here; the CPU
    # default's OpenVINO conversion would only add seconds (and eat into the timed flush below).
    r = CliRunner().invoke(main, ["run", "--backend", "torch", *[str(a) for a in args]],
                           catch_exceptions=False)
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    return r.exit_code, errors, r.output


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- 3. overwriting inputs

@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_folder_onto_the_inputs_is_refused(tmp_path, model, overwrite):
    labels = folder(tmp_path / "d")
    before = snapshot(tmp_path / "d")
    code, errors, out = run(labels, "--engine", model, "--out", labels,
                            *(["--overwrite"] if overwrite else []))
    assert code == 2 and len(errors) == 1, out
    assert "--out" in errors[0] and "would overwrite an input map" in errors[0]
    assert snapshot(tmp_path / "d") == before                # inputs byte-identical


# ---------------------------------------------------------------- 4. concurrent writers

def test_many_writes_to_one_output_leave_one_whole_image(tmp_path, model):
    engine = TorchEngine(model, "cpu")
    rng = np.random.default_rng(1)
    label, inst = maps(rng, 16, 16)
    name = "x" * 248 + ".png"                                # a legal 252-byte file name
    out = tmp_path / name
    seen, stop = [], threading.Event()

    def reader():                                            # a reader never sees a partial file
        while not stop.is_set():
            if out.exists():
                with Image.open(out) as im:
                    im.load()
                    seen.append(im.size)

    t = threading.Thread(target=reader)
    t.start()
    with Runtime(engine, max_batch_size=4, max_queue_delay_us=1000, encode_workers=8) as rt:
        futs = [rt.submit(label, inst, out=out) for _ in range(300)]
        results = [f.result(timeout=120) for f in futs]
    stop.set()
    t.join()
    assert all(r == out for r in results)                    # none failed
    assert os.listdir(tmp_path) == [name]                   # no temporary file left
    assert set(seen) <= {(16, 16)}
    with Image.open(out) as im:
        assert im.size == (16, 16)
    assert len(temp_path(out).name.encode()) <= 255


# ---------------------------------------------------------------- 5. hangs

def test_the_tail_batch_flushes_at_the_end_of_input(tmp_path, model):
    labels = folder(tmp_path / "d", n=3)
    t0 = time.monotonic()
    code, errors, out = run(labels, "--engine", model, "--out", tmp_path / "o", "--batch-size", 8,
                            "--max-delay-us", 60_000_000)
    assert code == 0, out
    assert time.monotonic() - t0 < 30                         # not the minute of the delay
    code, errors, out = run(labels, "--engine", model, "--out", tmp_path / "p",
                            "--max-delay-us", 10**19)
    assert code == 2 and "--max-delay-us" in out              # refused up front, no OverflowError


class Scripted(Engine):
    """An engine that runs a given function on each call."""

    def __init__(self, fn, info=None):
        self.info = info or EngineInfo(ModelConfig(label_nc=8, netG="global",
                                                   n_downsample_global=1))
        self.device = torch.device("cpu")
        self.fn = fn

    def __call__(self, label, inst, feat=None):
        self.fn(label)
        return torch.zeros(label.shape[0], 3, *label.shape[2:])


def frame():
    return np.zeros((8, 8), np.int32), np.zeros((8, 8), np.int32)


def test_a_keyboard_interrupt_in_the_engine_fails_every_pending_future():
    calls = []

    def fn(label):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
    rt = Runtime(Scripted(fn), max_batch_size=1)
    futs = [rt.submit(*frame()) for _ in range(6)]
    done = [f.exception(timeout=20) for f in futs]            # none left pending
    faults = [e for e in done if isinstance(e, EngineFault)]
    assert sum(e is None for e in done) == 1                  # the first batch ran
    assert len(faults) == 1 and "KeyboardInterrupt" in str(faults[0])      # the interrupted one
    assert sum(isinstance(e, RuntimeClosed) for e in done) == 4            # all the others
    with pytest.raises(RuntimeClosed, match="the runtime stopped"):
        rt.submit(*frame())
    t = threading.Thread(target=rt.close)
    t.start()
    t.join(20)
    assert not t.is_alive()


def test_metadata_and_options_with_absurd_values_are_refused():
    with pytest.raises(EngineError, match="max batch 0"):
        EngineInfo(ModelConfig(), max_batch=0)
    for bad in (dict(max_batch_size=0), dict(max_queue_delay_us=10**19),
                dict(max_queue_delay_us=-1), dict(max_queue_size=0), dict(decode_workers=0)):
        with pytest.raises(OptionError):
            Runtime(Scripted(lambda label: None), **bad)


def test_callbacks_may_close_the_runtime_or_submit_into_a_full_queue():
    rt = Runtime(Scripted(lambda label: time.sleep(0.01)), max_batch_size=1, max_queue_size=2)
    extra, closed = [], threading.Event()

    def resubmit(_f):
        if len(extra) < 3:
            f = rt.submit(*frame())                           # blocks while the queue is full
            extra.append(f)
            f.add_done_callback(resubmit)

    first = rt.submit(*frame())
    first.add_done_callback(resubmit)
    rt.submit(*frame()).add_done_callback(resubmit)
    deadline = time.monotonic() + 20
    while len(extra) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(extra) == 3 and all(f.result(timeout=20) is not None for f in extra)

    def close_from_callback(_f):
        rt.close()
        closed.set()
    rt.submit(*frame()).add_done_callback(close_from_callback)
    assert closed.wait(20), "close() from a done-callback deadlocked"
    assert rt.closed


# ---------------------------------------------------------------- 6. silent wrong results

def test_a_jpeg_named_png_is_refused(tmp_path, model):
    labels = folder(tmp_path / "d", n=2)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(buf, format="JPEG")
    (labels / "f1.png").write_bytes(buf.getvalue())
    code, errors, out = run(labels, "--engine", model, "--out", tmp_path / "o")
    assert code == 1 and len(errors) == 1
    assert errors[0] == f"error: {labels / 'f1.png'}: a JPEG file, not a PNG id map (label and " \
                        f"instance maps must be lossless PNGs)"


def test_int64_instance_ids_beyond_int32_are_refused_not_merged(model):
    p2p = Pix2PixHD(model, device="cpu")
    label = np.zeros((16, 16), np.int64)
    inst = np.zeros((16, 16), np.int64)
    inst[:8] = 2**32 + 5                                      # would wrap onto id 5
    inst[8:] = 5
    with pytest.raises(InputError, match="outside int32"):
        p2p(label, inst)


# ---------------------------------------------------------------- one-line errors

def test_frames_below_the_minimum_and_above_the_pixel_limit(tmp_path, model):
    labels = folder(tmp_path / "d", n=1, h=8, w=8)            # a multiple of 8, below 16
    code, errors, out = run(labels, "--engine", model, "--out", tmp_path / "o")
    assert code == 1 and errors == [f"error: {labels / 'f0.png'}: size 8x8 is below this "
                                    f"model's minimum 16x16"]
    big = folder(tmp_path / "e", n=1, h=64, w=64)
    code, errors, out = run(big, "--engine", model, "--out", tmp_path / "p", "--max-pixels", 1000)
    assert code == 1 and errors == [f"error: {big / 'f0.png'}: 64x64 is 4,096 pixels, above the "
                                    f"limit of 1,000 (--max-pixels)"]


@pytest.mark.parametrize("device", ["tpu", "mps", ""])
def test_a_device_this_project_cannot_use(tmp_path, model, device):
    labels = folder(tmp_path / "d", n=1)
    code, errors, out = run(labels, "--engine", model, "--out", tmp_path / "o", "--device", device)
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: --device: "), out


def test_unwritable_summary_and_a_folder_at_an_output_path(tmp_path, model):
    labels = folder(tmp_path / "d", n=2)
    (tmp_path / "blocker").write_text("a file, not a folder")
    code, errors, out = run(labels, "--engine", model, "--out", tmp_path / "o",
                            "--summary-json", tmp_path / "blocker" / "s.json")
    assert code == 2 and len(errors) == 1 and "blocker" in errors[0], out
    assert not (tmp_path / "o").exists()                     # refused before any work
    (tmp_path / "o" / "f0.png").mkdir(parents=True)          # a folder where an output goes
    code, errors, out = run(labels, "--engine", model, "--out", tmp_path / "o")
    assert code == 1 and errors == [f"error: {tmp_path / 'o' / 'f0.png'}: is a folder, not a "
                                    f"file"], out
    assert "1 written, 0 skipped (exist), 1 failed" in out


def test_an_empty_folder_dangling_links_upper_case_names_and_stale_temps(tmp_path, model):
    (tmp_path / "empty").mkdir()
    code, errors, out = run(tmp_path / "empty", "--engine", model, "--out", tmp_path / "o")
    assert code == 2 and errors == [f"error: {tmp_path / 'empty'}: no label maps (*.png) found"]

    labels = folder(tmp_path / "d", n=2)
    (labels / "f1.png").rename(labels / "F1.PNG")
    (tmp_path / "d" / "test_inst" / "f1.png").rename(tmp_path / "d" / "test_inst" / "F1.PNG")
    (labels / "gone.png").symlink_to(tmp_path / "nowhere.png")
    out_dir = tmp_path / "o2"
    out_dir.mkdir()
    stale = out_dir / ".f0.png.999999999-0123abcd.p2tmp"     # a killed writer's (no such pid)
    stale.write_bytes(b"half")
    code, errors, out = run(labels, "--engine", model, "--out", out_dir)
    assert code == 1 and errors == [f"error: {labels / 'gone.png'}: no such file"], out
    assert sorted(os.listdir(out_dir)) == ["F1.png", "f0.png"]
    assert not stale.exists()
