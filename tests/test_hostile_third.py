"""Hostile input, third round: each class of fault is closed by its rule, and each test holds the
example that got through before and at least one more case of the same class.

Cases that need a device node make it with mknod inside a temporary folder (never touching
/dev), and skip with the reason where that is not allowed (not root, no CAP_MKNOD).
"""
from __future__ import annotations

import json
import os
import re
import stat
import struct
import zlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from p2phd_infer.api import Pix2PixHD
from p2phd_infer.cli import main
from p2phd_infer.checkpoint import load_checkpoint, save_checkpoint
from p2phd_infer.config import ModelConfig
from p2phd_infer.engines import EngineInfo, TorchEngine
from p2phd_infer.engines.base import METADATA_KEY, info_from_json
from p2phd_infer.errors import (CheckpointError, EngineError, EngineFault, InputError,
                                OptionError, OutputError)
from p2phd_infer.image_io import read_id_png
from p2phd_infer.label_names import read_label_names
from p2phd_infer.labels import CITYSCAPES_NAMES
from p2phd_infer.networks import build_generator
from p2phd_infer.official import read_official_features
from p2phd_infer.palette import Palette
from p2phd_infer.runtime import Runtime
from p2phd_infer.styles import (StyleControl, instance_style, parse_entries, parse_style,
                                resolve_copies)
from helpers import char_device, random_checkpoint, save_random_model

TINY = ModelConfig(label_nc=8, use_instance=False, ngf=2, netG="global", n_downsample_global=2,
                   n_blocks_global=1)                   # no instance map needed; minimum 8x8

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_random_model(tmp_path_factory.mktemp("m") / "model.pt", TINY)


