"""Frames of any size at or above the network's minimum: reflect-padded to the stride,
synthesized, cropped back, pixel-aligned with the input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from p2phd_infer.cli import main
from p2phd_infer.config import ModelConfig
from p2phd_infer.engines import TorchEngine, open_engine
from p2phd_infer.engines.base import reflect_pad
from p2phd_infer.errors import InputError
from p2phd_infer.runtime import Runtime
from p2phd_infer.synthesizer import to_uint8
from helpers import save_random_model

TINY = ModelConfig(label_nc=8, ngf=4, n_downsample_global=2, n_blocks_global=1,
                   n_blocks_local=1)                     # stride 8, minimum 16
VIDEO_SIZES = [(600, 1000), (1080, 1920)]                # (H, W): 1000x600 and 1920x1080


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_random_model(tmp_path_factory.mktemp("m") / "model.pt", TINY)


def maps(h, w, seed=0):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 8, (h // 4 + 1, w // 4 + 1)).repeat(4, 0).repeat(4, 1)[:h, :w]
    inst = np.where(label >= 5, label * 1000 + rng.integers(0, 3, label.shape), label)
    return label.astype(np.uint8), inst.astype(np.uint16)


@pytest.fixture(scope="module")
def video_frames(model):
    """maps(H, W, seed=H) at the acceptance sizes and the reference image of each, computed
    once: `run` (plain PyTorch, the Runtime) and the dynamic ONNX graph are each checked against
    it, and a 1920x1080 forward pass is the costly part of those tests."""
    engine = TorchEngine(model, "cpu")
    out = {}
    for H, W in VIDEO_SIZES:
        label, inst = maps(H, W, seed=H)
        out[H, W] = label, inst, reference(engine, label, inst)
    return out


def reference(engine, label, inst):
    """The definition: the network on the reflect-padded maps, cropped back."""
    H, W = label.shape
    Hp, Wp = TINY.padded_size(H, W)
    lab = torch.from_numpy(label.astype(np.int32))[None, None]
    ins = torch.from_numpy(inst.astype(np.int32))[None, None]
    with torch.inference_mode():
        out = engine(reflect_pad(lab, Hp, Wp), reflect_pad(ins, Hp, Wp))
    return to_uint8(out[..., :H, :W])[0].numpy()


def test_reflect_pad_matches_torch_reflect_on_floats():
    x = torch.randn(2, 3, 13, 21)
    want = torch.nn.functional.pad(x, (0, 3, 0, 3), mode="reflect")
    assert torch.equal(reflect_pad(x, 16, 24), want)
    ids = torch.arange(13 * 21, dtype=torch.int32).reshape(1, 1, 13, 21)
    assert torch.equal(reflect_pad(ids, 16, 24).float(), torch.nn.functional.pad(
        ids.float(), (0, 3, 0, 3), mode="reflect"))                # integer ids pad exactly


@pytest.mark.parametrize("size", VIDEO_SIZES)
def test_run_and_the_runtime_take_any_size(tmp_path, model, video_frames, size):
    H, W = size
    label, inst, want = video_frames[size]
    for d, a in (("test_label", label), ("test_inst", inst)):
        (tmp_path / d).mkdir()
        Image.fromarray(a).save(tmp_path / d / "f.png")
    r = CliRunner().invoke(main, ["run", str(tmp_path / "test_label"), "--engine", str(model),
                                  "--out", str(tmp_path / "o"), "--mode", "plain",
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    got = np.asarray(Image.open(tmp_path / "o" / "f.png"))
    engine = TorchEngine(model, "cpu")
    assert got.shape == (H, W, 3)
    assert np.abs(got.astype(int) - want).max() <= 1
    with Runtime(engine) as rt:
        rgb = rt.submit(label.astype(np.int32), inst.astype(np.int32)).result(timeout=120)
    assert rgb.shape == (H, W, 3) and np.abs(rgb.astype(int) - want).max() <= 1


def test_an_onnx_engine_built_for_the_padded_size(tmp_path, model):
    H, W = 36, 60                                         # pads to 40x64
    label, inst = maps(H, W, seed=3)
    r = CliRunner().invoke(main, ["export", "--engine", str(model), "--format", "onnx",
                                  "--out", str(tmp_path / "m.onnx"), "--height", "40",
                                  "--width", "64", "--no-check"])
    assert r.exit_code == 0, r.output
    onnx_engine = open_engine(tmp_path / "m.onnx", "cpu")
    with Runtime(onnx_engine) as rt:
        rgb = rt.submit(label.astype(np.int32), inst.astype(np.int32)).result(timeout=60)
        with pytest.raises(InputError, match=r"size 60x30 \(padded to 64x32\): this engine was "
                                             r"built for 64x40"):
            rt.submit(*(a[:30].astype(np.int32) for a in (label, inst))).result(timeout=60)
    want = reference(TorchEngine(model, "cpu"), label, inst)
    assert rgb.shape == (H, W, 3) and np.abs(rgb.astype(int) - want).max() <= 1


def test_a_frame_at_a_multiple_is_not_padded(model):
    engine = TorchEngine(model, "cpu")
    label, inst = maps(32, 48, seed=5)
    lab = torch.from_numpy(label.astype(np.int32))[None, None]
    ins = torch.from_numpy(inst.astype(np.int32))[None, None]
    calls = []
    real = engine.__call__

    class Spy(TorchEngine):
        pass
    engine.__class__ = Spy
    Spy.__call__ = lambda self, *a: calls.append(a[0].shape) or real(*a)
    with torch.inference_mode():
        assert torch.equal(engine.synthesize(lab, ins), real(lab, ins))
    assert calls == [(1, 1, 32, 48)]                         # exactly the input, no padding


def test_run_with_a_dynamic_onnx_engine_at_video_sizes(tmp_path, model, video_frames):
    """The acceptance sizes through `run --engine x.onnx`: one dynamic-size graph, 1000x600 and
    1920x1080 frames, each of its input's size and within ±1 level of the network on the padded
    maps (ONNX Runtime and PyTorch add in another order)."""
    r = CliRunner().invoke(main, ["export", "--engine", str(model), "--format", "onnx",
                                  "--out", str(tmp_path / "d.onnx"), "--height", "32",
                                  "--width", "48", "--dynamic-size", "--no-check"])
    assert r.exit_code == 0, r.output
    for H, W in VIDEO_SIZES:
        label, inst, want = video_frames[H, W]
        root = tmp_path / f"{W}x{H}"
        for d, a in (("test_label", label), ("test_inst", inst)):
            (root / d).mkdir(parents=True)
            Image.fromarray(a).save(root / d / "f.png")
        r = CliRunner().invoke(main, ["run", str(root / "test_label"), "--engine",
                                      str(tmp_path / "d.onnx"), "--out", str(root / "o"),
                                      "--no-progress"])
        assert r.exit_code == 0, r.output
        got = np.asarray(Image.open(root / "o" / "f.png"))
        assert got.shape == (H, W, 3)
        assert np.abs(got.astype(int) - want).max() <= 1
