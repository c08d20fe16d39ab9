"""OpenVINO engine: f32 against the fp32 PyTorch network, bf16 where the CPU has it, the IR
export round trip, and `run` choosing OpenVINO on a CPU (the cache: test_engine_openvino_cache.py).
"""
from __future__ import annotations


import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("openvino")
pytest.importorskip("onnxscript")         # the .onnx round trip

from p2phd_infer.checkpoint import Checkpoint, save_checkpoint  # noqa: E402
from p2phd_infer.cli import main  # noqa: E402
from p2phd_infer.config import ModelConfig  # noqa: E402
from p2phd_infer.engines import open_engine  # noqa: E402
from p2phd_infer.engines import openvino as ovengine  # noqa: E402
from p2phd_infer.engines import choose_backend  # noqa: E402
from p2phd_infer.engines import openvino_convert  # noqa: E402
from p2phd_infer.engines.openvino import OpenvinoEngine, OpenvinoModelEngine  # noqa: E402
from p2phd_infer.engines.openvino_cpu import cpu_capabilities, import_openvino  # noqa: E402
from p2phd_infer.errors import MissingDependency, OptionError  # noqa: E402
from p2phd_infer.export import openvino_export  # noqa: E402
from p2phd_infer.export.graphs import build_graph, example_inputs  # noqa: E402
from p2phd_infer.local_run import open_run_engine  # noqa: E402
from p2phd_infer.networks import build_encoder, build_generator  # noqa: E402
from p2phd_infer.plan import RunOptions  # noqa: E402
from p2phd_infer.synthesizer import psnr, to_uint8  # noqa: E402

H, W = 32, 64
TINY = dict(label_nc=8, ngf=4, n_downsample_global=2, n_blocks_global=1, n_blocks_local=1)
# fp32 against fp32: the same arithmetic in another order (oneDNN's convolutions and OpenVINO's
# MVN for the instance norms). Measured: a few 1e-6 on outputs in [-1,1]; 1e-4 catches any wiring
# fault (a wrong layer, pad or input order is off by > 1e-2). On the 8-bit image the same
# differences move a pixel by at most one level where it sits on a rounding edge: >= 60 dB.
TOL = 1e-4
MIN_PSNR_U8 = 60.0
# bf16 keeps 8 mantissa bits: about 40 dB measured on the official shape (benchmarks/RESULTS.md);
# a wiring fault gives < 20 dB.
MIN_PSNR_BF16 = 35.0


