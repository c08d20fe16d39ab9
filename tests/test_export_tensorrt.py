"""TensorRT: the parts that run anywhere and a GPU test that builds and runs real plans.

Anywhere: the fp16-typed ONNX graph TensorRT builds from (its types, op list and numerics under
onnxruntime's CPU provider), the strongly typed build driven through a fake `tensorrt` module
(majors 10 and 11) whose parser reads the real exported graph, `import_tensorrt`'s version rule,
the missing-package errors. With tensorrt 10/11 and CUDA: real plans against fp32 PyTorch."""
from __future__ import annotations

import importlib.util
import sys
import types
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import onnx
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
H, W = 32, 64
F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


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
    hint = r"pip install 'tensorrt>=10' \(TensorRT 10 or 11\)"
    with pytest.raises(MissingDependency, match=hint):
        open_engine(plan)


def test_export_tensorrt_without_package_is_one_line(tmp_path, no_tensorrt):
    cfg = ModelConfig(**TINY)
    save_checkpoint(Checkpoint(cfg, build_generator(cfg).state_dict()), tmp_path / "model.pt")
    res = CliRunner().invoke(main, ["export", "--engine", str(tmp_path / "model.pt"), "--format",
                                    "tensorrt", "--out", str(tmp_path / "m.plan"), "--height",
                                    "32", "--width", "64"], catch_exceptions=False)
    assert res.exit_code == 2
    assert "pip install 'tensorrt>=10'" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*m.plan*"))


# ---------------------------------------------------------------- import_tensorrt's version rule

@pytest.mark.parametrize("version,ok", [("10.0.1", True), ("10.13.3.9", True), ("11.0.0", True),
                                        ("11.5.0.12", True), ("8.6.1", False), ("9.3.0", False),
                                        ("12.0.0", False), ("", False), ("rc", False)])
def test_import_tensorrt_takes_majors_10_and_11(monkeypatch, version, ok):
    from p2phd_infer.engines.tensorrt import import_tensorrt
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    if ok:
        assert import_tensorrt() is module
    else:
        with pytest.raises(MissingDependency, match=rf"builds and runs TensorRT 10 and 11 engines; "
                                                    rf"tensorrt {version} is installed"):
            import_tensorrt()


# ---------------------------------------------------------------- the fp16-typed ONNX graph

@pytest.fixture(scope="module")
def typed(tmp_path_factory):
    """The fp16 generator and style graphs and the fp32 generator graph, exported once."""
    from p2phd_infer.export.onnx_export import export_onnx
    root = tmp_path_factory.mktemp("typed")
    cfg = ModelConfig(**TINY, feat_num=3, nef=4, n_downsample_E=2)
    torch.manual_seed(0)
    ckpt = Checkpoint(cfg, build_generator(cfg).state_dict(), build_encoder(cfg).state_dict())
    paths = {(g, p): export_onnx(ckpt, root / f"{g}_{p}.onnx", H, W, max_batch=3, graph=g,
                                 precision=p)
             for g, p in (("generator", "fp16"), ("style", "fp16"), ("generator", "fp32"))}
    return ckpt, paths


