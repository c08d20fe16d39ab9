"""TensorRT: the parts that run anywhere (missing package, sidecar metadata, which layers stay
fp32) and a GPU test that builds and runs real plans where tensorrt and CUDA are present."""
from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from p2phd_infer.checkpoint import Checkpoint, save_checkpoint
from p2phd_infer.cli import main
from p2phd_infer.config import ModelConfig
from p2phd_infer.engines import EngineError, EngineInfo, open_engine
from p2phd_infer.engines.base import info_to_json, sidecar_path
from p2phd_infer.errors import MissingDependency
from p2phd_infer.files import write_atomic
from p2phd_infer.networks import build_encoder, build_generator

TINY = dict(label_nc=8, ngf=4, n_downsample_global=2, n_blocks_global=1, n_blocks_local=1)


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Make `import tensorrt` fail even where it is installed."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def test_missing_package_is_a_clear_error(tmp_path, no_tensorrt):
    info = EngineInfo(ModelConfig(**TINY), size=(32, 64), max_batch=2, precision="fp16",
                      extra={"graph": "generator", "backend": "tensorrt"})
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\0" * 16)
    with pytest.raises(EngineError, match="model.plan.json is missing"):
        open_engine(plan)
    write_atomic(sidecar_path(plan), info_to_json(info))
    with pytest.raises(MissingDependency, match=r"pip install 'tensorrt>=10,<11'"):
        open_engine(plan)


def test_export_tensorrt_without_package_is_one_line(tmp_path, no_tensorrt):
    cfg = ModelConfig(**TINY)
    save_checkpoint(Checkpoint(cfg, build_generator(cfg).state_dict()), tmp_path / "model.pt")
    res = CliRunner().invoke(main, ["export", "--engine", str(tmp_path / "model.pt"), "--format",
                                    "tensorrt", "--out", str(tmp_path / "m.plan"), "--height",
                                    "32", "--width", "64"], catch_exceptions=False)
    assert res.exit_code == 2
    assert "pip install 'tensorrt>=10,<11'" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*m.plan*"))


# ---------------------------------------------------------------- fp32 pinning, on a fake network

class FakeTensor:
    def __init__(self, name, dtype):
        self.name, self.dtype = name, dtype


class FakeLayer:
    def __init__(self, name, type_, inputs, outputs):
        self.name, self.type = name, type_
        self._in, self._out = inputs, outputs
        self.precision, self.output_types = None, {}

    num_inputs = property(lambda self: len(self._in))
    num_outputs = property(lambda self: len(self._out))

    def get_input(self, i):
        return self._in[i]

    def get_output(self, i):
        return self._out[i]

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype


class FakeNormLayer(FakeLayer):
    compute_precision = None


FAKE_TRT = SimpleNamespace(
    float32="f32", float16="f16", bfloat16="bf16", int32="i32", int64="i64",
    LayerType=SimpleNamespace(NORMALIZATION="norm", GATHER="gather", CONVOLUTION="conv",
                              ACTIVATION="act", SLICE="slice", ELEMENTWISE="elementwise",
                              SHAPE="shape", SHUFFLE="shuffle", PLUGIN_V3="plugin",
                              CONCATENATION="concat"),
    INormalizationLayer=FakeNormLayer)


def fake_network(specs):
    """specs: (name, type, [input names], [(output name, dtype)]), in topological order."""
    tensors, layers = {"photo": FakeTensor("photo", "f32"), "ids": FakeTensor("ids", "i32")}, []
    for name, type_, ins, outs in specs:
        out = [FakeTensor(n, d) for n, d in outs]
        tensors.update({t.name: t for t in out})
        layers.append(FakeLayer(name, type_, [tensors[n] for n in ins], out))
    return SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i]), layers


