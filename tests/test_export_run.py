"""`p2phd-infer export` to .onnx and .pt2, then `run` with each: the same PNGs as model.pt.

One AOTInductor compile (about a minute on 2 CPU cores) serves every test here."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from p2phd_infer.checkpoint import Checkpoint, save_checkpoint
from p2phd_infer.cli import main
from p2phd_infer.config import ModelConfig
from p2phd_infer.engines.aoti import AotiEngine
from p2phd_infer.engines import EngineError, open_engine
from p2phd_infer.export.graphs import example_inputs
from p2phd_infer.networks import build_generator
from p2phd_infer.synthesizer import Synthesizer

H, W = 32, 64
TOL = 1e-4      # fp32 against fp32, the same arithmetic in another order (a few 1e-6 seen)


def cli(*args):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    cfg = ModelConfig(label_nc=8, ngf=4, n_downsample_global=2, n_blocks_global=1,
                      n_blocks_local=1)
    torch.manual_seed(7)
    ckpt = Checkpoint(cfg, build_generator(cfg).state_dict(), label_names={0: "void", 3: "car"})
    save_checkpoint(ckpt, root / "model.pt")
    out = {"pt": root / "model.pt"}
    for fmt, name in (("onnx", "model.onnx"), ("aoti", "model.pt2")):
        code, text = cli("export", "--engine", root / "model.pt", "--format", fmt, "--out",
                         root / name, "--height", H, "--width", W, "--max-batch", 3,
                         "--device", "cpu")
        assert code == 0, text
        assert "parity against fp32 PyTorch" in text, text
        out[fmt] = root / name
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]   # no temporaries
    return ckpt, out, root


@pytest.mark.parametrize("batch", [1, 3])
def test_pt2_matches_pytorch(engines, batch):
    ckpt, paths, _ = engines
    engine = open_engine(paths["aoti"], "auto")
    assert isinstance(engine, AotiEngine) and engine.device.type == "cpu"
    reference = Synthesizer(ckpt.config, ckpt.build_generator()).eval()
    g = torch.Generator().manual_seed(100 + batch)
    label, inst = example_inputs(["label", "inst"], ckpt.config, batch, H, W, generator=g)
    with torch.no_grad():
        want = reference(label, inst)
    got = engine(label, inst)
    assert got.shape == (batch, 3, H, W)
    assert (got - want).abs().max() <= TOL


def test_pt2_metadata_and_limits(engines):
    ckpt, paths, _ = engines
    engine = open_engine(paths["aoti"], "cpu")
    info = engine.info
    assert info.config == ckpt.config and info.label_names == {0: "void", 3: "car"}
    assert info.size == (H, W) and info.max_batch == 3 and info.precision == "fp32"
    assert info.backend == "aoti" and info.extra["device"] == "cpu"
    label = torch.zeros(4, 1, H, W, dtype=torch.int32)
    with pytest.raises(EngineError, match="max batch 3"):
        engine(label, label)
    with pytest.raises(EngineError, match="built for 64x32"):
        engine(label[:1, :, :16], label[:1, :, :16])


def test_run_with_onnx_and_pt2_writes_the_same_pngs(engines, tmp_path):
    _, paths, _ = engines
    rng = np.random.default_rng(11)
    labels, insts = tmp_path / "d" / "test_label", tmp_path / "d" / "test_inst"
    labels.mkdir(parents=True)
    insts.mkdir(parents=True)
    for i in range(4):
        label = rng.integers(0, 8, (H // 4, W // 4)).repeat(4, 0).repeat(4, 1)
        inst = np.where(label < 3, label, label * 1000 + rng.integers(0, 3, label.shape))
        Image.fromarray(label.astype(np.uint8)).save(labels / f"f{i}.png")
        Image.fromarray(inst.astype(np.uint16)).save(insts / f"f{i}.png")
    images = {}
    for name, engine in paths.items():
        code, text = cli("run", labels, "--engine", engine, "--out", tmp_path / name,
                         "--device", "cpu", "--batch-size", 2)
        assert code == 0, text
        images[name] = [np.asarray(Image.open(tmp_path / name / f"f{i}.png")).astype(int)
                        for i in range(4)]
    for fmt in ("onnx", "aoti"):
        for a, b in zip(images["pt"], images[fmt]):
            assert a.shape == (H, W, 3)
            assert np.abs(a - b).max() <= 1, fmt
    assert not np.array_equal(images["pt"][0], images["pt"][1])


def test_export_errors_are_one_line(engines, tmp_path):
    _, paths, root = engines
    model = paths["pt"]
    cases = [
        (["--format", "onnx", "--out", tmp_path / "x.pt2"], "must end in .onnx"),
        (["--format", "onnx", "--out", tmp_path / "x.onnx", "--fp16"], "ONNX export is fp32"),
        (["--format", "onnx", "--out", tmp_path / "x.onnx", "--height", 30], "multiples of 8"),
        (["--format", "onnx", "--out", tmp_path / "x.onnx", "--graph", "style"],
         "needs a model with an encoder"),
        (["--format", "aoti", "--out", tmp_path / "x.pt2", "--fp16", "--device", "cpu"],
         "built for CUDA"),
        (["--format", "aoti", "--out", tmp_path / "x.pt2", "--device", "gpu0"],
         "is not a device (cpu, cuda, cuda:N or auto)"),
    ]
    for args, message in cases:
        code, text = cli("export", "--engine", model, "--height", 32, "--width", 64, *args)
        assert code == 2 and message in text, (args, text)
        assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text
    code, text = cli("export", "--engine", tmp_path / "missing.pt", "--format", "onnx",
                     "--out", tmp_path / "x.onnx")
    assert code == 2 and "missing.pt" in text
    assert not list(tmp_path.glob("x.*"))
