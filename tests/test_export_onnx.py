"""ONNX export: both graphs against PyTorch, the TensorRT 10 op list, metadata, engine errors."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from p2phd_infer.checkpoint import Checkpoint, save_checkpoint
from p2phd_infer.cli import main
from p2phd_infer.config import ModelConfig
from p2phd_infer.engines.onnx import OnnxEngine
from p2phd_infer.engines import EngineError, open_engine
from p2phd_infer.export.graphs import (MAX_INSTANCE_ID, build_graph, example_inputs,
                                       instance_mean_export)
from p2phd_infer.engines.base import info_from_json, info_to_json
from p2phd_infer.instance_features import encode_photo
from p2phd_infer.instance_features import instance_table as id_table
from p2phd_infer.export.onnx_export import OPSET, export_onnx, onnx_ops
from p2phd_infer.kernels.instance_mean import instance_mean_reference
from p2phd_infer.networks import build_encoder, build_generator
from p2phd_infer.synthesizer import Synthesizer

H, W = 32, 64
# fp32 against fp32: the same arithmetic in another order (onnxruntime's conv and norm kernels);
# differences are a few 1e-6 on outputs in [-1,1], so 1e-4 catches any real fault.
TOL = 1e-4

# Operators TensorRT 10 documents as supported by its ONNX parser: onnx/onnx-tensorrt,
# docs/operators.md ("Supported ONNX Operators", the TensorRT 10.x support matrix, rows marked Y).
# Only the rows this project could plausibly emit are listed; anything else fails the test.
TENSORRT10_OPS = {
    "Abs", "Add", "And", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast",
    "CastLike", "Ceil", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose",
    "CumSum", "DepthToSpace", "Div", "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor",
    "Gather", "GatherElements", "GatherND", "Gemm", "GlobalAveragePool", "Greater",
    "GreaterOrEqual", "Identity", "If", "InstanceNormalization", "LayerNormalization",
    "LeakyRelu", "Less", "LessOrEqual", "Log", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mod",
    "Mul", "Neg", "Not", "OneHot", "Or", "Pad", "Pow", "Range", "Reciprocal", "ReduceMax",
    "ReduceMean", "ReduceMin", "ReduceSum", "Relu", "Reshape", "Resize", "Round",
    "ScatterElements", "ScatterND", "Shape", "Sigmoid", "Sign", "Slice", "Softmax",
    "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Tile", "Transpose",
    "Unsqueeze", "Where", "Xor",
}
TENSORRT10_OPSETS = range(9, 21)        # "TensorRT 10.0 supports ... opset 9 to opset 20"

TINY = dict(label_nc=8, ngf=4, n_downsample_global=2, n_blocks_global=1, n_blocks_local=1)


def photo_features_reference(encoder, cfg, style_image, style_inst, inst):
    """The definition the style graph's photo features are checked against: the project's
    encode_photo and instance_table (what `run --style-image` uses), then a plain loop over the
    photo's ids."""
    photo = encode_photo(encoder, cfg, style_image, style_inst)
    out = torch.zeros(inst.shape[0], photo.shape[1], *inst.shape[2:], dtype=torch.float32)
    for b in range(inst.shape[0]):
        ids, means, _ = id_table(photo[b], style_inst[b])
        for k, mean in zip(ids.tolist(), means):
            out[b][:, inst[b, 0] == k] = mean[:, None]
    return out


def features_checkpoint(seed: int = 0) -> Checkpoint:
    cfg = ModelConfig(**TINY, feat_num=3, nef=4, n_downsample_E=2)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    features = {1: torch.rand(3, 3, generator=g), 5: torch.rand(2, 3, generator=g) - 0.5}
    return Checkpoint(cfg, build_generator(cfg).state_dict(), build_encoder(cfg).state_dict(),
                      features, {i: f"class{i}" for i in range(8)})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    ckpt = features_checkpoint()
    paths = {g: export_onnx(ckpt, root / f"{g}.onnx", H, W, max_batch=4, graph=g)
             for g in ("generator", "style")}
    return ckpt, paths, root


def fresh(names, cfg, batch, seed):
    g = torch.Generator().manual_seed(seed)
    return dict(zip(names, example_inputs(names, cfg, batch, H, W, generator=g)))


