"""The embedding API (p2phd_infer.api.Pix2PixHD) and the `run` command on top of the Runtime."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from p2phd_infer.api import Pix2PixHD
from p2phd_infer.checkpoint import Checkpoint, save_checkpoint
from p2phd_infer.cli import main
from p2phd_infer.config import ModelConfig
from p2phd_infer.engines import Engine, TorchEngine
from p2phd_infer.synthesizer import to_uint8
from helpers import random_checkpoint

TINY = ModelConfig(label_nc=8, ngf=4, n_downsample_global=1, n_blocks_global=1, n_blocks_local=1)
FEAT = ModelConfig(label_nc=30, feat_num=3, ngf=4, n_downsample_global=1, n_blocks_global=1,
                   n_blocks_local=1)


def checkpoint(cfg: ModelConfig, seed: int = 0, features=None) -> Checkpoint:
    return random_checkpoint(cfg, seed, features, std=0.2)


class Recorder(Engine):
    """Wraps an engine and keeps what it was called with."""

    def __init__(self, inner: Engine):
        self.inner, self.info, self.device = inner, inner.info, inner.device
        self.calls = []

    def __call__(self, label, inst, feat=None):
        self.calls.append((label, inst, None if feat is None else feat.clone()))
        return self.inner(label, inst, feat)


def scene(rng, h=16, w=24, label_nc=8):
    label = rng.integers(0, label_nc, (h, w)).astype(np.int32)
    inst = (rng.integers(0, 4, (h, w)) * 1000 + 26000).astype(np.int32)
    return label, inst


# ---------------------------------------------------------------- API

def test_numpy_and_torch_in_numpy_and_torch_out_agree_with_the_engine():
    engine = Recorder(TorchEngine(checkpoint(TINY), "cpu"))
    p2p = Pix2PixHD(engine)
    label, inst = scene(np.random.default_rng(0))
    want = to_uint8(engine.inner(torch.from_numpy(label)[None, None],
                                 torch.from_numpy(inst)[None, None]))[0].numpy()
    rgb = p2p(label, inst)
    assert isinstance(rgb, np.ndarray) and rgb.shape == (16, 24, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, want)
    # uint8 / uint16 numpy ids are widened, not refused; the image is the same.
    assert np.array_equal(p2p(label.astype(np.uint8), inst.astype(np.uint16)), want)
    t = p2p(torch.from_numpy(label), torch.from_numpy(inst), output="torch")
    assert t.dtype == torch.uint8 and t.device == engine.device and np.array_equal(t.numpy(), want)
    f = p2p(label, inst, output="float")
    assert f.shape == (1, 3, 16, 24) and f.dtype == torch.float32
    # Batched input -> batched output; each frame is what it would be alone.
    both = p2p(np.stack([label, label[::-1]]), np.stack([inst, inst[::-1]]))
    assert both.shape == (2, 16, 24, 3)
    assert np.abs(both[0].astype(int) - want.astype(int)).max() <= 1
    # The same result through the batched runtime.
    with p2p.runtime(max_batch_size=2) as rt:
        assert np.array_equal(rt.submit(label, inst).result(timeout=60), want)


def test_int32_tensors_on_the_engine_device_go_in_without_a_copy():
    engine = Recorder(TorchEngine(checkpoint(TINY), "cpu"))
    p2p = Pix2PixHD(engine)
    label, inst = (torch.from_numpy(a) for a in scene(np.random.default_rng(1)))
    p2p(label, inst)
    got_label, got_inst, _ = engine.calls[-1]
    assert got_label.data_ptr() == label.data_ptr() and got_inst.data_ptr() == inst.data_ptr()
    assert got_label.shape == (1, 1, 16, 24)


def test_bad_frames_are_refused_with_the_reason():
    p2p = Pix2PixHD(TorchEngine(checkpoint(TINY), "cpu"))
    label, inst = scene(np.random.default_rng(2))
    with pytest.raises(ValueError, match="dtype float32; ids must be integers"):
        p2p(label.astype(np.float32), inst)
    with pytest.raises(ValueError, match="size 24x7 is below this model's minimum 8x8"):
        p2p(label[:7], inst[:7])
    assert p2p(label[:15], inst[:15]).shape == (15, 24, 3)     # any size above the minimum
    with pytest.raises(ValueError, match="label id 8 out of range"):
        p2p(np.full_like(label, 8), inst)
    with pytest.raises(ValueError, match="needs an instance map"):
        p2p(label)
    with pytest.raises(ValueError, match="differs from the label map"):
        p2p(label, inst[:8])


def features_engine(seed=0):
    g = torch.Generator().manual_seed(5)
    features = {26: torch.randn(10, 3, generator=g), 7: torch.randn(4, 3, generator=g)}
    return Recorder(TorchEngine(checkpoint(FEAT, seed, features), "cpu"))


def test_styles_stay_with_their_instance_across_frames():
    pytest.importorskip("p2phd_infer.styles")
    engine = features_engine()
    p2p = Pix2PixHD(engine, seed=3)
    assert p2p.style is not None

    def frame(offset):
        label = np.full((16, 24), 7, np.int32)          # road
        inst = np.full((16, 24), 7, np.int32)
        for k in range(6):                              # six cars, moved by `offset` columns
            x = 1 + 3 * k + offset
            label[4:12, x:x + 2] = 26
            inst[4:12, x:x + 2] = 26001 + k
        return label, inst

    looks = []
    for offset in (0, 2):
        label, inst = frame(offset)
        p2p(label, inst)
        feat = engine.calls[-1][2][0].numpy()           # [F,H,W]
        looks.append({k: feat[:, 6, 1 + 3 * k + offset] for k in range(6)})
        for k in range(6):                              # one style vector per instance
            x = 1 + 3 * k + offset
            block = feat[:, 4:12, x:x + 2].reshape(3, -1)
            assert np.allclose(block, block[:, :1])
    for k in range(6):
        assert np.array_equal(looks[0][k], looks[1][k])
    assert len({tuple(v) for v in looks[0].values()}) > 1   # cars do not all share one look
    # Another seed gives another choice for some car.
    other = Pix2PixHD(features_engine(), seed=4)
    label, inst = frame(0)
    other(label, inst)
    feat = other.engine.calls[-1][2][0].numpy()
    assert any(not np.array_equal(feat[:, 6, 1 + 3 * k], looks[0][k]) for k in range(6))


# ---------------------------------------------------------------- run command

def run_cli(args):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return res.exit_code, res.output


def write_frames(root, n, rng, size=(16, 24), label_nc=8):
    (root / "test_label").mkdir(parents=True)
    (root / "test_inst").mkdir(parents=True)
    for i in range(n):
        label, inst = scene(rng, *size, label_nc=label_nc)
        Image.fromarray(label.astype(np.uint8)).save(root / "test_label" / f"f{i}.png")
        Image.fromarray(inst.astype(np.uint16)).save(root / "test_inst" / f"f{i}.png")


def test_run_jpg_summary_json_and_skip_existing(tmp_path):
    save_checkpoint(checkpoint(TINY), tmp_path / "m.pt")
    write_frames(tmp_path / "d", 5, np.random.default_rng(3))
    (tmp_path / "d" / "test_label" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    args = ["run", tmp_path / "d" / "test_label", "--engine", tmp_path / "m.pt", "--out",
            tmp_path / "o", "--format", "jpg", "--quality", 90, "--batch-size", 2,
            "--max-delay-us", 500, "--workers", 2, "--summary-json", tmp_path / "s.json"]
    code, out = run_cli(args)
    assert code == 1, out
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "broken.png: not a readable PNG" in errors[0]
    assert "6 frames: 5 written, 0 skipped (exist), 1 failed" in out and "frames/s" in out
    s = json.loads((tmp_path / "s.json").read_text())
    assert (s["frames"], s["written"], s["skipped"], s["failed"]) == (6, 5, 0, 1)
    assert s["failures"][0]["file"].endswith("broken.png")
    assert s["failures"][0]["fault"].startswith("not a readable PNG")
    assert s["frames_per_second"] > 0 and s["settings"]["batch_size"] == 2
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [f"f{i}.jpg" for i in range(5)]
    with Image.open(tmp_path / "o" / "f0.jpg") as im:
        assert im.format == "JPEG" and im.size == (24, 16)
    (tmp_path / "d" / "test_label" / "broken.png").unlink()
    code, out = run_cli(args)
    assert code == 0 and "5 frames: 0 written, 5 skipped (exist), 0 failed" in out, out


def test_run_png_matches_the_api(tmp_path):
    ckpt = checkpoint(TINY, seed=1)
    save_checkpoint(ckpt, tmp_path / "m.pt")
    write_frames(tmp_path / "d", 3, np.random.default_rng(4))
    code, out = run_cli(["run", tmp_path / "d" / "test_label", "--engine", tmp_path / "m.pt",
                         "--out", tmp_path / "o", "--batch-size", 3])
    assert code == 0, out
    p2p = Pix2PixHD(tmp_path / "m.pt", device="cpu")
    for i in range(3):
        label = np.array(Image.open(tmp_path / "d" / "test_label" / f"f{i}.png"))
        inst = np.array(Image.open(tmp_path / "d" / "test_inst" / f"f{i}.png"))
        got = np.asarray(Image.open(tmp_path / "o" / f"f{i}.png"))
        assert np.abs(got.astype(int) - p2p(label, inst).astype(int)).max() <= 1


def test_run_style_options(tmp_path):
    pytest.importorskip("p2phd_infer.styles")
    save_checkpoint(checkpoint(TINY), tmp_path / "plain.pt")
    write_frames(tmp_path / "d", 2, np.random.default_rng(5))
    code, out = run_cli(["run", tmp_path / "d" / "test_label", "--engine", tmp_path / "plain.pt",
                         "--out", tmp_path / "o", "--style", "car=1"])
    assert code == 2 and out.startswith("error:") and "Traceback" not in out, out
    g = torch.Generator().manual_seed(0)
    save_checkpoint(checkpoint(FEAT, features={26: torch.randn(3, 3, generator=g),
                                               7: torch.randn(2, 3, generator=g)}),
                    tmp_path / "feat.pt")
    write_frames(tmp_path / "f", 2, np.random.default_rng(6), label_nc=30)
    outs = {}
    for name, extra in [("a", ["--style", "car=1,road=0", "--seed", 3]),
                        ("b", ["--style", "car=2,road=1", "--seed", 3]),
                        ("c", ["--style", "car=1,road=0", "--seed", 9])]:
        code, out = run_cli(["run", tmp_path / "f" / "test_label", "--engine", tmp_path / "feat.pt",
                             "--out", tmp_path / name, *extra])
        assert code == 0, out
        outs[name] = np.asarray(Image.open(tmp_path / name / "f0.png"))
    assert not np.array_equal(outs["a"], outs["b"])        # the style reaches the network
    assert np.array_equal(outs["a"], outs["c"])            # fixed clusters: the seed is unused
    code, out = run_cli(["run", tmp_path / "f" / "test_label", "--engine", tmp_path / "feat.pt",
                         "--out", tmp_path / "x", "--style", "car=7"])
    assert code == 2 and "cluster 7 is out of range" in out, out
