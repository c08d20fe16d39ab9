"""Any label format through `run`: colour label maps through a palette (Cityscapes by default,
--palette FILE, a model's label_colors), label_nc 0 RGB input images, comparison pictures, and
colorize over every integer dtype."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from p2phd_infer.checkpoint import Checkpoint, save_checkpoint
from p2phd_infer.cli import main
from p2phd_infer.config import ModelConfig
from p2phd_infer.engines import TorchEngine
from p2phd_infer.errors import InputError
from p2phd_infer.labels import CITYSCAPES_LABELS
from p2phd_infer.networks import build_generator
from p2phd_infer.palette import Palette, cityscapes_palette, colorize, generated_palette
from p2phd_infer.synthesizer import Synthesizer, to_uint8
from p2phd_infer.train.visual import colorize as visual_colorize

SMALL = dict(ngf=4, n_downsample_global=2, n_blocks_global=1, n_blocks_local=1)   # stride 8
CITY = ModelConfig(label_nc=35, **SMALL)
RGB_IN = ModelConfig(label_nc=0, use_instance=False, **SMALL)
H, W = 20, 36              # not a multiple of the stride: padded and cropped back
CITY_COLORS = np.array([CITYSCAPES_LABELS[i][1] for i in range(34)], dtype=np.uint8)


def save_model(cfg, path, seed=0, **extra):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        save_checkpoint(Checkpoint(cfg, build_generator(cfg).state_dict(), extra=extra), path)
    return path


def scene(seed=0, ids=range(34)):
    """Label ids [H,W] and a matching instance map (class*1000+k for ids >= 24)."""
    rng = np.random.default_rng(seed)
    ids = np.asarray(list(ids))
    label = ids[rng.integers(0, len(ids), (H // 4 + 1, W // 4 + 1))]
    label = label.repeat(4, 0).repeat(4, 1)[:H, :W]
    inst = np.where(label >= 24, label * 1000 + rng.integers(0, 3, label.shape), label)
    return label.astype(np.uint8), inst.astype(np.uint16)


def run(*args):
    res = CliRunner().invoke(main, ["run", *map(str, args), "--device", "cpu", "--backend",
                                    "torch", "--no-progress"])
    return res


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    root = tmp_path_factory.mktemp("city")
    return save_model(CITY, root / "model.pt")


def test_cityscapes_colour_maps_give_the_images_of_their_label_ids(city, tmp_path):
    """Cityscapes layout: X_gtFine_color.png (RGBA, as the dataset ships them) next to
    X_gtFine_labelIds.png. Every id with a colour of its own reads back to itself, so the same
    ids in give the same bytes out; shared colours read as their lowest id (1-4 -> 0,
    18 -> 17), so a labelIds map with those ids replaced gives the image of the colour map."""
    folder = tmp_path / "gtFine"
    folder.mkdir()
    for i in range(2):
        label, inst = scene(seed=i)
        Image.fromarray(label).save(folder / f"f{i}_gtFine_labelIds.png")
        Image.fromarray(inst).save(folder / f"f{i}_gtFine_instanceIds.png")
        rgba = np.concatenate([CITY_COLORS[label], np.full((H, W, 1), 255, np.uint8)], axis=2)
        Image.fromarray(rgba, "RGBA").save(folder / f"f{i}_gtFine_color.png")
        lowest = label.copy()
        lowest[np.isin(label, [1, 2, 3, 4])] = 0
        lowest[label == 18] = 17
        (tmp_path / "lowest").mkdir(exist_ok=True)
        Image.fromarray(lowest).save(tmp_path / "lowest" / f"f{i}.png")
        (tmp_path / "inst").mkdir(exist_ok=True)
        Image.fromarray(inst).save(tmp_path / "inst" / f"f{i}.png")
    res = run(folder, "--engine", city, "--out", tmp_path / "ids")
    assert res.exit_code == 0, res.output
    res = run(folder, "--engine", city, "--out", tmp_path / "color", "--label-format", "color")
    assert res.exit_code == 0, res.output
    res = run(tmp_path / "lowest", "--engine", city, "--out", tmp_path / "low", "--instances",
              tmp_path / "inst")
    assert res.exit_code == 0, res.output
    for i in range(2):
        from_ids = Image.open(tmp_path / "ids" / f"f{i}_gtFine_labelIds.png")
        from_color = Image.open(tmp_path / "color" / f"f{i}_gtFine_color.png")
        from_lowest = Image.open(tmp_path / "low" / f"f{i}.png")
        assert from_color.size == (W, H)
        assert np.array_equal(np.asarray(from_color), np.asarray(from_lowest))
        # Shared colours change the input, hence (almost surely) the image; the unique ones not.
        assert not np.array_equal(np.asarray(from_ids), np.asarray(from_color))
    # With only ids of unique colours, colour map and id map give byte-identical images.
    label, inst = scene(seed=5, ids=[0, 5, 7, 8, 11, 21, 23, 24, 26, 33])
    for d in ("u_ids", "u_col", "u_inst"):
        (tmp_path / d).mkdir()
    Image.fromarray(label).save(tmp_path / "u_ids" / "a.png")
    Image.fromarray(CITY_COLORS[label]).save(tmp_path / "u_col" / "a.png")      # RGB, auto
    Image.fromarray(inst).save(tmp_path / "u_inst" / "a.png")
    for d in ("u_ids", "u_col"):
        res = run(tmp_path / d, "--engine", city, "--out", tmp_path / f"o_{d}", "--instances",
                  tmp_path / "u_inst")
        assert res.exit_code == 0, res.output
    assert (tmp_path / "o_u_ids" / "a.png").read_bytes() == \
        (tmp_path / "o_u_col" / "a.png").read_bytes()


def test_unknown_colour_is_refused_by_file_pixel_and_colour(city, tmp_path):
    label, inst = scene(seed=1)
    rgb = CITY_COLORS[label].copy()
    rgb[7, 11] = (1, 2, 3)
    rgb[15, 30] = (9, 9, 9)
    for d in ("l", "i"):
        (tmp_path / d).mkdir()
    Image.fromarray(rgb).save(tmp_path / "l" / "bad.png")
    Image.fromarray(label).save(tmp_path / "l" / "good.png")
    for name in ("bad", "good"):
        Image.fromarray(inst).save(tmp_path / "i" / f"{name}.png")
    res = run(tmp_path / "l", "--engine", city, "--out", tmp_path / "o", "--instances",
              tmp_path / "i")
    assert res.exit_code == 1
    line = next(x for x in res.output.splitlines() if x.startswith("error:"))
    assert "bad.png: pixel (x=11, y=7) has colour (1, 2, 3)" in line
    assert "not in the palette (Cityscapes; 2 pixels of unknown colours)" in line
    assert (tmp_path / "o" / "good.png").is_file() and not (tmp_path / "o" / "bad.png").exists()
    # --label-format ids refuses the colour map as before, pointing at the option.
    res = run(tmp_path / "l", "--engine", city, "--out", tmp_path / "o2", "--instances",
              tmp_path / "i", "--label-format", "ids")
    assert res.exit_code == 1 and "--label-format color or auto" in res.output


def test_palette_file_and_model_colours(tmp_path):
    """A simulator's palette: --palette FILE, and the same colours as the model's label_colors;
    both read the colour map to the ids of its id map (byte-identical images)."""
    cfg = ModelConfig(label_nc=6, use_instance=False, **SMALL)
    colors = {0: [10, 20, 30], 1: [200, 0, 0], 2: [0, 200, 0], 3: [0, 0, 200], 4: [9, 9, 9],
              5: [250, 250, 0]}
    plain = save_model(cfg, tmp_path / "plain.pt", seed=3)
    own = save_model(cfg, tmp_path / "own.pt", seed=3, label_colors=colors)
    pal = tmp_path / "sim.txt"
    pal.write_text("".join(f"{i} class {i} {r} {g} {b}\n" for i, (r, g, b) in colors.items()))
    rng = np.random.default_rng(2)
    label = rng.integers(0, 6, (H, W)).astype(np.uint8)
    table = np.array([colors[i] for i in range(6)], np.uint8)
    for d in ("ids", "rgb"):
        (tmp_path / d).mkdir()
    Image.fromarray(label).save(tmp_path / "ids" / "s.png")
    Image.fromarray(table[label]).save(tmp_path / "rgb" / "s.png")
    outs = {}
    for key, args in (("ids", ["ids", "--engine", plain]),
                      ("file", ["rgb", "--engine", plain, "--palette", pal]),
                      ("model", ["rgb", "--engine", own])):
        res = run(tmp_path / args[0], *args[1:], "--out", tmp_path / f"o_{key}")
        assert res.exit_code == 0, res.output
        outs[key] = (tmp_path / f"o_{key}" / "s.png").read_bytes()
    assert outs["ids"] == outs["file"] == outs["model"]
    # Without a palette of its colours, the Cityscapes default refuses the map.
    res = run(tmp_path / "rgb", "--engine", plain, "--out", tmp_path / "o_none")
    assert res.exit_code == 1 and "has colour (" in res.output
    # A palette file without colours is one line naming it.
    (tmp_path / "names.txt").write_text("0 sky\n")
    res = run(tmp_path / "rgb", "--engine", plain, "--out", tmp_path / "o_x", "--palette",
              tmp_path / "names.txt")
    assert res.exit_code == 2 and "names.txt: no colours in the file" in res.output


def test_palette_shared_colours_read_as_the_lowest_id():
    pal = cityscapes_palette()
    assert pal.shared == {(0, 0, 0): [0, 1, 2, 3, 4], (153, 153, 153): [17, 18]}
    rgb = np.array([[[0, 0, 0], [153, 153, 153], [0, 0, 142], [70, 130, 180]]], np.uint8)
    assert pal.ids(rgb).tolist() == [[0, 17, 26, 23]]
    # Ids a model does not have are out of its palette: their colours are unknown.
    small = pal.restricted(8)
    assert set(small.colors) == set(range(8))
    with pytest.raises(InputError, match=r"x.png: pixel \(x=1, y=0\) has colour \(153, 153, 153\)"):
        small.ids(rgb, "x.png")
    custom = Palette({5: (1, 1, 1), 2: (1, 1, 1), 7: (2, 2, 2)}, "mine")
    assert custom.ids(np.array([[[1, 1, 1], [2, 2, 2]]], np.uint8)).tolist() == [[2, 7]]


def test_label_nc_0_runs_rgb_images_like_the_synthesizer(tmp_path):
    """--label-format does not apply: the inputs are photos-like RGB images (PNG and JPEG),
    converted x/127.5 - 1; the CPU default (OpenVINO) hands such a model to PyTorch."""
    model = save_model(RGB_IN, tmp_path / "rgb.pt", seed=4)
    rng = np.random.default_rng(7)
    (tmp_path / "in").mkdir()
    images = {"a": rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
              "b": rng.integers(0, 256, (24, 16, 3), dtype=np.uint8)}
    Image.fromarray(images["a"]).save(tmp_path / "in" / "a.png")
    Image.fromarray(images["b"]).save(tmp_path / "in" / "b.jpg", quality=95)
    images["b"] = np.asarray(Image.open(tmp_path / "in" / "b.jpg").convert("RGB"))
    res = CliRunner().invoke(main, ["run", str(tmp_path / "in"), "--engine", str(model), "--out",
                                    str(tmp_path / "out"), "--device", "cpu", "--no-progress",
                                    "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    if "OpenVINO" in res.output or "openvino" in res.output:
        assert "label_nc 0 (RGB input): OpenVINO converts id-map models only" in res.output
    ckpt = TorchEngine(model, "cpu", mode="plain").checkpoint
    synth = Synthesizer(RGB_IN, ckpt.build_generator()).eval()
    for name, rgb in images.items():
        got = np.asarray(Image.open(tmp_path / "out" / f"{name}.png")).astype(int)
        assert got.shape == rgb.shape
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
        Hp, Wp = RGB_IN.padded_size(*rgb.shape[:2])
        from p2phd_infer.engines.base import reflect_pad
        with torch.no_grad():
            want = to_uint8(synth(reflect_pad(x, Hp, Wp), None)[..., :rgb.shape[0],
                                                               :rgb.shape[1]])[0].numpy()
        assert np.abs(got - want.astype(int)).max() <= 1, name
    # Exported graphs take label ids: a label_nc 0 model is refused in one line.
    res = CliRunner().invoke(main, ["export", "--engine", str(model), "--format", "onnx",
                                    "--out", str(tmp_path / "m.onnx"), "--height", "32",
                                    "--width", "32"])
    assert res.exit_code == 2 and "label_nc 0 model" in res.output



def test_label_nc_0_never_tries_the_fast_path(tmp_path, monkeypatch):
    """The fast path's first layers are label tables: an RGB-input model stays plain even where
    the fast path would be tried (CUDA, mode auto), and no fast build is attempted."""
    import p2phd_infer.engines.pytorch as pt
    model = save_model(RGB_IN, tmp_path / "rgb.pt")
    monkeypatch.setattr(pt, "_wants_fast", lambda mode, device: True)
    monkeypatch.setattr(pt.TorchEngine, "_try_fast", lambda *a, **k: pytest.fail("tried fast"))
    engine = TorchEngine(model, "cpu", mode="auto")
    assert engine.mode == "plain" and engine.info.extra["mode"] == "plain"
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert engine(x, torch.zeros(1, 1, 16, 16, dtype=torch.int32)).shape == (1, 3, 16, 16)


def test_save_comparison_with_photos(city, tmp_path):
    label, inst = scene(seed=3)
    for d in ("l", "i", "p"):
        (tmp_path / d).mkdir()
    Image.fromarray(label).save(tmp_path / "l" / "x.png")
    Image.fromarray(inst).save(tmp_path / "i" / "x.png")
    photo = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "p" / "x.png")
    res = run(tmp_path / "l", "--engine", city, "--out", tmp_path / "o", "--instances",
              tmp_path / "i", "--save-comparison", "--photos", tmp_path / "p")
    assert res.exit_code == 0, res.output
    out = np.asarray(Image.open(tmp_path / "o" / "x.png"))
    pic = np.asarray(Image.open(tmp_path / "o" / "compare" / "x.png"))
    assert pic.shape == (H, 3 * W + 4, 3)
    assert np.array_equal(pic[:, :W], CITY_COLORS[label])          # Cityscapes for 35 labels
    assert np.array_equal(pic[:, W + 2:2 * W + 2], out)
    assert np.array_equal(pic[:, 2 * W + 4:], photo)
    assert (pic[:, W:W + 2] == 255).all()
    # A missing photo fails that frame, naming the photo it looked for.
    (tmp_path / "p" / "x.png").unlink()
    res = run(tmp_path / "l", "--engine", city, "--out", tmp_path / "o3", "--instances",
              tmp_path / "i", "--save-comparison", "--photos", tmp_path / "p")
    assert res.exit_code == 1 and "x.png: no photo of this name" in res.output
    res = run(tmp_path / "l", "--engine", city, "--out", tmp_path / "o4", "--photos",
              tmp_path / "p")
    assert res.exit_code == 2 and "--photos" in res.output


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_colorize_takes_every_integer_dtype(dtype):
    ids = np.arange(256).reshape(16, 16) % 200
    want = visual_colorize(ids.astype(np.int64))
    assert np.array_equal(visual_colorize(ids.astype(dtype)), want)
    assert np.array_equal(want[0, 7], CITYSCAPES_LABELS[7][1])
    table = generated_palette(300)
    assert np.array_equal(colorize(ids.astype(dtype), table), table[ids])
    assert len({tuple(c) for c in generated_palette(64)}) == 64        # distinct colours
