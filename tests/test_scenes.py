"""Synthetic scenes: deterministic, Cityscapes ids, exact 16-bit instance ids, per-instance colour."""
import numpy as np
from click.testing import CliRunner

from p2phd_infer.image_io import read_id_png, read_rgb
from p2phd_infer.cli import main
from p2phd_infer.train.scenes import CAR, PERSON, SCENE_LABELS, make_scenes, render_scene


def test_scene_is_a_function_of_seed_and_index():
    a, b = render_scene(7, 3, 96, 48), render_scene(7, 3, 96, 48)
    assert np.array_equal(a.label, b.label) and np.array_equal(a.inst, b.inst)
    assert np.array_equal(a.image, b.image)
    c = render_scene(8, 3, 96, 48)
    assert not np.array_equal(a.image, c.image)


def test_ids_are_cityscapes_style():
    for i in range(6):
        s = render_scene(1, i, 128, 64)
        assert set(np.unique(s.label)) <= set(SCENE_LABELS)
        # The label of every pixel follows from its instance id (id // 1000 for things).
        derived = np.where(s.inst < 1000, s.inst, s.inst // 1000)
        assert np.array_equal(derived, s.label)
        things = s.inst[s.inst >= 1000]
        assert set(np.unique(things // 1000)) <= {CAR, PERSON}


def test_every_car_gets_its_own_paint():
    colours = []
    for i in range(12):
        s = render_scene(3, i, 256, 128)
        for k in np.unique(s.inst[s.inst // 1000 == CAR]):
            m = s.inst == k
            if m.sum() > 200:
                colours.append(tuple(np.median(s.image[m], axis=0).astype(int)))
    assert len(colours) >= 8
    assert len(set(colours)) >= 0.6 * len(colours)      # white/black/silver cars may repeat


def test_make_scenes_writes_the_pix2pixhd_layout(tmp_path):
    stems = make_scenes(tmp_path, 3, 64, 32, seed=5)
    for stem in stems:
        label = read_id_png(tmp_path / "train_label" / f"{stem}.png")
        inst = read_id_png(tmp_path / "train_inst" / f"{stem}.png")
        img = read_rgb(tmp_path / "train_img" / f"{stem}.png")
        assert label.dtype == np.int32 and inst.dtype == np.int32
        assert label.shape == inst.shape == img.shape[:2] == (32, 64)
    # 16-bit instance ids above 32767 come back exact (no int16 wrap, no float rounding).
    s = render_scene(5, 0, 64, 32)
    assert np.array_equal(read_id_png(tmp_path / "train_inst" / f"{stems[0]}.png"), s.inst)
    assert s.inst.max() > 20000


def test_make_scenes_command(tmp_path):
    r = CliRunner().invoke(main, ["make-scenes", "--out", str(tmp_path / "d"), "--count", "2",
                                  "--size", "64x32", "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "d" / "train_img").glob("*.png"))) == 2
    r = CliRunner().invoke(main, ["make-scenes", "--out", str(tmp_path / "e"), "--size", "64by32"])
    assert r.exit_code == 2 and "--size" in r.output