@pytest.mark.parametrize("batch", [1, 3])
def test_generator_graph_matches_pytorch(exported, batch):
    ckpt, paths, _ = exported
    engine = OnnxEngine(paths["generator"], "cpu")
    assert engine.input_names == ["label", "inst", "feat"]
    reference = Synthesizer(ckpt.config, ckpt.build_generator()).eval()
    x = fresh(engine.input_names, ckpt.config, batch, seed=10 + batch)
    with torch.no_grad():
        want = reference(x["label"], x["inst"], x["feat"])
        want_nofeat = reference(x["label"], x["inst"])
    got = engine(x["label"], x["inst"], x["feat"])
    assert got.shape == (batch, 3, H, W) and got.dtype == torch.float32
    assert (got - want).abs().max() <= TOL
    # No features given: zeros, as the PyTorch Synthesizer does.
    assert (engine(x["label"], x["inst"]) - want_nofeat).abs().max() <= TOL


@pytest.mark.parametrize("batch", [1, 2])
def test_style_graph_matches_pytorch(exported, batch):
    ckpt, paths, _ = exported
    cfg = ckpt.config
    engine = OnnxEngine(paths["style"], "cpu")
    assert engine.input_names == ["label", "inst", "style_image", "style_inst"]
    x = fresh(engine.input_names, cfg, batch, seed=20 + batch)
    # Some target ids absent from the photo (they get zeros), some photo ids absent from the
    # target, and a thin instance that vanishes at E's half resolution.
    style_inst = x["style_inst"].clone()
    style_inst[style_inst == 7] = 65535
    style_inst[:, :, 1::2, 5] = 123
    encoder = ckpt.build_encoder().eval()
    with torch.no_grad():
        feat = photo_features_reference(encoder, cfg, x["style_image"], style_inst, x["inst"])
        want = Synthesizer(cfg, ckpt.build_generator()).eval()(x["label"], x["inst"], feat)
        module = build_graph(ckpt, "style")(x["label"], x["inst"], x["style_image"], style_inst)
    assert (feat == 0).all(dim=1).any() and (feat != 0).any()      # both cases exercised
    assert (module - want).abs().max() <= TOL
    got = engine.style(x["label"], x["inst"], x["style_image"], style_inst)
    assert (got - want).abs().max() <= TOL


def test_export_friendly_instance_mean_matches_reference():
    g = torch.Generator().manual_seed(5)
    feat = torch.randn(3, 4, 24, 40, generator=g)
    ids = torch.tensor([0, 1, 999, 26001, 26002, 33001, MAX_INSTANCE_ID], dtype=torch.int32)
    inst = ids[torch.randint(0, len(ids), (3, 1, 24, 40), generator=g)]
    inst[1] = 26001                                      # a sample that is one instance
    got = instance_mean_export(feat, inst)
    want = instance_mean_reference(feat, inst)
    assert (got - want).abs().max() <= 1e-5              # fp32 sums in another order


def test_every_op_is_one_tensorrt10_parses(exported):
    _, paths, _ = exported
    for graph, path in paths.items():
        model = onnx.load(str(path))
        ops = onnx_ops(model)
        assert {d for d, _ in ops} == {""}, f"{graph}: non-standard domains {ops}"
        assert not model.functions, f"{graph}: local functions"
        unsupported = {op for _, op in ops} - TENSORRT10_OPS
        assert not unsupported, f"{graph}: ops TensorRT 10 does not document: {unsupported}"
        versions = {o.domain or "": o.version for o in model.opset_import}
        assert versions[""] == OPSET and versions[""] in TENSORRT10_OPSETS
        # ScatterElements' reduction needs opset >= 16: the style graph's instance sums.
        if graph == "style":
            assert ("", "ScatterElements") in ops and ("", "GatherElements") in ops
        else:
            assert ("", "InstanceNormalization") in ops and ("", "ScatterElements") not in ops
        dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
                for i in model.graph.input]
        assert all(d[0] == "batch" and d[2:] == [H, W] for d in dims), dims


def test_metadata_round_trip(exported):
    ckpt, paths, _ = exported
    engine = open_engine(paths["generator"], "cpu")
    info = engine.info
    assert info.config == ckpt.config and info.label_names == ckpt.label_names
    assert info.size == (H, W) and info.max_batch == 4 and info.precision == "fp32"
    assert info.graph == "generator" and info.backend == "onnx"
    assert set(info.features) == set(ckpt.features)
    for k, v in ckpt.features.items():
        assert torch.equal(info.features[k], v.float())              # float32 exactly
    again = info_from_json(info_to_json(info), "x")
    for field in ("config", "label_names", "size", "max_batch", "precision", "extra"):
        assert getattr(again, field) == getattr(info, field), field
    assert all(torch.equal(again.features[k], v) for k, v in info.features.items())
    with pytest.raises(EngineError, match="not valid JSON"):
        info_from_json("{", "some.onnx")
    with pytest.raises(EngineError, match="no p2phd-infer engine metadata"):
        info_from_json('{"a": 1}', "some.onnx")