def test_keep_fp32_pins_norms_and_the_instance_mean_chain():
    from p2phd_infer.export.tensorrt_build import keep_fp32
    L = FAKE_TRT.LayerType
    net, layers = fake_network([
        ("conv_E", L.CONVOLUTION, ["photo"], [("e", "f32")]),
        ("norm_E", L.NORMALIZATION, ["e"], [("en", "f32")]),
        ("relu_E", L.ACTIVATION, ["en"], [("er", "f32")]),
        ("cat_ones", L.CONCATENATION, ["er"], [("vals", "f32")]),
        ("instance_sum_scatter_add", L.PLUGIN_V3, ["vals", "ids"], [("table", "f32")]),
        ("table_shape", L.SHAPE, ["table"], [("tshape", "i64")]),
        ("sums", L.SLICE, ["table"], [("s", "f32")]),
        ("counts", L.SLICE, ["table"], [("c", "f32")]),
        ("div", L.ELEMENTWISE, ["s", "c"], [("means", "f32")]),
        ("node_gather", L.GATHER, ["means", "ids"], [("feat", "f32")]),
        ("reshape_by_shape", L.SHUFFLE, ["er", "tshape"], [("r", "f32")]),
        ("cat_G", L.CONCATENATION, ["feat", "photo"], [("x", "f32")]),
        ("conv_G", L.CONVOLUTION, ["x"], [("y", "f32")]),
        ("norm_G", L.NORMALIZATION, ["y"], [("yn", "f32")]),
    ])
    pinned = keep_fp32(FAKE_TRT, net)
    assert pinned == ["norm_E", "instance_sum_scatter_add", "sums", "counts", "div",
                      "node_gather", "norm_G"]
    by_name = {layer.name: layer for layer in layers}
    for name in pinned:
        assert by_name[name].precision == "f32" and by_name[name].output_types == {0: "f32"}
    assert by_name["norm_G"].compute_precision == "f32"
    for name in ("conv_E", "relu_E", "table_shape", "reshape_by_shape", "cat_G", "conv_G"):
        assert by_name[name].precision is None, name


# ---------------------------------------------------------------- real plans (GPU + tensorrt)

def have_tensorrt10() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    import tensorrt
    return str(tensorrt.__version__).startswith("10.")


HAVE_TRT = have_tensorrt10()
needs_trt_gpu = pytest.mark.skipif(
    not (HAVE_TRT and torch.cuda.is_available()),
    reason="needs the tensorrt package (TensorRT 10) and a CUDA GPU; neither is "
           "required for the rest of the suite")


@needs_trt_gpu
@pytest.mark.parametrize("graph", ["generator", "style"])
def test_tensorrt_fp16_plan_matches_pytorch(tmp_path, graph):
    from p2phd_infer.engines.tensorrt import TensorRTEngine
    from p2phd_infer.export.onnx_export import export_onnx
    from p2phd_infer.export.parity import check_engine
    from p2phd_infer.export.tensorrt_build import build_tensorrt
    cfg = ModelConfig(**TINY, feat_num=3, nef=4, n_downsample_E=2)
    torch.manual_seed(0)
    ckpt = Checkpoint(cfg, build_generator(cfg).state_dict(), build_encoder(cfg).state_dict())
    onnx_path = export_onnx(ckpt, tmp_path / "m.onnx", 64, 128, max_batch=3, graph=graph)
    plan = build_tensorrt(onnx_path, tmp_path / "m.plan", fp16=True,
                          timing_cache=tmp_path / "timing.cache", log=lambda *_: None)
    assert sidecar_path(plan).is_file() and (tmp_path / "timing.cache").is_file()
    engine = open_engine(plan)
    assert isinstance(engine, TensorRTEngine) and engine.info.precision == "fp16"
    for batch in (1, 3):
        result = check_engine(engine, ckpt, batch=batch, seed=batch)
        # fp16 convolutions against fp32: small errors, not identical bits. 30 dB is far below
        # what a working build gives and far above what a broken one (wrong input, fp16
        # instance sums overflowing) gives.
        assert result["psnr_db"] >= 30, result
    label = torch.zeros(4, 1, 64, 128, dtype=torch.int32, device="cuda")
    with pytest.raises(EngineError, match="outside this TensorRT engine's profile 1..3"):
        if graph == "style":
            engine.style(label, label, torch.zeros(4, 3, 64, 128, device="cuda"), label)
        else:
            engine(label, label)
