"""Simulator inputs through run, the Runtime and the API: --instances auto, --label-format
carla, --label-map. Tiny random-weight Cityscapes model (stride 8), images compared byte for
byte with the same ids given the usual way."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from p2phd_infer.api import Pix2PixHD
from p2phd_infer.cli import main
from p2phd_infer.config import ModelConfig
from p2phd_infer.errors import InputError
from p2phd_infer.sim import CARLA_TO_CITYSCAPES, instances_from_labels
from helpers import save_random_model

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = ModelConfig(label_nc=35, ngf=4, n_downsample_global=2, n_blocks_global=1,
                  n_blocks_local=1)
H, W = 24, 40
ROAD, SIDEWALK, SKY, PERSON, CAR = 7, 8, 23, 24, 26


def frame(t: int) -> np.ndarray:
    """A street: sky, road, sidewalk; two edge-touching cars, one car alone, a person; all
    moving right by 2 px a frame."""
    lab = np.full((H, W), ROAD, np.uint8)
    lab[:6] = SKY
    lab[18:] = SIDEWALK
    lab[8:12, 2 + 2 * t:7 + 2 * t] = CAR
    lab[8:12, 7 + 2 * t:10 + 2 * t] = CAR
    lab[13:17, 20 + 2 * t:25 + 2 * t] = CAR
    lab[17:22, 30 - t:32 - t] = PERSON
    return lab


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_random_model(tmp_path_factory.mktemp("sim") / "model.pt", CFG, seed=2, std=0.2)


def run(*args):
    return CliRunner().invoke(main, ["run", *map(str, args), "--device", "cpu", "--backend",
                                     "torch", "--no-progress"])


def write(folder, name, array, mode=None):
    folder.mkdir(exist_ok=True)
    Image.fromarray(array, mode).save(folder / name) if mode else \
        Image.fromarray(array).save(folder / name)


def outputs(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_instances_auto_equals_derived_maps_given_as_files(model, tmp_path):
    for t in range(3):
        lab = frame(t)
        write(tmp_path / "labels", f"f{t}.png", lab)
        write(tmp_path / "insts", f"f{t}.png", instances_from_labels(lab).astype(np.uint16))
    res = run(tmp_path / "labels", "--engine", model, "--out", tmp_path / "auto", "--instances",
              "auto")
    assert res.exit_code == 0, res.output
    res = run(tmp_path / "labels", "--engine", model, "--out", tmp_path / "files",
              "--instances", tmp_path / "insts")
    assert res.exit_code == 0, res.output
    auto, files = outputs(tmp_path / "auto"), outputs(tmp_path / "files")
    assert len(auto) == 3 and auto == files
    # Without instance maps the model's frames fail, naming the way out.
    res = run(tmp_path / "labels", "--engine", model, "--out", tmp_path / "none")
    assert res.exit_code == 1 and "--instances auto" in res.output


def carla_pngs(lab: np.ndarray, inst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What CARLA's semantic and instance cameras save (ColorConverter.Raw) for these ids."""
    inverse = {}
    for tag, city in CARLA_TO_CITYSCAPES.items():
        inverse.setdefault(city, tag)
    tags = np.vectorize(inverse.__getitem__)(lab).astype(np.uint8)
    actor = np.where(inst >= 1000, inst % 1000, 0)
    semantic = np.stack([tags, np.zeros_like(tags), np.zeros_like(tags)], -1)
    instance = np.stack([tags, actor & 255, actor >> 8], -1).astype(np.uint8)
    return semantic, instance