def test_onnx_engine_errors(exported, tmp_path):
    ckpt, paths, root = exported
    engine = OnnxEngine(paths["generator"], "cpu")
    x = fresh(engine.input_names, ckpt.config, 1, seed=1)
    with pytest.raises(EngineError, match="built for 64x32"):
        engine(x["label"][..., :16, :], x["inst"][..., :16, :])
    with pytest.raises(EngineError, match="max batch 4"):
        engine(x["label"].expand(5, -1, -1, -1), x["inst"].expand(5, -1, -1, -1))
    with pytest.raises(EngineError, match="example photo"):
        OnnxEngine(paths["style"], "cpu")(x["label"], x["inst"])
    style = OnnxEngine(paths["style"], "cpu")
    y = fresh(style.input_names, ckpt.config, 1, seed=2)
    with pytest.raises(EngineError, match="out of range 0..65535"):
        style.style(y["label"], y["inst"] + 70000, y["style_image"], y["style_inst"])
    # An ONNX file without our metadata, and a file that is not ONNX at all.
    model = onnx.load(str(paths["generator"]))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "bare.onnx"))
    with pytest.raises(EngineError, match="no p2phd-infer metadata"):
        open_engine(tmp_path / "bare.onnx", "cpu")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(EngineError, match="junk.onnx: not a loadable ONNX model"):
        open_engine(tmp_path / "junk.onnx", "cpu")


def test_run_with_features_onnx_matches_model_pt(exported, tmp_path):
    """`run` feeds the dictionary's feature map (--style) to the ONNX graph's feat input."""
    ckpt, paths, _ = exported
    save_checkpoint(ckpt, tmp_path / "model.pt")
    rng = np.random.default_rng(4)
    (tmp_path / "d" / "test_label").mkdir(parents=True)
    (tmp_path / "d" / "test_inst").mkdir(parents=True)
    for i in range(3):
        label = rng.integers(0, 8, (H // 4, W // 4)).repeat(4, 0).repeat(4, 1)
        inst = label * 1000 + rng.integers(0, 3, label.shape)
        Image.fromarray(label.astype(np.uint8)).save(tmp_path / "d" / "test_label" / f"f{i}.png")
        Image.fromarray(inst.astype(np.uint16)).save(tmp_path / "d" / "test_inst" / f"f{i}.png")
    images = {}
    for name, engine in (("pt", tmp_path / "model.pt"), ("onnx", paths["generator"])):
        res = CliRunner().invoke(main, ["run", str(tmp_path / "d" / "test_label"), "--engine",
                                        str(engine), "--out", str(tmp_path / name), "--device",
                                        "cpu", "--style", "*=1", "--batch-size", "2"],
                                 catch_exceptions=False)
        assert res.exit_code == 0, res.output
        images[name] = [np.asarray(Image.open(tmp_path / name / f"f{i}.png")).astype(int)
                        for i in range(3)]
    for a, b in zip(images["pt"], images["onnx"]):
        assert a.shape == (H, W, 3) and np.abs(a - b).max() <= 1
    assert not np.array_equal(images["pt"][0], images["pt"][1])


def test_export_style_graph_through_the_cli_with_its_check(tmp_path):
    """`export --graph style` with the default --check: the written file, then its parity line,
    exit 0 (the parity check once read an attribute the engine no longer had)."""
    save_checkpoint(features_checkpoint(), tmp_path / "model.pt")
    r = CliRunner().invoke(main, ["export", "--engine", str(tmp_path / "model.pt"), "--format",
                                  "onnx", "--graph", "style", "--out", str(tmp_path / "s.onnx"),
                                  "--height", str(H), "--width", str(W)])
    assert r.exit_code == 0, r.output
    assert "onnx style engine" in r.output and "parity against fp32 PyTorch" in r.output
    max_abs = float(r.output.split("max abs diff ")[1].split(",")[0])
    assert max_abs <= TOL
    assert OnnxEngine(tmp_path / "s.onnx", "cpu").info.graph == "style"