def checkpoint(seed: int = 0, features: bool = False) -> Checkpoint:
    cfg = ModelConfig(**TINY, feat_num=3 if features else 0, nef=4, n_downsample_E=2)
    torch.manual_seed(seed)
    enc = build_encoder(cfg).state_dict() if features else None
    g = torch.Generator().manual_seed(seed)
    feats = {1: torch.rand(3, 3, generator=g), 5: torch.rand(2, 3, generator=g) - 0.5} \
        if features else None
    return Checkpoint(cfg, build_generator(cfg).state_dict(), enc, feats,
                      {i: f"class{i}" for i in range(8)})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Every OpenVINO conversion in this file goes to a private cache root."""
    root = tmp_path_factory.mktemp("xdg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root))
        yield root / "p2phd-infer" / "openvino"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, cache):
    path = tmp_path_factory.mktemp("model") / "model.pt"
    ckpt = checkpoint(seed=3)
    save_checkpoint(ckpt, path)
    return path, ckpt


def inputs(ckpt, batch, seed, h=H, w=W):
    names = build_graph(ckpt).input_names
    g = torch.Generator().manual_seed(seed)
    return dict(zip(names, example_inputs(names, ckpt.config, batch, h, w, generator=g)))


def reference(ckpt, x):
    net = build_graph(ckpt)
    with torch.no_grad():
        return net(*[x[n] for n in net.input_names])


def run_cli(args):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return res.exit_code, res.output


# ---------------------------------------------------------------- numbers


def test_f32_matches_pytorch_and_is_batch_invariant(tiny):
    path, ckpt = tiny
    engine = ovengine.open_openvino(path)
    assert isinstance(engine, OpenvinoModelEngine) and engine.info.backend == "openvino"
    x = inputs(ckpt, 3, seed=11)                       # fresh inputs, not the export's
    got = engine(x["label"], x["inst"])
    want = reference(ckpt, x)
    assert got.shape == want.shape == (3, 3, H, W)
    assert float((got - want).abs().max()) <= TOL
    assert psnr(to_uint8(got), to_uint8(want), peak=255) >= MIN_PSNR_U8
    # Each frame is its own request: a frame's image does not depend on its batch-mates.
    one = torch.cat([engine(x["label"][i:i + 1], x["inst"][i:i + 1]) for i in range(3)])
    assert torch.equal(one, got)
    # A second frame size gets its own graph, made on first use.
    y = inputs(ckpt, 1, seed=12, h=2 * H, w=W)
    assert float((engine(y["label"], y["inst"]) - reference(ckpt, y)).abs().max()) <= TOL
    assert engine.info.extra["sizes"] == [f"{W}x{H}", f"{W}x{2 * H}"]


def test_features_model_takes_feat(tmp_path, cache):
    ckpt = checkpoint(seed=5, features=True)
    save_checkpoint(ckpt, tmp_path / "f.pt")
    engine = ovengine.open_openvino(tmp_path / "f.pt")
    assert engine.encoder is not None                  # for --style-image
    x = inputs(ckpt, 2, seed=13)
    got = engine(x["label"], x["inst"], x["feat"])
    assert float((got - reference(ckpt, x)).abs().max()) <= TOL
    # No feat: zeros, as the PyTorch Synthesizer does.
    zero = dict(x, feat=torch.zeros_like(x["feat"]))
    assert float((engine(x["label"], x["inst"]) - reference(ckpt, zero)).abs().max()) <= TOL


def test_bf16(tiny):
    path, ckpt = tiny
    if "BF16" not in cpu_capabilities():
        # Checked both ways: where the CPU has no native BF16 the engine refuses it.
        with pytest.raises(OptionError, match="no native BF16"):
            ovengine.open_openvino(path, precision="bf16")
        pytest.skip("this CPU has no native BF16 (OpenVINO's CPU plugin reports "
                    f"{sorted(cpu_capabilities())}): bf16 numbers not checked here")
    engine = ovengine.open_openvino(path, precision="bf16")
    x = inputs(ckpt, 2, seed=14)
    assert psnr(engine(x["label"], x["inst"]), reference(ckpt, x)) >= MIN_PSNR_BF16


def test_fp16_and_cuda_are_refused(tiny):
    path, _ = tiny
    with pytest.raises(OptionError, match="fp16"):
        ovengine.open_openvino(path, precision="fp16")
    with pytest.raises(Exception, match="--device"):
        ovengine.open_openvino(path, "cuda")


def test_missing_openvino_names_the_install(tiny, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingDependency, match="pip install openvino"):
        import_openvino()
    backend, why = choose_backend("cpu")
    assert backend == "torch" and "openvino" in why.lower()
    engine = open_engine(tiny[0], "cpu")
    assert engine.info.backend == "torch" and "pip install openvino" in \
        engine.info.extra["chosen_because"]


# ---------------------------------------------------------------- IR export round trip


def test_export_openvino_round_trip(tmp_path, cache):
    ckpt = checkpoint(seed=4, features=True)
    save_checkpoint(ckpt, tmp_path / "m.pt")
    code, out = run_cli(["export", "--engine", tmp_path / "m.pt", "--format", "openvino",
                         "--out", tmp_path / "m.xml", "--height", H, "--width", W])
    assert code == 0, out
    assert "parity" in out and (tmp_path / "m.bin").is_file()
    assert not [p for p in tmp_path.iterdir() if ".p2tmp" in p.name]
    engine = open_engine(tmp_path / "m.xml")
    assert isinstance(engine, OpenvinoEngine)
    info = engine.info
    assert info.backend == "openvino" and info.size == (H, W) and info.graph == "generator"
    assert info.label_names == ckpt.label_names
    assert all(torch.equal(info.features[k], ckpt.features[k]) for k in ckpt.features)
    x = inputs(ckpt, 2, seed=17)
    got = engine(x["label"], x["inst"], x["feat"])
    assert float((got - reference(ckpt, x)).abs().max()) <= TOL
    with pytest.raises(Exception, match="built for 64x32"):
        engine(*example_inputs(["label", "inst"], ckpt.config, 1, 2 * H, W))
    # Our .onnx runs on OpenVINO too when asked.
    code, out = run_cli(["export", "--engine", tmp_path / "m.pt", "--format", "onnx",
                         "--out", tmp_path / "m.onnx", "--height", H, "--width", W,
                         "--no-check"])
    assert code == 0, out
    onnx_engine = open_engine(tmp_path / "m.onnx", backend="openvino")
    assert isinstance(onnx_engine, OpenvinoEngine)
    assert torch.equal(onnx_engine(x["label"], x["inst"], x["feat"]), got)
    with pytest.raises(OptionError, match="fp32 weights"):
        from p2phd_infer.cli.export import export_cmd
        export_cmd.main(["--engine", str(tmp_path / "m.pt"), "--format", "openvino", "--out",
                         str(tmp_path / "n.xml"), "--fp16"], standalone_mode=False)


# ---------------------------------------------------------------- run


def write_frames(folder, n, rng, h=H, w=W):
    (folder / "test_label").mkdir(parents=True)
    (folder / "test_inst").mkdir(parents=True)
    for i in range(n):
        label = rng.integers(0, 8, (h // 4, w // 4)).repeat(4, 0).repeat(4, 1)
        inst = label * 1000 + rng.integers(0, 3, label.shape)
        Image.fromarray(label.astype(np.uint8)).save(folder / "test_label" / f"f{i}.png")
        Image.fromarray(inst.astype(np.uint16)).save(folder / "test_inst" / f"f{i}.png")


def images(folder, n):
    return [np.asarray(Image.open(folder / f"f{i}.png")).astype(np.int16) for i in range(n)]


def test_run_on_a_cpu_picks_openvino_and_matches_plain(tmp_path, tiny):
    path, _ = tiny
    ovengine.open_openvino(path).engine_for(H, W)     # in the cache already, or now
    before = openvino_convert.conversions
    write_frames(tmp_path / "d", 4, np.random.default_rng(0))
    labels = tmp_path / "d" / "test_label"
    outs, lines = {}, {}
    for name, extra in (("ov", []), ("ov3", ["--batch-size", 3]), ("plain", ["--mode", "plain"])):
        code, out = run_cli(["run", labels, "--engine", path, "--out", tmp_path / name,
                             "--device", "cpu", "--no-progress", *extra])
        assert code == 0, out
        outs[name], lines[name] = images(tmp_path / name, 4), out.strip().splitlines()[-1]
    assert openvino_convert.conversions == before       # three runs, no new conversion
    assert "engine: OpenVINO" in lines["ov"] and "[the CPU default]" in lines["ov"]
    assert "engine: PyTorch cpu fp32 plain [--mode plain]" in lines["plain"]
    for ov, ov3, plain in zip(outs["ov"], outs["ov3"], outs["plain"]):
        assert np.array_equal(ov, ov3)                     # batch-invariant
        assert np.abs(ov - plain).max() <= 1               # within one level of PyTorch
    assert not np.array_equal(outs["ov"][0], outs["ov"][1])


def test_run_engine_choice(tiny):
    path = str(tiny[0])
    assert choose_backend("cpu")[0] == "openvino"
    assert open_run_engine(RunOptions(engine=path, device="cpu")).info.backend == "openvino"
    # The bundled model, by every command's opener.
    assert open_engine(None, "cpu").info.backend == "openvino"
    for kw in (dict(mode="plain"), dict(compile=True), dict(precision="fp16"),
               dict(backend="torch"), dict(label_nc=0)):
        assert choose_backend("cpu", **kw)[0] == "torch", kw
    engine = open_run_engine(RunOptions(engine=path, device="cpu", mode="plain"))
    assert engine.info.backend == "torch"
    assert engine.info.extra["engine"] == "engine: PyTorch cpu fp32 plain [--mode plain]"
    with pytest.raises(OptionError, match="--backend"):
        RunOptions(backend="tensorrt")
    with pytest.raises(OptionError, match="--backend"):
        open_run_engine(RunOptions(engine=path, device="cpu", backend="openvino", compile=True))


def test_style_graph_runs_on_openvino(tmp_path, cache):
    from p2phd_infer.export.parity import check_engine
    ckpt = checkpoint(seed=6, features=True)
    engine = OpenvinoEngine(openvino_export.export_openvino(ckpt, tmp_path / "s.xml", H, W,
                                                           graph="style"))
    assert engine.info.graph == "style"
    result = check_engine(engine, ckpt, batch=2, seed=18)
    assert result["max_abs"] <= TOL
    with pytest.raises(Exception, match="style-from-photo"):
        engine(*example_inputs(["label", "inst"], ckpt.config, 1, H, W))
