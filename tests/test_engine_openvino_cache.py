"""The OpenVINO cache: an IR entry per (weights, size, precision) reused and rebuilt when its
content fails its hash (same-size NaN corruption included), and the compiled-model blobs beside
it reused, checked and recompiled."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("xxhash")

from p2phd_infer.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from p2phd_infer.engines import openvino as ovengine  # noqa: E402
from p2phd_infer.engines import openvino_cache, openvino_convert  # noqa: E402
from p2phd_infer.engines.openvino import OpenvinoEngine  # noqa: E402

from test_engine_openvino import H, TOL, W, cache, checkpoint, inputs, reference  # noqa: E402,F401


_models: dict = {}
made = []


def cached(path, rebuild=False):
    """The cached IR of model.pt at H x W. A (re)build saves the model converted once per
    weights (conversion takes seconds; what is tested here is the cache around it)."""
    def make():
        made.append(path)
        key = path.read_bytes()
        if key not in _models:
            _models[key] = openvino_convert.convert_checkpoint(load_checkpoint(path), H, W)
        return _models[key]
    return openvino_cache.cached_ir(path, H, W, rebuild=rebuild, make=make)


def nan_fill(path, start=0, length=None):
    """Overwrite `length` bytes from `start` (default: to the end) with float32 NaNs, keeping
    the file's size."""
    size = path.stat().st_size
    length = size - start if length is None else length
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(np.full(length // 4, np.nan, np.float32).tobytes())
    assert path.stat().st_size == size


def nan_weights(xml):
    """The IR's largest f32 constant (a convolution's weights) overwritten with NaN in the .bin,
    same size: what a bad disk or a careless tool leaves."""
    import xml.etree.ElementTree as ET
    consts = []
    for layer in ET.parse(xml).getroot().iter("layer"):
        data = layer.find("data")
        if layer.get("type") == "Const" and data is not None and \
                data.get("element_type") == "f32":
            consts.append((int(data.get("size")), int(data.get("offset"))))
    size, offset = max(consts)
    nan_fill(xml.with_suffix(".bin"), offset, size)


def test_cache_is_reused_and_rebuilt_by_content(tmp_path, cache):
    path = tmp_path / "model.pt"
    old = checkpoint(seed=7)
    save_checkpoint(old, path)
    first = cached(path)
    assert len(made) == 1
    stamp = first.stat().st_mtime_ns
    assert cached(path) == first                           # second open: not made again
    assert len(made) == 1 and first.stat().st_mtime_ns == stamp
    entry = json.loads((first.parent / "entry.json").read_text())
    assert entry["size"] == [H, W] and entry["precision"] == "fp32"
    assert set(entry["files"]) == {"model.xml", "model.bin"}
    x = inputs(old, 1, seed=16)
    want = reference(old, x)
    # Same size, a convolution's weights overwritten with NaN: without the hash it would be
    # used. The check below shows the corruption is real: the NaNs reach a ReLU, which the CPU
    # plugin computes as max(x, 0) = 0, so the image is flat (black, for trained weights), not
    # NaN, and nothing downstream could tell.
    nan_weights(first)
    assert float((OpenvinoEngine(first)(x["label"], x["inst"]) - want).abs().max()) > 0.1
    assert cached(path) == first and len(made) == 2        # found by its hash, rebuilt
    assert float((OpenvinoEngine(first)(x["label"], x["inst"]) - want).abs().max()) <= TOL
    # Truncated weights, and a same-size garbled .xml: rebuilt as well.
    bin_ = first.with_suffix(".bin")
    bin_.write_bytes(bin_.read_bytes()[:100])
    assert cached(path) == first and len(made) == 3
    first.write_bytes(b"x" * first.stat().st_size)
    assert cached(path) == first and len(made) == 4
    assert float((OpenvinoEngine(first)(x["label"], x["inst"]) - want).abs().max()) <= TOL
    # New weights at the same path: a new key, a new entry, the new weights' images.
    before = openvino_convert.conversions
    new = checkpoint(seed=8)
    save_checkpoint(new, path)
    engine = ovengine.open_openvino(path)
    x = inputs(new, 1, seed=15)
    assert float((engine(x["label"], x["inst"]) - reference(new, x)).abs().max()) <= TOL
    assert openvino_convert.conversions == before + 1
    assert engine.engine_for(H, W).path != first
    assert not [p for p in cache.iterdir() if p.name.endswith(".p2tmp")]


def test_compiled_blob_is_reused_checked_and_recompiled(tmp_path, cache):
    path = tmp_path / "model.pt"
    ckpt = checkpoint(seed=9)
    save_checkpoint(ckpt, path)
    x = inputs(ckpt, 1, seed=19)
    want = reference(ckpt, x)

    def open_once():
        engine = ovengine.open_openvino(path).engine_for(H, W)
        return engine, engine(x["label"], x["inst"])

    first, out = open_once()
    assert not first.info.extra["loaded_from_cache"]
    folder = first.path.parent / openvino_cache.COMPILED
    blobs = sorted(folder.iterdir())
    records = json.loads((first.path.parent / "compiled.json").read_text())
    assert blobs and sorted(records) == [b.name for b in blobs]
    # A second open imports the blob (OpenVINO's LOADED_FROM_CACHE), with the same numbers.
    second, again = open_once()
    assert second.info.extra["loaded_from_cache"] and torch.equal(again, out)
    assert sorted(folder.iterdir()) == blobs
    # A blob corrupted in place (same size) fails its hash: removed, compiled again, right.
    nan_fill(blobs[0], blobs[0].stat().st_size // 2 // 4 * 4)
    third, fixed = open_once()
    assert not third.info.extra["loaded_from_cache"]
    assert float((fixed - want).abs().max()) <= TOL
    # A blob no record names (a compile killed midway) is removed before OpenVINO sees it.
    stray = folder / "123.blob"
    stray.write_bytes(b"\0" * 64)
    fourth, _ = open_once()
    assert fourth.info.extra["loaded_from_cache"] and not stray.exists()
    # A rebuilt IR entry starts without blobs: the compiled cache goes with its IR.
    cached(path, rebuild=True)
    assert not (first.path.parent / openvino_cache.COMPILED).exists() or \
        not any((first.path.parent / openvino_cache.COMPILED).iterdir())


def test_second_open_imports_the_blob_without_reading_the_graph(tmp_path, cache, monkeypatch):
    path = tmp_path / "model.pt"
    # The weights of the blob test above: same key, its entry and blob are reused.
    ckpt = checkpoint(seed=9)
    save_checkpoint(ckpt, path)
    x = inputs(ckpt, 1, seed=21)
    want = reference(ckpt, x)
    first = ovengine.open_openvino(path).engine_for(H, W)
    out = first(x["label"], x["inst"])
    checked = first.path.parent / openvino_cache.CHECKED
    assert checked.is_file() and float((out - want).abs().max()) <= TOL
    real = ovengine.core()

    class NoGraphReads:
        def read_model(self, *a, **k):
            raise AssertionError("the graph was read")

        def __getattr__(self, name):
            return getattr(real, name)

    monkeypatch.setattr(ovengine, "core", NoGraphReads)
    second = ovengine.open_openvino(path).engine_for(H, W)
    assert second.info.extra["loaded_from_cache"] and second.info.size == first.info.size
    assert torch.equal(second(x["label"], x["inst"]), out)
    # A garbled record is not trusted: the graph is read and checked again, and recorded anew.
    monkeypatch.setattr(ovengine, "core", lambda: real)
    checked.write_text("{not json")
    third = ovengine.open_openvino(path).engine_for(H, W)
    assert torch.equal(third(x["label"], x["inst"]), out)
    assert openvino_cache.checked_graph(first.path) is not None

def test_second_open_reads_no_weights_until_the_file_changes(tmp_path, cache, monkeypatch):
    import p2phd_infer.checkpoint as checkpoint_module
    from p2phd_infer.engines import open_engine
    from p2phd_infer.errors import EngineError
    path = tmp_path / "model.pt"
    # The weights of the tests above (seeds 9 and 8): their entries exist, nothing converts.
    old, new = checkpoint(seed=9), checkpoint(seed=8)
    save_checkpoint(old, path)
    x = inputs(old, 1, seed=23)
    want = open_engine(path, "cpu")(x["label"], x["inst"])       # loads it, records it
    assert float((want - reference(old, x)).abs().max()) <= TOL
    real_load = checkpoint_module.load_checkpoint

    def no_load(p):
        raise AssertionError(f"{p} was loaded")

    monkeypatch.setattr(checkpoint_module, "load_checkpoint", no_load)
    engine = open_engine(path, "cpu")
    assert engine.info.extra["chosen_because"] == "the CPU default"
    assert engine.config == old.config and engine.encoder is None
    assert torch.equal(engine(x["label"], x["inst"]), want)
    # New weights at the same path (a new identity): the record no longer counts.
    save_checkpoint(new, path)
    with pytest.raises(AssertionError, match="was loaded"):
        open_engine(path, "cpu")
    with pytest.raises(EngineError, match="changed since this engine opened it"):
        engine.checkpoint                            # the lazy load refuses the other file
    monkeypatch.setattr(checkpoint_module, "load_checkpoint", real_load)
    x = inputs(new, 1, seed=24)
    out = open_engine(path, "cpu")(x["label"], x["inst"])
    assert float((out - reference(new, x)).abs().max()) <= TOL

def test_an_imported_blob_leaves_the_ir_unread_and_a_compile_checks_it(tmp_path, cache):
    path = tmp_path / "model.pt"
    ckpt = checkpoint(seed=9)                    # the blob test's weights: its entry and blob
    save_checkpoint(ckpt, path)
    x = inputs(ckpt, 1, seed=25)
    want = reference(ckpt, x)
    first = ovengine.open_openvino(path).engine_for(H, W)
    out = first(x["label"], x["inst"])
    before = openvino_convert.conversions
    # NaN weights in the IR while its checked blob is intact: the blob is imported, the IR not
    # read, the image right, nothing converted.
    nan_weights(first.path)
    second = ovengine.open_openvino(path).engine_for(H, W)
    assert second.info.extra["loaded_from_cache"] and torch.equal(second(x["label"],
                                                                         x["inst"]), out)
    assert openvino_convert.conversions == before
    # With the blob gone too, OpenVINO would compile the IR: its hash fails first, the entry
    # is converted again and the image is right.
    for blob in (first.path.parent / openvino_cache.COMPILED).iterdir():
        blob.unlink()
    third = ovengine.open_openvino(path).engine_for(H, W)
    assert openvino_convert.conversions == before + 1
    assert float((third(x["label"], x["inst"]) - want).abs().max()) <= TOL
    assert openvino_cache.ir_intact(third.path)

def test_cache_keeps_the_most_recently_used_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(openvino_cache, "MAX_ENTRIES", 3)
    for i in range(5):
        (tmp_path / f"e{i}").mkdir()
        (tmp_path / f"e{i}" / "entry.json").write_text("{}")
        os.utime(tmp_path / f"e{i}" / "entry.json", (1000 + i, 1000 + i))
    openvino_cache._evict(tmp_path, keep=tmp_path / "e0")      # e0: the one just built
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e0", "e3", "e4"]


def test_run_reports_time_to_first_frame_apart_from_steady_rate(tmp_path, cache):
    from test_engine_openvino import run_cli, write_frames
    path = tmp_path / "model.pt"
    # The weights of the test above: the key is their content, so no conversion here.
    save_checkpoint(checkpoint(seed=9), path)
    write_frames(tmp_path / "d", 3, np.random.default_rng(1))
    for i in range(2):           # the second run imports the compiled blob
        code, out = run_cli(["run", tmp_path / "d" / "test_label", "--engine", path, "--out",
                             tmp_path / f"o{i}", "--device", "cpu", "--no-progress",
                             "--summary-json", tmp_path / f"s{i}.json"])
        assert code == 0, out
    summary = json.loads((tmp_path / "s1.json").read_text())
    assert 0 < summary["first_frame_seconds"] <= summary["seconds"] + 60
    assert summary["steady_frames_per_second"] > 0
    assert "first frame" in out and "after the engine began loading, then" in out