def typed_graph(path: Path):
    """(model with inferred shapes, {tensor: elem type}, {tensor: producer node},
    {tensor: consumer nodes})."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    dtype = {v.name: v.type.tensor_type.elem_type
             for v in [*g.value_info, *g.input, *g.output]}
    dtype.update({t.name: t.data_type for t in g.initializer})
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return model, dtype, producer, consumers


def cast_to(node) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" \
        else None


@pytest.mark.parametrize("graph", ["generator", "style"])
def test_fp16_graph_types(typed, graph):
    _, paths = typed
    model, dtype, producer, consumers = typed_graph(paths[graph, "fp16"])
    nodes = model.graph.node
    ops = Counter(n.op_type for n in nodes)
    assert ops["Conv"] and ops["ConvTranspose"] and ops["InstanceNormalization"]
    # Every convolution computes in fp16: data, weights, bias and output.
    for n in nodes:
        if n.op_type in ("Conv", "ConvTranspose"):
            assert all(dtype[t] == F16 for t in n.input if t), n.name
            assert dtype[n.output[0]] == F16, n.name
    # Every InstanceNormalization reads and writes fp32, cast from fp16 before and back after.
    for n in nodes:
        if n.op_type == "InstanceNormalization":
            x, y = n.input[0], n.output[0]
            assert dtype[x] == F32 and dtype[y] == F32, n.name
            before = producer[x]
            assert cast_to(before) == F32 and dtype[before.input[0]] == F16, n.name
            assert consumers[y] and all(cast_to(c) == F16 for c in consumers[y]), n.name
    # Inputs and output: the fp32 graph's interface.
    io = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert io["image"] == F32
    assert all(t == (F32 if name in ("feat", "style_image", "image") else onnx.TensorProto.INT32)
               for name, t in io.items()), io
    if graph == "generator":
        assert not ops["ScatterElements"] and not ops["GatherElements"]
        return
    # The instance-mean chain: every float tensor downstream of a ScatterElements is fp32, up to
    # the Casts to fp16 that hand the means to the generator (and there are such Casts).
    scatters = [n for n in nodes if n.op_type == "ScatterElements"]
    gathers = [n for n in nodes if n.op_type == "GatherElements"]
    assert len(scatters) == 2 and len(gathers) == 2      # E's half-size mean, then the full-size
    for n in scatters:
        assert dtype[n.input[0]] == F32 and dtype[n.input[2]] == F32 and dtype[n.output[0]] == F32
    for n in gathers:
        assert dtype[n.input[0]] == F32 and dtype[n.output[0]] == F32
    seen, todo, ends = set(), [t for n in scatters for t in n.output], 0
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        assert dtype[t] not in (F16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE), t
        for c in consumers.get(t, []):
            if cast_to(c) == F16:
                ends += 1
                continue
            assert c.op_type not in ("Conv", "ConvTranspose"), c.name
            todo.extend(c.output)
    assert ends >= 1 and {n.output[0] for n in gathers} <= seen


def test_fp16_graph_ops_are_ones_tensorrt_parses(typed):
    """The op-list check of tests/test_export_onnx.py, on the fp16 graphs: TensorRT 10's
    documented list (11.x's parser adds operators and reads opsets 9..25)."""
    from test_export_onnx import TENSORRT10_OPS, TENSORRT10_OPSETS
    from p2phd_infer.export.onnx_export import OPSET, onnx_ops
    _, paths = typed
    for key, path in paths.items():
        model = onnx.load(str(path))
        ops = onnx_ops(model)
        assert {d for d, _ in ops} == {""} and not model.functions, key
        assert not {op for _, op in ops} - TENSORRT10_OPS, key
        assert ("", "Cast") in ops, key
        versions = {o.domain or "": o.version for o in model.opset_import}
        assert versions[""] == OPSET and OPSET in TENSORRT10_OPSETS and OPSET in range(9, 26)


@pytest.mark.parametrize("graph", ["generator", "style"])
def test_fp16_graph_numerics_on_onnxruntime_cpu(typed, graph):
    """The fp16 graph under onnxruntime's CPU provider against fp32 PyTorch and against the same
    fp16-typed module in PyTorch. Measured here: 2e-3 max abs (73 dB) against fp32 on the tiny
    model; 1e-2 / 55 dB leave room for other CPUs' kernels and catch any wrong weight or input.
    (The fp32 islands are held by test_fp16_graph_types: onnxruntime's CPU provider has no fp16
    scatter-add, so a graph without them fails to run there rather than giving a number.)"""
    from p2phd_infer.engines.onnx import OnnxEngine
    from p2phd_infer.export.graphs import build_graph, example_inputs
    from p2phd_infer.export.parity import run_engine
    from p2phd_infer.synthesizer import psnr
    ckpt, paths = typed
    try:
        engine = OnnxEngine(paths[graph, "fp16"], "cpu")
    except EngineError as e:
        pytest.skip(f"this onnxruntime's CPU provider cannot load the fp16 graph: {e}")
    assert engine.info.precision == "fp16"
    reference = build_graph(ckpt, graph)
    typed16 = build_graph(ckpt, graph, typed_fp16=True)
    names = reference.input_names
    for batch in (1, 3):
        g = torch.Generator().manual_seed(batch)
        x = dict(zip(names, example_inputs(names, ckpt.config, batch, H, W, generator=g)))
        with torch.no_grad():
            want = reference(*[x[n] for n in names])
            half = typed16(*[x[n] for n in names])
        got = run_engine(engine, x)
        assert got.dtype == torch.float32 and half.dtype == torch.float32
        assert got.shape == want.shape == (batch, 3, H, W)
        err = float((got - want).abs().max())
        assert 1e-5 < err <= 1e-2, err              # fp16 for real, and close
        assert psnr(got, want) >= 55
        assert float((got - half).abs().max()) <= 1e-2


def test_precision_is_checked(typed):
    from p2phd_infer.errors import OptionError
    from p2phd_infer.export.onnx_export import export_onnx_model
    ckpt, _ = typed
    with pytest.raises(OptionError, match="'bf16': ONNX graphs are fp32 or fp16"):
        export_onnx_model(ckpt, H, W, graph="generator", precision="bf16")


# ---------------------------------------------------------------- the build, with a fake tensorrt

class FakeTensor:
    def __init__(self, name, dtype, shape=()):
        self.name, self.dtype, self.shape = name, dtype, shape


class FakeLayer:
    def __init__(self, name, type_, inputs, outputs):
        self.name, self.type, self._in, self._out = name, type_, inputs, outputs

    num_inputs = property(lambda self: len(self._in))
    num_outputs = property(lambda self: len(self._out))

    def get_input(self, i):
        return self._in[i]

    def get_output(self, i):
        return self._out[i]


class FakeNetwork:
    def __init__(self, flags):
        self.flags, self.layers, self.inputs, self.outputs = flags, [], [], []

    num_layers = property(lambda self: len(self.layers))
    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))

    def get_layer(self, i):
        return self.layers[i]

    def get_input(self, i):
        return self.inputs[i]

    def get_output(self, i):
        return self.outputs[i]


