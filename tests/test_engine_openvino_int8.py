"""--precision int8: NNCF post-training quantization of the OpenVINO graph, calibrated on label
maps; within its stated PSNR of fp32 on fresh inputs; what is kept in float is kept; refusals
(a CPU without VNNI/AMX, an empty or mismatched calibration folder) are one line each."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from p2phd_infer.checkpoint import save_checkpoint  # noqa: E402
from p2phd_infer.engines import open_engine, openvino_convert, openvino_cpu  # noqa: E402
from p2phd_infer.engines.openvino import open_openvino  # noqa: E402
from p2phd_infer.errors import InputError, OptionError  # noqa: E402
from p2phd_infer.synthesizer import psnr, to_uint8  # noqa: E402

from p2phd_infer.styles import StyleControl  # noqa: E402

from test_engine_openvino import H, W, cache, checkpoint  # noqa: E402,F401

# 8-bit PSNR of the int8 image against the f32 OpenVINO image of the same scene-like input
# (block label maps, instance features, as calibrated on; random tiny weights, ngf 4): measured
# 38-42 dB over two weight seeds; a quantization fault (an unquantized range, a wrong scale, the
# first layer's inputs clipped) gives < 20 dB. Per-pixel random labels, unlike any scene, lie
# outside the calibrated ranges: 23-24 dB there, which is why the inputs are scenes.
MIN_PSNR_INT8 = 32.0


def has_int8() -> bool:
    try:
        openvino_cpu.check_precision("int8")
        return True
    except OptionError:
        return False


needs_int8 = pytest.mark.skipif(not has_int8(), reason="this CPU has no VNNI/AMX int8 dot "
                                                       "products: int8 is refused here")


def scenes(n, label_nc, seed, h=H, w=W):
    """Block label maps like a scene's (8x8-pixel regions) and instance maps: int32
    [n,1,h,w] each."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, label_nc, (n, 1, h // 8, w // 8)).repeat(8, 2).repeat(8, 3)
    inst = label * 1000 + rng.integers(0, 2, label.shape)
    return torch.from_numpy(label.astype(np.int32)), torch.from_numpy(inst.astype(np.int32))


def write_maps(folder, n, label_nc, seed):
    """scenes() as PNGs: folder/labels/<i>.png and the sibling folder/instances/<i>.png."""
    (folder / "labels").mkdir(parents=True)
    (folder / "instances").mkdir()
    for i, (label, inst) in enumerate(zip(*scenes(n, label_nc, seed))):
        Image.fromarray(label[0].numpy().astype(np.uint8)).save(folder / "labels" / f"{i}.png")
        Image.fromarray(inst[0].numpy().astype(np.uint16)).save(folder / "instances" / f"{i}.png")
    return folder / "labels"


@pytest.fixture(scope="module")
def model(tmp_path_factory, cache):
    root = tmp_path_factory.mktemp("int8")
    ckpt = checkpoint(seed=21, features=True)
    save_checkpoint(ckpt, root / "m.pt")
    return root / "m.pt", ckpt, write_maps(root / "calib", 4, 8, seed=1)


@needs_int8
def test_int8_is_within_its_psnr_of_fp32_and_keeps_what_it_says(model):
    path, ckpt, calib = model
    engine = open_openvino(path, precision="int8", calibration=calib)
    f32 = open_openvino(path)
    label, inst = scenes(2, 8, seed=23)              # fresh scenes, not the calibration maps
    feat = StyleControl.for_engine(f32, seed=5).feature_map(label, inst)
    got = engine(label, inst, feat)
    want = f32(label, inst, feat)
    assert psnr(to_uint8(got).float(), to_uint8(want).float(), peak=255) >= MIN_PSNR_INT8
    assert not torch.equal(got, want)               # it is a different (quantized) graph
    inner = engine.engine_for(H, W)
    assert inner.info.precision == "int8" == engine.info.precision
    kept = inner.info.extra["int8_kept_in_float"]
    assert "every MVN" in kept and len(kept) == 4    # G1's and G2's first 7x7, the last, MVN
    # Nothing kept in float reads a FakeQuantize; the other convolutions do (through the
    # reflection padding in front of them).
    from p2phd_infer.engines.openvino_cpu import core

    def source(op):
        node = op.input(0).get_source_output().get_node()
        while node.get_type_name() == "Pad":
            node = node.input(0).get_source_output().get_node()
        return node.get_type_name()

    ops = core().read_model(str(inner.path)).get_ordered_ops()
    reads = {op.get_friendly_name(): (op.get_type_name(), source(op)) for op in ops
             if op.get_type_name() in ("Convolution", "ConvolutionBackpropData", "MVN")}
    assert all(reads[name][1] != "FakeQuantize" for name in kept[:-1])
    assert all(src != "FakeQuantize" for kind, src in reads.values() if kind == "MVN")
    quantized = [n for n, (kind, src) in reads.items() if src == "FakeQuantize"]
    assert len(quantized) == sum(kind != "MVN" for kind, _ in reads.values()) - 3
    # Cached per weights, size and calibration set: no second quantization; another set is
    # another entry.
    before = openvino_convert.conversions
    again = open_openvino(path, precision="int8", calibration=calib).engine_for(H, W)
    assert openvino_convert.conversions == before and again.path == inner.path


def test_int8_refusals(model, tmp_path, monkeypatch):
    path, ckpt, calib = model
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no label maps"):
        open_engine(path, "cpu", precision="int8", calibration=tmp_path / "empty")
    with pytest.raises(InputError, match="no such folder"):
        open_engine(path, "cpu", precision="int8", calibration=tmp_path / "none")
    other = write_maps(tmp_path / "other", 1, 35, seed=2)      # maps of a 35-class model
    if has_int8():
        with pytest.raises(InputError, match="label id .* 8 classes") as e:
            open_engine(path, "cpu", precision="int8", calibration=other).engine_for(H, W)
        assert "0.png" in str(e.value)
    with pytest.raises(OptionError, match="int8 runs on the OpenVINO"):
        open_engine(path, "cpu", precision="int8", mode="plain")
    with pytest.raises(OptionError, match="--calibration"):
        open_engine(path, "cpu", calibration=calib)
    # A CPU without int8 dot products is refused, not run slower than fp32.
    monkeypatch.setattr(openvino_cpu, "cpu_flags", lambda: {"avx2", "fma"})
    with pytest.raises(OptionError, match="VNNI or AMX"):
        open_engine(path, "cpu", precision="int8", calibration=calib)