def test_carla_png_pair_gives_the_image_of_the_cityscapes_maps(model, tmp_path):
    for t in range(2):
        lab = frame(t)
        inst = instances_from_labels(lab)
        semantic, instance = carla_pngs(lab, inst)
        write(tmp_path / "city_l", f"f{t}.png", lab)
        write(tmp_path / "city_i", f"f{t}.png", inst.astype(np.uint16))
        write(tmp_path / "semantic", f"f{t}.png", semantic)
        rgba = np.concatenate([instance, np.full((H, W, 1), 255, np.uint8)], -1)
        write(tmp_path / "instance", f"f{t}.png", rgba, "RGBA")
    res = run(tmp_path / "city_l", "--engine", model, "--out", tmp_path / "city",
              "--instances", tmp_path / "city_i")
    assert res.exit_code == 0, res.output
    res = run(tmp_path / "semantic", "--engine", model, "--out", tmp_path / "carla",
              "--label-format", "carla", "--instances", tmp_path / "instance")
    assert res.exit_code == 0, res.output
    res = run(tmp_path / "semantic", "--engine", model, "--out", tmp_path / "carla_auto",
              "--label-format", "carla", "--instances", "auto")
    assert res.exit_code == 0, res.output
    city, carla = outputs(tmp_path / "city"), outputs(tmp_path / "carla")
    assert len(city) == 2 and city == carla == outputs(tmp_path / "carla_auto")
    # A single-channel map is not a CARLA camera image: refused by name.
    write(tmp_path / "grey", "g.png", frame(0))
    res = run(tmp_path / "grey", "--engine", model, "--out", tmp_path / "g", "--label-format",
              "carla", "--instances", "auto")
    assert res.exit_code == 1 and "g.png: expected a CARLA segmentation camera image" in \
        res.output


def test_label_map_round_trips_and_refuses_unmapped_ids(model, tmp_path):
    shift = {c: c + 100 for c in (ROAD, SIDEWALK, SKY, PERSON, CAR)}
    mapping = tmp_path / "ids.json"
    mapping.write_text(json.dumps({str(v): k for k, v in shift.items()}))
    lab = frame(1)
    write(tmp_path / "src", "a.png", np.vectorize(shift.__getitem__)(lab).astype(np.uint8))
    write(tmp_path / "ids", "a.png", lab)
    res = run(tmp_path / "src", "--engine", model, "--out", tmp_path / "mapped", "--label-map",
              mapping, "--instances", "auto")
    assert res.exit_code == 0, res.output
    res = run(tmp_path / "ids", "--engine", model, "--out", tmp_path / "direct", "--instances",
              "auto")
    assert res.exit_code == 0, res.output
    assert outputs(tmp_path / "mapped") == outputs(tmp_path / "direct")
    bad = np.vectorize(shift.__getitem__)(lab).astype(np.uint8)
    bad[5, 9] = 77
    write(tmp_path / "src", "b.png", bad)
    res = run(tmp_path / "src", "--engine", model, "--out", tmp_path / "mapped2", "--label-map",
              mapping, "--instances", "auto")
    assert res.exit_code == 1
    line = next(x for x in res.output.splitlines() if x.startswith("error:"))
    assert "b.png: pixel (x=9, y=5) has id 77, which the label map" in line and "ids.json" in line
    assert (tmp_path / "mapped2" / "a.png").is_file()
    # A map whose targets the model does not have is refused before any frame.
    over = tmp_path / "over.json"
    over.write_text('{"1": 40}')
    res = run(tmp_path / "src", "--engine", model, "--out", tmp_path / "x", "--label-map", over)
    assert res.exit_code == 2 and "maps id 1 to 40, outside the model's ids 0..34" in res.output


def test_api_and_runtime_derive_instances_and_map_ids(model, tmp_path):
    frames = [frame(t) for t in range(3)]
    given = Pix2PixHD(model, device="cpu", mode="plain")
    auto = Pix2PixHD(model, device="cpu", mode="plain", instances="auto")
    insts = [instances_from_labels(f) for f in frames]
    want = [given(f, i) for f, i in zip(frames, insts)]
    for f, w in zip(frames, want):
        np.testing.assert_array_equal(auto(f), w)
    np.testing.assert_array_equal(auto(np.stack(frames)), np.stack(want))       # [B,H,W]
    np.testing.assert_array_equal(auto(torch.from_numpy(frames[0])), want[0])   # torch
    with auto.runtime(max_batch_size=2) as rt:
        got = list(rt.map(frames))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    mapping = tmp_path / "m.txt"
    mapping.write_text("".join(f"{c + 50} {c}\n" for c in (ROAD, SIDEWALK, SKY, PERSON, CAR)))
    mapped = Pix2PixHD(model, device="cpu", mode="plain", instances="auto", label_map=mapping)
    np.testing.assert_array_equal(mapped(frames[0] + 50), want[0])
    with pytest.raises(InputError, match=r"pixel \(x=0, y=0\) has id 23"):
        mapped(frames[0])
    with pytest.raises(Exception, match="'auto'"):
        Pix2PixHD(model, device="cpu", instances="yes")