ONNX_TO_FAKE = {F32: "f32", F16: "f16", onnx.TensorProto.INT32: "i32",
                onnx.TensorProto.INT64: "i64", onnx.TensorProto.BOOL: "bool"}
LAYER_OF = {"Conv": "conv", "ConvTranspose": "deconv", "InstanceNormalization": "norm",
            "ScatterElements": "plugin"}


def fake_tensorrt(version: str, strongly_typed_flag: bool = True, tamper=None):
    """A `tensorrt` module: enough of the 10.x/11.x Python API for build_plan, recording what it
    is asked. Its parser reads the real ONNX file and types every tensor as the file does, which
    is what a strongly typed network does; `tamper(network)` then alters it."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = calls = {"set_flag": [], "parser_flags": [], "networks": [], "shapes": {}}
    trt.float32, trt.float16, trt.int32, trt.int64, trt.bool, trt.uint8 = \
        "f32", "f16", "i32", "i64", "bool", "u8"
    trt.LayerType = SimpleNamespace(CONVOLUTION="conv", DECONVOLUTION="deconv",
                                    NORMALIZATION="norm", PLUGIN_V3="plugin", OTHER="other")
    flags = {"PREFER_AOT_PYTHON_PLUGINS": 1, "PREFER_JIT_PYTHON_PLUGINS": 2}
    if strongly_typed_flag:
        flags["STRONGLY_TYPED"] = 1 if version.startswith("10.") else 0
    trt.NetworkDefinitionCreationFlag = SimpleNamespace(**flags)
    builder_flags = {"TF32": 6}
    if version.startswith("10."):                 # the weakly typed flags 11.x removed
        builder_flags.update(FP16=0, OBEY_PRECISION_CONSTRAINTS=11)
    trt.BuilderFlag = SimpleNamespace(**builder_flags)
    trt.OnnxParserFlag = SimpleNamespace(NATIVE_INSTANCENORM=0)
    trt.MemoryPoolType = SimpleNamespace(WORKSPACE=0)

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            self.severity = severity

    trt.Logger = Logger
    trt.init_libnvinfer_plugins = lambda logger, namespace: None

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def set_flag(self, flag):
            calls["parser_flags"].append(flag)

        def parse_from_file(self, path):
            model = onnx.shape_inference.infer_shapes(onnx.load(path))
            g, net = model.graph, self.network
            tensors = {}

            def tensor(name, elem, dims=()):
                tensors[name] = FakeTensor(name, ONNX_TO_FAKE.get(elem, "other"), dims)
                return tensors[name]

            for t in g.initializer:
                tensor(t.name, t.data_type)
            for v in g.input:
                dims = tuple(d.dim_value or -1 for d in v.type.tensor_type.shape.dim)
                net.inputs.append(tensor(v.name, v.type.tensor_type.elem_type, dims))
            types_ = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.output]}
            for n in g.node:
                ins = [tensors[i] for i in n.input if i]
                outs = [tensor(o, types_[o]) for o in n.output]
                net.layers.append(FakeLayer(n.name, LAYER_OF.get(n.op_type, "other"), ins, outs))
            net.outputs = [tensors[v.name] for v in g.output]
            if tamper:
                tamper(net)
            return True

    trt.OnnxParser = Parser

    class Cache:
        def serialize(self):
            return b"timing"

    class Config:
        def set_flag(self, flag):
            calls["set_flag"].append(flag)

        def set_memory_pool_limit(self, pool, size):
            calls["workspace"] = size

        def add_optimization_profile(self, profile):
            calls["profile"] = profile

        def create_timing_cache(self, data):
            calls["cache_in"] = data
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            pass

        def get_timing_cache(self):
            return Cache()

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls["shapes"][name] = (lo, opt, hi)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            net = FakeNetwork(flags)
            calls["networks"].append(net)
            return net

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return memoryview(b"PLAN")

    trt.Builder = Builder
    return trt


@pytest.fixture
def fresh_logger(monkeypatch):
    monkeypatch.setattr("p2phd_infer.engines.tensorrt._LOGGER", None)


@pytest.mark.parametrize("version,flag", [("10.9.0.34", True), ("11.0.0", True), ("11.5.0", False)])
@pytest.mark.parametrize("graph", ["generator", "style"])
def test_strongly_typed_build(typed, tmp_path, monkeypatch, fresh_logger, version, flag, graph):
    from p2phd_infer.engines.tensorrt import import_tensorrt
    from p2phd_infer.export.tensorrt_build import build_plan
    _, paths = typed
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version, flag))
    trt = import_tensorrt()
    lines = []
    cache = tmp_path / "timing.cache"
    plan = build_plan(trt, paths[graph, "fp16"], "fp16", (H, W), 3, cache, 1.0, lines.append)
    assert plan == b"PLAN" and cache.read_bytes() == b"timing"
    (net,) = trt.calls["networks"]
    if flag:
        assert net.flags == 1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    else:
        assert net.flags == 0                    # 11.x: strongly typed is the only mode
    assert trt.calls["set_flag"] == []           # no FP16, no OBEY_PRECISION_CONSTRAINTS, nothing
    assert trt.calls["parser_flags"] == [trt.OnnxParserFlag.NATIVE_INSTANCENORM]
    assert trt.calls["workspace"] == 2**30
    ops = Counter(n.op_type for n in onnx.load(str(paths[graph, "fp16"])).graph.node)
    convs, norms, sums = ops["Conv"] + ops["ConvTranspose"], ops["InstanceNormalization"], \
        ops["ScatterElements"]
    assert f"strongly typed fp16 network: {convs} convolutions in fp16, {norms} normalizations " \
           f"and {sums} instance sums in fp32" in lines
    assert sums == (2 if graph == "style" else 0)
    for name, (lo, opt, hi) in trt.calls["shapes"].items():
        assert lo[0] == 1 and opt[0] == hi[0] == 3 and lo[2:] == hi[2:] == (H, W), name


def test_fp32_graph_builds_fp32(typed, tmp_path, monkeypatch, fresh_logger):
    from p2phd_infer.export.tensorrt_build import build_plan, check_types
    _, paths = typed
    trt = fake_tensorrt("11.0.0")
    lines = []
    build_plan(trt, paths["generator", "fp32"], "fp32", (H, W), 1, tmp_path / "c", None,
               lines.append)
    assert trt.calls["set_flag"] == [] and lines[0].startswith("strongly typed fp32 network")
    # The fp32 graph is not an fp16 one: its convolutions are refused under precision fp16.
    with pytest.raises(EngineError, match="computes f32, not fp16: export the graph with "
                                          "precision='fp16'"):
        check_types(trt, trt.calls["networks"][0], "fp16", "g.onnx")


def test_mis_typed_networks_are_refused(typed, tmp_path, monkeypatch, fresh_logger):
    from p2phd_infer.export.tensorrt_build import build_plan
    _, paths = typed

    def norm_in_fp16(net):
        next(layer for layer in net.layers if layer.type == "norm").get_output(0).dtype = "f16"

    def sum_in_fp16(net):
        next(layer for layer in net.layers if layer.name.startswith("instance_sum")
             ).get_output(0).dtype = "f16"

    def image_in_fp16(net):
        net.outputs[0].dtype = "f16"

    for graph, tamper, match in (("generator", norm_in_fp16, "normalization .* is not fp32"),
                                 ("style", sum_in_fp16, "instance sum 'instance_sum.* is not fp32"),
                                 ("generator", image_in_fp16, "output 'image' is f16, not fp32")):
        trt = fake_tensorrt("10.9.0", tamper=tamper)
        with pytest.raises(EngineError, match=match):
            build_plan(trt, paths[graph, "fp16"], "fp16", (H, W), 1, tmp_path / "c", None,
                       lambda *_: None)
        assert not (tmp_path / "c").exists()     # refused before the (slow) build


def test_tensorrt_10_without_strong_typing_is_refused(monkeypatch):
    from p2phd_infer.export.tensorrt_build import network_flags
    with pytest.raises(MissingDependency, match="no strongly typed networks"):
        network_flags(fake_tensorrt("10.0.0", strongly_typed_flag=False))


def test_build_tensorrt_checks_the_graph_before_the_gpu(typed, tmp_path, monkeypatch):
    from p2phd_infer.export.tensorrt_build import build_tensorrt
    _, paths = typed
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("11.0.0"))
    with pytest.raises(EngineError, match=r"an fp32 graph, and an fp16 plan was asked for.*"
                                          r"precision='fp16'"):
        build_tensorrt(paths["generator", "fp32"], tmp_path / "m.plan", fp16=True)
    with pytest.raises(EngineError, match=r"an fp16 graph, and an fp32 plan"):
        build_tensorrt(paths["generator", "fp16"], tmp_path / "m.plan", fp16=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MissingDependency, match="needs a CUDA GPU"):
        build_tensorrt(paths["style", "fp16"], tmp_path / "m.plan")
    assert not list(tmp_path.iterdir())


def test_export_tensorrt_accepts_tensorrt_11(tmp_path, monkeypatch):
    """With tensorrt 11 installed the CLI goes on to the device check (no GPU here: one line)."""
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("11.0.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = ModelConfig(**TINY)
    save_checkpoint(Checkpoint(cfg, build_generator(cfg).state_dict()), tmp_path / "model.pt")
    res = CliRunner().invoke(main, ["export", "--engine", str(tmp_path / "model.pt"), "--format",
                                    "tensorrt", "--out", str(tmp_path / "m.plan"), "--height",
                                    "32", "--width", "64", "--device", "cpu"],
                             catch_exceptions=False)
    assert res.exit_code == 2, res.output
    assert "needs a CUDA GPU" in res.output and "tensorrt 11" not in res.output
    assert len(res.output.strip().splitlines()) == 1


# ---------------------------------------------------------------- real plans (GPU + tensorrt)

def have_tensorrt() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    import tensorrt
    from p2phd_infer.engines.tensorrt import MAJORS, tensorrt_major
    return tensorrt_major(tensorrt) in MAJORS


needs_trt_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and have_tensorrt()),
    reason="needs the tensorrt package (TensorRT 10 or 11) and a CUDA GPU; neither is "
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
    onnx_path = export_onnx(ckpt, tmp_path / "m.onnx", 64, 128, max_batch=3, graph=graph,
                            precision="fp16")
    plan = build_tensorrt(onnx_path, tmp_path / "m.plan", fp16=True,
                          timing_cache=tmp_path / "timing.cache", log=lambda *_: None)
    assert sidecar_path(plan).is_file() and (tmp_path / "timing.cache").is_file()
    engine = open_engine(plan)
    assert isinstance(engine, TensorRTEngine) and engine.info.precision == "fp16"
    assert engine.info.extra["typing"] == "strong" and engine.dtypes["image"] == torch.float32
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
