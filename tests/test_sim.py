"""p2phd_infer.sim: derived instance maps and CARLA's cameras; p2phd_infer.label_map."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from p2phd_infer.errors import InputError
from p2phd_infer.label_map import LabelMap, read_label_map
from p2phd_infer.labels import CITYSCAPES_THINGS
from p2phd_infer.sim import (CARLA_TO_CITYSCAPES, bgra_view, carla_instances, carla_labels,
                             from_carla, instances_from_labels)

ROAD, CAR, PERSON, SKY = 7, 26, 24, 23


def scene(h=24, w=40) -> np.ndarray:
    """Road and sky, two cars that touch each other (one region), a separate car, a person
    touching a car (different classes: separate instances), and a car touching another only at
    a corner (4-connectivity: two instances)."""
    lab = np.full((h, w), ROAD, np.uint8)
    lab[:4] = SKY
    lab[6:10, 2:8] = CAR
    lab[6:10, 8:12] = CAR        # touches the first car along an edge: one region
    lab[14:18, 2:6] = CAR        # separate
    lab[14:18, 6:8] = PERSON     # touches that car, another class
    lab[20:22, 20:22] = CAR
    lab[22:24, 22:24] = CAR      # corner contact only
    return lab


def reference(lab: np.ndarray) -> np.ndarray:
    """The definition, written plainly: per thing class, 4-connected components numbered by the
    raster order of their first pixel."""
    inst = lab.astype(np.int32)
    for c in np.unique(lab):
        if int(c) not in CITYSCAPES_THINGS:
            continue
        comp, n = ndimage.label(lab == c)
        firsts = sorted((int(np.flatnonzero(comp.ravel() == j)[0]), j) for j in range(1, n + 1))
        for k, (_, j) in enumerate(firsts):
            inst[comp == j] = int(c) * 1000 + k
    return inst


def test_instances_from_labels_touching_separate_and_corner_objects():
    lab = scene()
    inst = instances_from_labels(lab)
    assert inst.dtype == np.int32
    np.testing.assert_array_equal(inst, reference(lab))
    assert inst[7, 3] == inst[7, 10] == 26000          # edge-touching cars: one instance
    assert inst[15, 3] == 26001 and inst[15, 7] == 24000
    assert inst[20, 20] == 26002 and inst[22, 22] == 26003   # corner contact: two
    assert inst[0, 0] == SKY and inst[12, 0] == ROAD            # stuff keeps its class id


def test_instances_from_labels_random_maps_match_the_definition():
    rng = np.random.default_rng(1)
    for _ in range(20):
        lab = rng.choice([ROAD, CAR, PERSON, 33], size=(30, 50), p=[0.4, 0.3, 0.2, 0.1])
        np.testing.assert_array_equal(instances_from_labels(lab), reference(lab))


def test_numbering_is_stable_while_objects_move():
    """A car moving right across frames keeps its id; so does a person below it."""
    ids = []
    for t in range(6):
        lab = np.full((32, 64), ROAD, np.uint8)
        lab[4:10, 4 + 3 * t:12 + 3 * t] = CAR
        lab[20:28, 40 - 2 * t:44 - 2 * t] = PERSON
        lab[20:26, 2:8] = CAR
        inst = instances_from_labels(lab)
        ids.append((inst[6, 6 + 3 * t], inst[22, 41 - 2 * t], inst[22, 4]))
    assert all(i == (26000, 24000, 26001) for i in ids)


def test_too_many_regions_is_refused_by_name():
    lab = np.full((2, 2002), ROAD, np.uint8)
    lab[0, ::2] = CAR          # 1001 separate one-pixel cars
    with pytest.raises(InputError, match=r"frame7: class 26 has 1001 separate regions"):
        instances_from_labels(lab, name="frame7")


def carla_encode(lab: np.ndarray, inst: np.ndarray) -> np.ndarray:
    """Cityscapes ids -> the RGB an instance camera PNG holds (tag, actor low, actor high)."""
    inverse = {}
    for tag, city in CARLA_TO_CITYSCAPES.items():
        inverse.setdefault(city, tag)
    tags = np.vectorize(inverse.__getitem__)(lab).astype(np.uint8)
    actor = np.where(inst >= 1000, inst % 1000, 0)
    return np.stack([tags, actor & 255, actor >> 8], -1).astype(np.uint8)


def test_carla_rgb_round_trip_to_cityscapes_ids():
    lab = scene()
    inst = reference(lab)
    rgb = carla_encode(lab, inst)
    labels = carla_labels(rgb[..., 0])
    np.testing.assert_array_equal(labels, lab)
    actor = rgb[..., 1].astype(np.int32) | (rgb[..., 2].astype(np.int32) << 8)
    np.testing.assert_array_equal(carla_instances(labels, actor), inst)


def test_carla_raw_bgra_buffer_is_read_without_a_copy():
    lab = scene()
    inst = reference(lab)
    rgb = carla_encode(lab, inst)
    bgra = np.concatenate([rgb[..., 2::-1], np.full(lab.shape + (1,), 255, np.uint8)], -1)

    class Image:                       # what carla.Image offers: raw_data, height, width
        raw_data = memoryview(bgra.tobytes())
        height, width = lab.shape

    view = bgra_view(Image)
    assert not view.flags.owndata and view.shape == lab.shape + (4,)
    labels, instances = from_carla(instance=Image)
    np.testing.assert_array_equal(labels, lab)
    np.testing.assert_array_equal(instances, inst)
    labels_only, none = from_carla(semantic=bgra)
    np.testing.assert_array_equal(labels_only, lab)
    assert none is None


def test_carla_faults_name_the_pixel():
    tags = np.zeros((4, 5), np.uint8)
    tags[2, 3] = 200
    with pytest.raises(InputError, match=r"f.png: pixel \(3, 2\) has CARLA tag 200"):
        carla_labels(tags, name="f.png")
    labels = np.full((2, 2), CAR, np.int32)
    actor = np.array([[5, 1005], [5, 5]])
    with pytest.raises(InputError, match="actors 5 and 1005 would share instance id 26005"):
        carla_instances(labels, actor)

    class Short:
        raw_data, height, width = b"\0" * 10, 2, 2
    with pytest.raises(InputError, match="raw_data has 10 bytes"):
        bgra_view(Short)


@pytest.mark.parametrize("text,suffix", [
    ('{"1": 7, "2": 8, "14": 26}', ".json"),
    ("[[1, 7], [2, 8], [14, 26]]", ".json"),
    ("# CARLA tag -> Cityscapes\n1 7\n2\t8\n\n14 26\n", ".txt"),
])
def test_label_map_formats_round_trip(tmp_path, text, suffix):
    p = tmp_path / f"map{suffix}"
    p.write_text(text)
    m = read_label_map(p).for_model(35)
    assert m.mapping == {1: 7, 2: 8, 14: 26}
    src = np.array([[1, 2], [14, 1]], np.uint8)
    np.testing.assert_array_equal(m.apply(src), [[7, 8], [26, 7]])
    # written back as JSON and read again: the same map
    q = tmp_path / "again.json"
    q.write_text(json.dumps({str(k): v for k, v in m.mapping.items()}))
    assert read_label_map(q).mapping == m.mapping


def test_label_map_of_colours(tmp_path):
    p = tmp_path / "colours.json"
    p.write_text('{"#804080": 7, "0,0,142": 26}')
    m = read_label_map(p)
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[:] = (128, 64, 128)
    rgb[1, 1] = (0, 0, 142)
    np.testing.assert_array_equal(m.apply(rgb), [[7, 7], [7, 26]])
    with pytest.raises(InputError, match="an id map, but the label map .* maps colours"):
        m.apply(np.zeros((2, 2), np.uint8))


def test_label_map_refuses_unmapped_ids_naming_file_pixel_and_id(tmp_path):
    p = tmp_path / "m.txt"
    p.write_text("1 7\n2 8\n")
    m = read_label_map(p)
    src = np.ones((3, 4), np.int32)
    src[2, 1] = 9
    with pytest.raises(InputError, match=r"frame.png: pixel \(x=1, y=2\) has id 9, which the "
                                         r"label map .*m.txt does not map"):
        m.apply(src, "frame.png")


@pytest.mark.parametrize("text,fault", [
    ("1 7\n1 8\n", "id 1 is mapped twice"),
    ('{"1": 7, "#000000": 0}', "mixes id and colour"),
    ("1 seven\n", "model id 'seven' is not an integer"),
    ("1 7 3\n", "expected `SOURCE MODEL_ID`"),
    pytest.param("[" * 100000 + "]" * 100000, "nested too deeply|not valid JSON", id="deep"),
    ("", "no entries"),
])
def test_label_map_faults_are_one_line(tmp_path, text, fault):
    p = tmp_path / "bad.txt"
    p.write_text(text)
    with pytest.raises(InputError, match=fault):
        read_label_map(p)


def test_label_map_checks_model_ids():
    with pytest.raises(InputError, match="maps id 3 to 40, outside the model's ids 0..34"):
        LabelMap({3: 40}, "m.json").for_model(35)


def test_sim_loop_runs_in_quick_form(tmp_path, one_thread):
    """benchmarks/sim_loop.py --quick: a moving scene through the API's Runtime into an mp4."""
    import importlib.util
    from pathlib import Path

    from click.testing import CliRunner
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "sim_loop.py"
    spec = importlib.util.spec_from_file_location("sim_loop", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    labels = mod.moving_scene(64, 32, 3)
    assert not np.array_equal(labels[0], labels[2])          # the objects move
    res = CliRunner().invoke(mod.main, ["--quick", "--out-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "| loop, batch 1, synchronous" in res.output
    doc = json.loads((tmp_path / "sim_loop.json").read_text())
    assert [r["batch"] for r in doc["rows"]] == [1, 1, 2]
    assert all(r["frames_per_s"] > 0 for r in doc["rows"])
    assert (tmp_path / "sim_loop.mp4").stat().st_size > 0


def test_label_map_that_is_not_a_regular_file_is_named_and_never_opened(tmp_path):
    import os
    fifo = tmp_path / "map.fifo"
    os.mkfifo(fifo)                       # opening it would block: it must be refused first
    with pytest.raises(InputError, match="map.fifo: is a FIFO"):
        read_label_map(fifo)
    with pytest.raises(InputError, match="is a folder, not a label map file"):
        read_label_map(tmp_path)
    with pytest.raises(InputError, match="no such label map file"):
        read_label_map(tmp_path / "missing.json")