def test_serve_derives_instances_and_maps_ids(model, tmp_path):
    """serve --instances auto / --label-map (through create_app): 'inst' is optional in the
    model configuration, and a request with only a label map (KServe JSON, and /v1/synthesize)
    gets the image of the label map with its derived instances."""
    import io

    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from p2phd_infer.engines import TorchEngine
    from p2phd_infer.label_map import LabelMap
    from p2phd_infer.serve.app import create_app
    engine = TorchEngine(model, "cpu")
    lab = frame(2)
    want = Pix2PixHD(engine)(lab, instances_from_labels(lab))
    shift = LabelMap({c + 100: c for c in (ROAD, SIDEWALK, SKY, PERSON, CAR)}, "m.json")
    with TestClient(create_app(engine, derive_instances=True, label_map=shift)) as client:
        cfg = client.get("/v2/models/p2phd/config").json()
        assert {i["name"]: i["optional"] for i in cfg["input"]} == {"label": False,
                                                                    "inst": True}
        src = (lab.astype(np.int32) + 100)
        req = {"inputs": [{"name": "label", "datatype": "INT32", "shape": [1, 1, H, W],
                           "data": src.ravel().tolist()}]}
        r = client.post("/v2/models/p2phd/infer", json=req)
        assert r.status_code == 200, r.text
        out = np.array(r.json()["outputs"][0]["data"], np.uint8).reshape(H, W, 3)
        np.testing.assert_array_equal(out, want)
        buf = io.BytesIO()
        Image.fromarray(src.astype(np.uint8)).save(buf, format="PNG")
        r = client.post("/v1/synthesize", files={"label": buf.getvalue()})
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), want)
        req["inputs"][0]["data"] = lab.astype(np.int32).ravel().tolist()   # unmapped ids
        r = client.post("/v2/models/p2phd/infer", json=req)
        assert r.status_code == 400 and "which the label map m.json does not map" in r.text
    with TestClient(create_app(engine)) as client:      # without: 'inst' is required
        r = client.post("/v2/models/p2phd/infer", json={"inputs": [
            {"name": "label", "datatype": "INT32", "shape": [1, 1, H, W],
             "data": lab.astype(np.int32).ravel().tolist()}]})
        assert r.status_code == 400 and "--instances auto" in r.text


def test_editor_maps_loaded_label_maps_through_the_label_map(model, tmp_path):
    """edit --label-map: a label map loaded in the page (/editor/decode) in source ids comes
    back in the model's ids, with instances derived; an unmapped id is a 400 naming it."""
    import io

    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from p2phd_infer.engines import TorchEngine
    from p2phd_infer.label_map import LabelMap
    from p2phd_infer.serve.app import create_app
    lab = frame(0)
    shift = LabelMap({c + 100: c for c in (ROAD, SIDEWALK, SKY, PERSON, CAR)}, "m.json")
    buf = io.BytesIO()
    Image.fromarray((lab + 100).astype(np.uint8)).save(buf, format="PNG")
    app = create_app(TorchEngine(model, "cpu"), editor=True, editor_label_map=shift)
    with TestClient(app) as client:
        token = client.get("/").text.split('name="p2phd-token" content="')[1].split('"')[0]
        r = client.post("/editor/decode", files={"label": ("a.png", buf.getvalue())},
                        headers={"X-P2PHD-Token": token})
        assert r.status_code == 200, r.text
        maps = np.frombuffer(r.content, "<i4").reshape(2, H, W)
        np.testing.assert_array_equal(maps[0], lab)
        np.testing.assert_array_equal(maps[1], instances_from_labels(lab))
        buf = io.BytesIO()
        Image.fromarray(lab).save(buf, format="PNG")
        r = client.post("/editor/decode", files={"label": ("b.png", buf.getvalue())},
                        headers={"X-P2PHD-Token": token})
        assert r.status_code == 400 and "b.png: pixel (x=0, y=0) has id 23" in r.text
