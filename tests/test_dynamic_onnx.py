"""ONNX graphs with dynamic height and width (export --dynamic-size): one graph, any frame size
(multiples of the stride in its range; run pads the others), against the PyTorch engine; and the
TensorRT optimisation profile's min/opt/max sizes, through the fake tensorrt module of
tests/test_export_tensorrt.py."""
from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from p2phd_infer.checkpoint import Checkpoint, save_checkpoint
from p2phd_infer.cli import main
from p2phd_infer.config import ModelConfig
from p2phd_infer.engines import EngineError, TorchEngine, open_engine
from p2phd_infer.errors import OptionError
from p2phd_infer.export.graphs import example_inputs
from p2phd_infer.export.onnx_export import export_onnx
from p2phd_infer.networks import build_generator

from test_export_onnx import TOL          # the ONNX-vs-PyTorch tolerance (1e-4)
from test_export_tensorrt import fake_tensorrt

CFG = ModelConfig(label_nc=8, ngf=4, n_downsample_global=2, n_blocks_global=1,
                  n_blocks_local=1)          # stride 8, minimum 16


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("dyn")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ckpt = Checkpoint(CFG, build_generator(CFG).state_dict())
    save_checkpoint(ckpt, root / "model.pt")
    res = CliRunner().invoke(main, ["export", "--engine", str(root / "model.pt"), "--format",
                                    "onnx", "--out", str(root / "dyn.onnx"), "--height", "32",
                                    "--width", "48", "--dynamic-size", "--max-size", "512x512"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "any multiple of 8 from 16x16 to 512x512" in res.output
    return root


def test_dynamic_graph_metadata_and_inputs(exported):
    engine = open_engine(exported / "dyn.onnx", "cpu")
    assert engine.info.size is None
    assert engine.info.extra["dynamic_size"] == {"multiple": 8, "min": [16, 16],
                                                 "max": [512, 512], "traced": [32, 48]}
    model = onnx.load(str(exported / "dyn.onnx"))
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input]
    assert all(d[0] == "batch" and all(isinstance(x, str) for x in d[2:]) for d in dims), dims


@pytest.mark.parametrize("size", [(32, 48), (24, 80), (40, 16)])
def test_one_graph_any_size_matches_pytorch(exported, size):
    H, W = size
    onnx_engine = open_engine(exported / "dyn.onnx", "cpu")
    torch_engine = TorchEngine(exported / "model.pt", "cpu", mode="plain")
    g = torch.Generator().manual_seed(H * W)
    label, inst = example_inputs(["label", "inst"], CFG, 2, H, W, generator=g)
    with torch.inference_mode():
        want = torch_engine(label, inst)
    got = onnx_engine(label, inst)
    assert got.shape == (2, 3, H, W) and (got - want).abs().max() <= TOL


def test_run_at_two_frame_sizes_matches_pytorch(exported, tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    sizes = {"a": (32, 48), "b": (20, 36)}          # b: padded to 24x40 by Engine.synthesize
    for name, (h, w) in sizes.items():
        label = rng.integers(0, 8, (h // 4 + 1, w // 4 + 1)).repeat(4, 0).repeat(4, 1)[:h, :w]
        Image.fromarray(label.astype(np.uint8)).save(tmp_path / "in" / f"{name}.png")
        inst = label * 1000 + rng.integers(0, 2, label.shape)
        (tmp_path / "inst").mkdir(exist_ok=True)
        Image.fromarray(inst.astype(np.uint16)).save(tmp_path / "inst" / f"{name}.png")
    out = {}
    for key, engine, extra in (("onnx", exported / "dyn.onnx", []),
                               ("pt", exported / "model.pt", ["--backend", "torch"])):
        res = CliRunner().invoke(main, ["run", str(tmp_path / "in"), "--instances",
                                        str(tmp_path / "inst"), "--engine", str(engine),
                                        "--out", str(tmp_path / key), "--device", "cpu",
                                        "--no-progress", *extra])
        assert res.exit_code == 0, res.output
        out[key] = {n: np.asarray(Image.open(tmp_path / key / f"{n}.png")).astype(int)
                    for n in sizes}
    for name, (h, w) in sizes.items():
        assert out["onnx"][name].shape == (h, w, 3)
        assert np.abs(out["onnx"][name] - out["pt"][name]).max() <= 1, name


def test_frames_outside_the_graph_are_refused(exported):
    engine = open_engine(exported / "dyn.onnx", "cpu")
    label = torch.zeros(1, 1, 20, 32, dtype=torch.int32)
    with pytest.raises(EngineError, match="multiples of 8"):
        engine(label, label)
    big = torch.zeros(1, 1, 520, 32, dtype=torch.int32)
    with pytest.raises(EngineError, match=r"outside the sizes .* 16x16..512x512"):
        engine(big, big)


def test_size_options_are_checked(exported, tmp_path):
    base = ["export", "--engine", str(exported / "model.pt"), "--format", "onnx", "--out",
            str(tmp_path / "x.onnx"), "--height", "32", "--width", "32"]
    for extra, match in ((["--max-size", "64x64"], "add --dynamic-size"),
                         (["--dynamic-size", "--max-size", "60x64"], "multiples of 8"),
                         (["--dynamic-size", "--min-size", "64x64", "--max-size", "32x32"],
                          "above --max-size"),
                         (["--dynamic-size", "--opt-size", "32x32"], "TensorRT's profile only"),
                         (["--dynamic-size", "--max-size", "64"], "WIDTHxHEIGHT")):
        res = CliRunner().invoke(main, base + extra)
        assert res.exit_code == 2 and match in res.output, (extra, res.output)
    assert not list(tmp_path.iterdir())


def test_tensorrt_profile_from_min_opt_max(exported, tmp_path, monkeypatch):
    from p2phd_infer.engines.base import info_from_json
    from p2phd_infer.engines.base import METADATA_KEY
    from p2phd_infer.export.tensorrt_build import build_plan, profile_sizes
    monkeypatch.setattr("p2phd_infer.engines.tensorrt._LOGGER", None)
    path = exported / "dyn.onnx"
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    info = info_from_json(props[METADATA_KEY], path)
    # Defaults: min the graph's, opt the traced size, max = opt (TensorRT sizes memory for max).
    assert profile_sizes(info) == ((16, 16), (32, 48), (32, 48))
    sizes = profile_sizes(info, (16, 24), (64, 128), (128, 256))
    assert sizes == ((16, 24), (64, 128), (128, 256))
    trt = fake_tensorrt("10.9.0")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    lines = []
    build_plan(trt, path, "fp32", sizes, 3, tmp_path / "cache", None, lines.append)
    assert set(trt.calls["shapes"]) == {"label", "inst"}
    for name, (lo, opt, hi) in trt.calls["shapes"].items():
        assert lo == (1, 1, 16, 24) and opt == (3, 1, 64, 128) and hi == (3, 1, 128, 256), name
    assert any("24x16..256x128 (opt 128x64)" in line for line in lines), lines
    for args, option in ((((20, 24), None, None), "--min-size"),
                         ((None, (64, 64), (32, 32)), "--opt-size"),
                         ((None, None, (1024, 1024)), "--max-size")):
        with pytest.raises(OptionError, match=option):
            profile_sizes(info, *args)
    fixed = info_from_json(props[METADATA_KEY], path)
    fixed.size = (32, 48)
    assert profile_sizes(fixed) == ((32, 48),) * 3
    with pytest.raises(OptionError, match="add|--dynamic-size"):
        profile_sizes(fixed, max_size=(64, 64))


def test_dynamic_style_graph_has_a_table_for_every_size(tmp_path):
    """The style graph's instance table grows with the frame past 65536 pixels (max(65536, H*W)
    in the graph, for TensorRT's ScatterElements rule); ids up to 65535 at both sizes."""
    from p2phd_infer.export.graphs import build_graph
    from p2phd_infer.networks import build_encoder
    cfg = ModelConfig(label_nc=8, ngf=4, n_downsample_global=2, n_blocks_global=1,
                      n_blocks_local=1, feat_num=3, nef=4, n_downsample_E=2)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        ckpt = Checkpoint(cfg, build_generator(cfg).state_dict(), build_encoder(cfg).state_dict())
    path = export_onnx(ckpt, tmp_path / "style.onnx", 32, 64, max_batch=2, graph="style",
                       dynamic_size=True, max_size=(512, 512))
    assert ("", "Max") in {(n.domain, n.op_type) for n in onnx.load(str(path)).graph.node}
    engine = open_engine(path, "cpu")
    module = build_graph(ckpt, "style")
    for H, W in ((32, 64), (256, 320)):                # 2048 and 81920 pixels
        g = torch.Generator().manual_seed(H)
        x = example_inputs(engine.input_names, cfg, 1, H, W, generator=g)
        x[3][..., :4, :4] = 65535
        with torch.no_grad():
            want = module(*x)
        assert (engine.style(*x) - want).abs().max() <= TOL, (H, W)