def maps(seed=0, h=16, w=16):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 8, (h // 4, w // 4)).repeat(4, 0).repeat(4, 1).astype(np.uint8)
    return label, (label.astype(np.uint16) * 1000)


def folder(root, n=2):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(maps(i)[0]).save(root / f"f{i}.png")
    return root


def run(*args):
    r = CliRunner().invoke(main, ["run", "--no-progress", "--backend", "torch", *[str(a) for a in args]],
                           catch_exceptions=False)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert "Traceback" not in r.output
    return r.exit_code, errors, r


# ------------------------------------------------- 1. outputs never replace non-regular files

def test_summary_json_on_a_device_or_fifo_is_refused_before_work(tmp_path, model):
    labels = folder(tmp_path / "l")
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    code, errors, _ = run(labels, "--engine", model, "--out", tmp_path / "o",
                          "--summary-json", fifo)
    assert code == 2 and errors == [f"error: {fifo}: is a FIFO (named pipe), not a regular file; "
                                    f"an output never replaces one (remove it or choose another "
                                    f"path)"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and not (tmp_path / "o").exists()
    dev = char_device(tmp_path / "null")
    code, errors, _ = run(labels, "--engine", model, "--out", tmp_path / "o",
                          "--summary-json", dev)
    assert code == 2 and len(errors) == 1 and "is a character device" in errors[0]
    assert stat.S_ISCHR(os.lstat(dev).st_mode)


def test_summary_json_dash_and_dev_stdout_are_streams(tmp_path, model):
    labels = folder(tmp_path / "l")
    for target in ("-", "/dev/stdout"):
        code, errors, r = run(labels, "--engine", model, "--out", tmp_path / target.strip("/-"),
                              "--summary-json", target)
        assert code == 0 and errors == [], r.output
        assert json.loads(r.stdout)["written"] == 2      # stdout holds the JSON alone
    assert not (tmp_path / "-").exists()


def test_runtime_output_onto_a_device_or_symlink_fails_alone(tmp_path, model):
    dev = char_device(tmp_path / "null")
    precious = tmp_path / "precious.png"
    precious.write_bytes(b"keep")
    link = tmp_path / "link.png"
    link.symlink_to(precious)
    label, inst = maps()
    with Runtime(TorchEngine(model, "cpu")) as rt:
        bad = [rt.submit(label, inst, out=dev), rt.submit(label, inst, out=link)]
        good = rt.submit(label, inst, out=tmp_path / "ok.png")
        for f, what in zip(bad, ("character device", "symbolic link")):
            with pytest.raises(OutputError, match=f"is a {what}, not a regular file"):
                f.result(60)
        assert str(good.result(60)) == str(tmp_path / "ok.png")
    assert stat.S_ISCHR(os.lstat(dev).st_mode)
    assert link.is_symlink() and precious.read_bytes() == b"keep"


# ------------------------------------------------- 2. discovery never hangs or multiplies

def test_a_fifo_in_the_labels_folder_fails_alone(tmp_path, model):
    labels = folder(tmp_path / "l")
    os.mkfifo(labels / "pipe.png")
    code, errors, r = run(labels, "--engine", model, "--out", tmp_path / "o")
    assert code == 1 and errors == [f"error: {labels / 'pipe.png'}: is a FIFO (named pipe), "
                                    f"not a regular file"]
    assert sorted(os.listdir(tmp_path / "o")) == ["f0.png", "f1.png"]


def test_links_to_dot_and_loops_give_each_frame_once(tmp_path, model):
    labels = folder(tmp_path / "l")
    for name in ("a", "b", "c"):
        (labels / name).symlink_to(".")
    (labels / "self").symlink_to("../l")
    code, errors, r = run(labels, "--engine", model, "--out", tmp_path / "o")
    assert code == 0 and errors == [] and "2 frames: 2 written" in r.stderr


def test_a_labels_folder_linked_to_root_is_bounded(tmp_path, model, monkeypatch):
    monkeypatch.setattr("p2phd_infer.locations.MAX_ENTRIES", 5000)
    (tmp_path / "l").symlink_to("/")
    code, errors, _ = run(tmp_path / "l", "--engine", model, "--out", tmp_path / "o")
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith("error: /: holds more than 5,000 files")   # the resolved folder


# ------------------------------------------------- 3. no silent black images

def _damaged(path, key_of, value):
    ckpt = random_checkpoint(TINY)
    key = key_of(ckpt.generator)
    ckpt.generator[key] = ckpt.generator[key].clone()
    ckpt.generator[key].view(-1)[:3] = value
    save_checkpoint(ckpt, path)
    return key


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load(tmp_path, value):
    model = tmp_path / "model.pt"
    key = _damaged(model, lambda g: sorted(g)[-1], value)
    labels = folder(tmp_path / "l", n=1)
    code, errors, _ = run(labels, "--engine", model, "--out", tmp_path / "o")
    assert code == 2 and errors == [f"error: {model}: generator.{key} holds 3 NaN or infinite "
                                    f"values (of {random_checkpoint(TINY).generator[key].numel()}"
                                    f"): the weights are damaged (a diverged training run?)"]
    assert not (tmp_path / "o").exists()


def test_non_finite_official_weights_are_refused_at_import(tmp_path):
    g = tmp_path / "latest_net_G.pth"
    state = build_generator(TINY).state_dict()
    state["model.1.weight"][0, 0, 0, 0] = float("-inf")
    torch.save(state, g)
    r = CliRunner().invoke(main, ["import-official", "--generator", str(g), "--label-nc", "8",
                                  "--no-instance", "--out", str(tmp_path / "m.pt")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.strip() == f"error: {g}: generator.model.1.weight holds 1 NaN or infinite " \
                               f"value (of {state['model.1.weight'].numel()}): the weights are " \
                               f"damaged (a diverged training run?)"
    assert not (tmp_path / "m.pt").exists()


def test_a_non_finite_output_fails_its_frame_naming_the_engine(tmp_path):
    # Finite weights that overflow float32 inside the network: conv -> inf, instance norm ->
    # NaN. Loaded fine; the output check catches it.
    model = tmp_path / "huge.pt"
    ckpt = random_checkpoint(TINY)
    ckpt.generator["model.1.weight"] = torch.full_like(ckpt.generator["model.1.weight"], 3e38)
    save_checkpoint(ckpt, model)
    label, _ = maps()
    with Runtime(TorchEngine(model, "cpu")) as rt:
        with pytest.raises(EngineFault, match=rf"{model}: the network's output holds NaN or "
                                              rf"infinite values \(its frame\)"):
            rt.submit(label).result(60)
    labels = folder(tmp_path / "l", n=1)
    code, errors, _ = run(labels, "--engine", model, "--out", tmp_path / "o")
    assert code == 1 and len(errors) == 1 and "NaN or infinite" in errors[0] and \
        str(model) in errors[0]
    assert not (tmp_path / "o" / "f0.png").exists()


def test_the_output_check_names_the_frames_of_a_batch(tmp_path, model):
    engine = TorchEngine(model, "cpu")
    image = torch.zeros(3, 3, 8, 8)
    assert engine.check_finite(image) is image
    image[1, 0, 2, 2] = float("nan")
    image[2, 1, 0, 0] = float("-inf")
    with pytest.raises(EngineError, match=r"\(frames 1, 2 of the batch\)"):
        engine.check_finite(image)


# ------------------------------------------------- 4. sub-8-bit greyscale maps keep their ids

def packed_png(values: np.ndarray, depth: int, colour_type: int = 0, plte: bytes = b"") -> bytes:
    """A PNG of `depth`-bit samples as stored (Pillow cannot write 2- or 4-bit greyscale)."""
    H, W = values.shape
    rows = b""
    for r in values:
        bits = "".join(format(int(v), f"0{depth}b") for v in r)
        bits += "0" * (-len(bits) % 8)
        rows += b"\0" + int(bits, 2).to_bytes(len(bits) // 8, "big")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, depth,
                                                               colour_type, 0, 0, 0))
            + (chunk(b"PLTE", plte) if plte else b"") + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_sub_8_bit_greyscale_maps_read_as_stored(depth):
    values = (np.arange(64).reshape(4, 16) * 7) % 2 ** depth     # every value the depth holds
    assert np.array_equal(read_id_png(packed_png(values, depth)), values)
    # A palette-indexed map of the same depth holds indices: read as they are, as before.
    plte = bytes(range(3 * 2 ** depth))
    assert np.array_equal(read_id_png(packed_png(values, depth, 3, plte)), values)


def test_a_4_bit_map_runs_as_its_8_bit_twin(tmp_path, model):
    label = maps(0)[0] % 3                                        # ids 0, 1, 2
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "f.png").write_bytes(packed_png(label, 4))  # was read as 0, 17, 34
    Image.fromarray(label).save(tmp_path / "b" / "f.png")
    for d in "ab":
        code, errors, _ = run(tmp_path / d, "--engine", model, "--out", tmp_path / f"o{d}")
        assert code == 0 and errors == []
    assert np.array_equal(np.asarray(Image.open(tmp_path / "oa" / "f.png")),
                          np.asarray(Image.open(tmp_path / "ob" / "f.png")))


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_editor_decode_reads_a_2_bit_map_as_stored(model):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from p2phd_infer.serve.app import create_app
    from p2phd_infer.serve.editor import TOKEN_HEADER
    values = np.tile(np.arange(4), (16, 4))                       # holds 3, never 255
    with TestClient(create_app(TorchEngine(model, "cpu"), editor=True)) as client:
        token = re.search(r'<meta name="p2phd-token" content="([^"]+)">',
                          client.get("/").text).group(1)          # the page's, as editor.js
        r = client.post("/editor/decode", files={"label": ("two.png", packed_png(values, 2))},
                        headers={TOKEN_HEADER: token})
    assert r.status_code == 200, r.text
    got = np.frombuffer(r.content, "<i4").reshape(2, 16, 16)
    assert np.array_equal(got[0], values)


# ------------------------------------------------- 8. bad files give one line, not a traceback

def _with_colors(path, colors):
    ckpt = random_checkpoint(TINY)
    ckpt.extra["label_colors"] = colors
    save_checkpoint(ckpt, path)
    return path


@pytest.mark.parametrize("colors,fault", [
    ({0: [1, 2]}, "label 0: colour [1, 2] is not three values R G B"),
    ({3: [0, 0, 256]}, "label 3: colour [0, 0, 256] must be three integers 0..255"),
    ({"road": [1, 2, 3]}, "label id 'road' is not an integer"),
])
def test_bad_label_colors_in_model_pt_are_refused_at_load(tmp_path, colors, fault):
    model = _with_colors(tmp_path / "model.pt", colors)
    labels = folder(tmp_path / "l", n=1)
    code, errors, _ = run(labels, "--engine", model, "--out", tmp_path / "o", "--save-comparison")
    assert code == 2 and errors == [f"error: {model}: label_colors: {fault}"]


def test_a_palette_with_a_short_colour_is_an_input_error():
    with pytest.raises(InputError, match=r"^engine\.onnx: label 0: colour \[1, 2\] is not three"):
        Palette({0: [1, 2]}, "engine.onnx")


def _deep(path, depth=100_000):
    path.write_text("[" * depth + "]" * depth)
    return path


def test_deeply_nested_palette_and_label_names_json(tmp_path, model):
    labels = folder(tmp_path / "l", n=1)
    deep = _deep(tmp_path / "deep.json")
    code, errors, _ = run(labels, "--engine", model, "--out", tmp_path / "o", "--palette", deep)
    assert code == 2 and len(errors) == 1 and errors[0].startswith(
        f"error: {deep}: JSON nested too deeply"), errors
    with pytest.raises(InputError, match="JSON nested too deeply"):
        read_label_names(_deep(tmp_path / "deep.txt", 5000), 8)   # JSON by its first character
    g = tmp_path / "latest_net_G.pth"
    torch.save(build_generator(TINY).state_dict(), g)
    r = CliRunner().invoke(main, ["import-official", "--generator", str(g), "--label-nc", "8",
                                  "--no-instance", "--label-names", str(deep),
                                  "--out", str(tmp_path / "m.pt")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.strip() == f"error: {deep}: JSON nested too deeply (a label table is one " \
                               f"level of {{\"id\": name}} entries)"


def test_deeply_nested_engine_metadata_is_an_engine_error():
    with pytest.raises(EngineError, match="engine.onnx: engine metadata is JSON nested too"):
        info_from_json("[" * 100_000 + "]" * 100_000, "engine.onnx")


# ------------------------------------------------- 10. messages say what is wrong

def test_a_palette_or_label_names_that_is_not_a_regular_file(tmp_path, model):
    labels = folder(tmp_path / "l", n=1)
    fifo = tmp_path / "palette.json"
    os.mkfifo(fifo)                                  # opening it to read would block
    code, errors, _ = run(labels, "--engine", model, "--out", tmp_path / "o", "--palette", fifo)
    assert code == 2 and errors == [f"error: {fifo}: is a FIFO (named pipe), not a regular file"]
    dev = char_device(tmp_path / "null")             # was: "is a folder"
    code, errors, _ = run(labels, "--engine", model, "--out", tmp_path / "o", "--palette", dev)
    assert code == 2 and errors == [f"error: {dev}: is a character device, not a regular file"]


def test_model_files_that_are_not_regular_files(tmp_path):
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)                                  # torch.load would wait on it for ever
    with pytest.raises(CheckpointError, match=r"model\.pt: is a FIFO \(named pipe\), not a "
                                              r"regular file$"):
        load_checkpoint(fifo)
    with pytest.raises(CheckpointError, match="features.npy: is a character device, not a "
                                              "regular file$"):
        read_official_features(char_device(tmp_path / "features.npy"))
    pytest.importorskip("onnxruntime")
    from p2phd_infer.engines.onnx import OnnxEngine
    os.mkfifo(tmp_path / "g.onnx")
    with pytest.raises(EngineError, match=r"g\.onnx: is a FIFO \(named pipe\), not a regular"):
        OnnxEngine(tmp_path / "g.onnx", "cpu")


def test_out_that_is_a_device_is_named_as_one(tmp_path, model):
    labels = folder(tmp_path / "l", n=1)
    dev = char_device(tmp_path / "null")
    code, errors, _ = run(labels, "--engine", model, "--out", dev)
    assert code == 2 and errors == [f"error: --out: {dev} is a character device; --out is a "
                                    f"folder"]
    os.mkfifo(tmp_path / "pipe")
    code, errors, _ = run(labels, "--engine", model, "--out", tmp_path / "pipe")
    assert code == 2 and errors == [f"error: --out: {tmp_path / 'pipe'} is a FIFO (named pipe); "
                                    f"--out is a folder"]


@pytest.fixture(scope="module")
def kserve(tmp_path_factory):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from p2phd_infer.serve.app import create_app
    cfg = ModelConfig(**{**TINY.to_dict(), "use_instance": True})
    model = save_random_model(tmp_path_factory.mktemp("mi") / "model.pt", cfg)
    with TestClient(create_app(TorchEngine(model, "cpu"))) as client:
        yield lambda inputs: client.post("/v2/models/p2phd/infer", json={"inputs": inputs})


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
@pytest.mark.parametrize("shape,fault", [
    ([0, 1, 64, 128], "label: batch dimension is 0"),
    ([1, 1, 0, 16], "size 16x0 is below this model's minimum 8x8"),
])
def test_kserve_empty_data_is_not_called_non_integer(kserve, shape, fault):
    r = kserve([{"name": n, "datatype": "INT32", "shape": shape, "data": []}
                for n in ("label", "inst")])
    assert r.status_code == 400 and fault in r.json()["error"], r.text
    assert "non-integer" not in r.json()["error"]


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
@pytest.mark.parametrize("which,datatype", [("inst", "INT64"), ("label", "UINT64")])
def test_kserve_ids_beyond_int32_are_reported_against_their_input(kserve, which, datatype):
    label = np.zeros((1, 1, 8, 8), np.int64)
    values = {"label": label.copy(), "inst": label.copy()}
    values[which][0, 0, 0, 0] = 2 ** 40
    types = {"label": "INT32", "inst": "INT32", which: datatype}
    r = kserve([{"name": n, "datatype": types[n], "shape": [1, 1, 8, 8],
                 "data": values[n].ravel().tolist()} for n in ("label", "inst")])
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith(f"{which}: ") and "outside int32" in r.json()["error"]


# ------------------------------------------------- 6. styles: one parser, no silent choice

FEATS = ModelConfig(label_nc=35, use_instance=True, feat_num=2, netG="global", ngf=2,
                    n_downsample_global=1, n_blocks_global=1)


def _feature_info():
    g = torch.Generator().manual_seed(0)
    return EngineInfo(FEATS, {7: torch.randn(3, 2, generator=g),
                              26: torch.randn(4, 2, generator=g)}, CITYSCAPES_NAMES)


@pytest.mark.parametrize("style,fault", [
    ("car=1,car=2", "label 'car' is given twice"),             # was: the last one won
    ("car=1,26=2", "label 26 is given twice ('car=1' and '26=2')"),
    ("*=0,road=1,*=1", "'*' is given twice"),
    ("#26001=1,#26001=#26002", "instance 26001 is given twice"),
])
def test_a_style_entry_given_twice_is_refused(style, fault):
    with pytest.raises(OptionError, match=re.escape(fault)):
        StyleControl.from_options(_feature_info(), style)
    with pytest.raises(OptionError, match="given twice"):
        parse_style(style)                                     # the one parser says it too


@pytest.mark.parametrize("style,src_label", [("#26001=#99999", 99), ("#26001=#40", 40)])
def test_a_copy_from_a_label_the_model_lacks_is_refused(style, src_label):
    with pytest.raises(OptionError, match=rf"source instance \d+ is of label {src_label}, "
                                          rf"outside this model's labels 0..34"):
        StyleControl.from_options(_feature_info(), style)
    ok = StyleControl.from_options(_feature_info(), "#26001=#26002")
    with pytest.raises(OptionError, match="of label 99"):
        ok.with_instances(copies={26003: 99001})               # per-call choices too


@pytest.mark.parametrize("make", [
    lambda: StyleControl.from_options(_feature_info(), None, seed=1.5),
    lambda: StyleControl.from_options(_feature_info(), None, instances={26001: 1.7}),
    lambda: StyleControl.from_options(_feature_info(), None, copies={26001: 26002.0}),
    lambda: StyleControl.from_options(_feature_info(), None, seed=True),
    lambda: instance_style({26001: 1.7}),
])
def test_non_integer_seeds_clusters_and_sources_are_refused(make):
    with pytest.raises(OptionError, match="is not an integer"):
        make()


def test_the_api_and_server_refuse_non_integer_choices(tmp_path):
    ckpt = random_checkpoint(FEATS, features=_feature_info().features)
    save_checkpoint(ckpt, tmp_path / "feat.pt")
    p2p = Pix2PixHD(tmp_path / "feat.pt", device="cpu")
    label = np.full((8, 8), 26, np.int32)
    inst = np.full((8, 8), 26001, np.int32)
    p2p(label, inst, instance_styles={26001: 1})               # cached under '#26001=1'
    with pytest.raises(OptionError, match=r"instance_styles\[26001\]: 1\.7 is not an integer"):
        p2p(label, inst, instance_styles={26001: 1.7})          # was: the same image as 1
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from p2phd_infer.serve.app import create_app
    with TestClient(create_app(p2p.engine)) as client:
        req = {"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 1, 8, 8],
                           "data": a.ravel().tolist()} for n, a in (("label", label),
                                                                     ("inst", inst))]}
        for seed in (1.5, "1.5", True):
            r = client.post("/v2/models/p2phd/infer", json={**req, "parameters": {"seed": seed}})
            assert r.status_code == 400 and "is not an integer" in r.json()["error"], r.text


# ------------------------------------------------- 5. engine metadata checked against the graph

@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from p2phd_infer.export.onnx_export import export_onnx
    cfg = ModelConfig(**{**TINY.to_dict(), "n_blocks_global": 0})
    return export_onnx(random_checkpoint(cfg), tmp_path_factory.mktemp("onnx") / "g.onnx", 16,
                       16, max_batch=1)


def _edited(src, dst, **config):
    import onnx
    model = onnx.load(str(src))
    prop = next(p for p in model.metadata_props if p.key == METADATA_KEY)
    doc = json.loads(prop.value)
    if "size" in config:
        doc["size"] = config.pop("size")
    doc["config"].update(config)
    prop.value = json.dumps(doc)
    onnx.save(model, str(dst))
    return dst


def _engines():
    from p2phd_infer.engines.onnx import OnnxEngine
    engines = [OnnxEngine]
    try:
        from p2phd_infer.engines.openvino import OpenvinoEngine, import_openvino
        import_openvino()
        engines.append(OpenvinoEngine)
    except Exception:  # noqa: BLE001 - no OpenVINO on this machine: ONNX Runtime only
        pass
    return engines


@pytest.mark.parametrize("edit,fault", [
    ({"label_nc": 200}, "label_nc 200, instance edge 0, feat_num 0: 200 input channels"),
    ({"use_instance": True}, "it implies inputs ['inst', 'label'], the graph has ['label']"),
    ({"feat_num": 3}, "it implies inputs ['feat', 'inst', 'label'], the graph has ['label']"),
    ({"size": [32, 32]}, "input label has shape [None, 1, 16, 16], the metadata implies frame "
                         "size (H, W) [32, 32]"),
    ({"ngf": 4}, "ngf 4) needs a convolution weight"),
    ({"n_blocks_global": 1}, "needs a convolution weight [8, 8, 3, 3]"),
])
def test_edited_metadata_is_refused_on_every_graph_engine(tmp_path, onnx_file, edit, fault):
    bad = _edited(onnx_file, tmp_path / "bad.onnx", **edit)
    for engine in _engines():
        with pytest.raises(EngineError) as e:
            engine(bad, "cpu")
        msg = str(e.value)
        assert msg.startswith(f"{bad}: the engine metadata does not describe this graph") and \
            fault in msg and "\n" not in msg, msg
    for engine in _engines():                                      # the unedited file opens
        assert engine(onnx_file, "cpu").config.label_nc == 8


def test_an_edited_label_nc_cannot_let_id_100_through(tmp_path, onnx_file):
    bad = _edited(onnx_file, tmp_path / "bad.onnx", label_nc=200)
    (tmp_path / "l").mkdir()
    label = np.full((16, 16), 100, np.uint8)                        # valid for label_nc 200
    Image.fromarray(label).save(tmp_path / "l" / "f.png")
    r = CliRunner().invoke(main, ["run", str(tmp_path / "l"), "--engine", str(bad), "--out",
                                  str(tmp_path / "o"), "--no-progress"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.strip().startswith(f"error: {bad}: the engine metadata does not describe")
    assert not (tmp_path / "o").exists()


def test_a_long_copy_chain_resolves_in_one_walk():
    # '#1=#2,#2=#3,...' from a request: the chain walk was quadratic in a list (cubic in all),
    # minutes of CPU for a 20 kB style; now each instance is walked once.
    n = 20_000
    style = ",".join(f"#{i}=#{i + 1}" for i in range(1000, 1000 + n))
    _, _, _, copies = parse_entries(style)
    roots = resolve_copies(copies)
    assert len(roots) == n and set(roots.values()) == {1000 + n}
    with pytest.raises(OptionError, match=r"cycle \(#1001 -> #1002 -> #1001\)"):
        resolve_copies({**copies, 1002: 1001})
