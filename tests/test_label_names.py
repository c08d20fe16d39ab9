"""--label-names FILE: both formats, every fault one line naming the file and line, and the names
reaching model.pt (train, features, import-official) where `run --style car=3` finds them."""
import json

import pytest
import torch
from click.testing import CliRunner

from p2phd_infer.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from p2phd_infer.config import ModelConfig
from p2phd_infer.errors import InputError
from p2phd_infer.label_names import read_label_names
from p2phd_infer.networks import build_generator
from p2phd_infer.styles import parse_style


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_json_plain_and_with_colours(tmp_path):
    p = _write(tmp_path, "a.json", json.dumps({"26": "car", "7": "road"}))
    assert read_label_names(p, 35) == ({26: "car", 7: "road"}, None)
    p = _write(tmp_path, "b.json", json.dumps({"3": {"name": "tree", "color": [0, 255, 0]},
                                               "1": {"name": "sky"}}))
    assert read_label_names(p, 4) == ({3: "tree", 1: "sky"}, {3: [0, 255, 0]})


def test_text_format(tmp_path):
    p = _write(tmp_path, "n.txt", "# my classes\n\n0 background\n1 ego vehicle 0 0 0\n"
                                  "2 route 66\n26 car 0 0 142\n")
    names, colors = read_label_names(p, 35)
    assert names == {0: "background", 1: "ego vehicle", 2: "route 66", 26: "car"}
    assert colors == {1: [0, 0, 0], 26: [0, 0, 142]}


BAD = [
    ("range.txt", "0 a\n40 far\n", 35, ":2: label id 40 is out of range (0..34"),
    ("negative.txt", "-1 a\n", 35, ":1: label id -1 is out of range"),
    ("dup-name.txt", "1 car\n2 car\n", 35, ":2: name 'car' is given to labels 1 and 2"),
    ("dup-id.txt", "1 car\n1 bus\n", 35, ":2: label id 1 is named twice"),
    ("colour.txt", "1 car 0 0 300\n", 35, ":1: label 1: colour [0, 0, 300] must be three"),
    ("two-values.txt", "1 car 0 12\n", 35, ":1: a colour needs three values"),
    ("no-name.txt", "5\n", 35, ":1: expected `ID NAME [R G B]`"),
    ("id.txt", "x car\n", 35, ":1: label id 'x' is not an integer"),
    ("digits.txt", "1 42\n", 35, ":1: label 1: name '42' is all digits"),
    ("separator.txt", "1 a=b\n", 35, ":1: label 1: name 'a=b' holds '='"),
    ("empty.txt", "# nothing\n", 35, ": no labels in the file"),
    ("syntax.json", '{"1": "a",\n "2": }', 35, ":2: not valid JSON"),
    ("json-range.json", '{"1": "a", "99": "b"}', 35, ': entry "99": label id 99 is out of range'),
    ("json-colour.json", '{"1": {"name": "a", "color": [1, 2]}}', 35,
     ': entry "1": label 1: colour [1, 2] is not three values'),
    ("json-type.json", '{"1": 5}', 35, ': entry "1": expected a name'),
    ("json-dup.json", '{"1": "a", "1": "b"}', 35, ": entry '1' appears twice"),
    ("json-list.json", '["a"]', 35, ": expected a JSON object"),
]


@pytest.mark.parametrize("name,text,label_nc,fault", BAD, ids=[b[0] for b in BAD])
def test_bad_files_are_refused_in_one_line_naming_file_and_line(tmp_path, name, text,
                                                                 label_nc, fault):
    p = _write(tmp_path, name, text)
    with pytest.raises(InputError) as info:
        read_label_names(p, label_nc)
    msg = str(info.value)
    assert msg.startswith(str(p)) and fault in msg and "\n" not in msg, msg


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such label names file"):
        read_label_names(tmp_path / "nope.txt", 35)


def _tiny_model(path, label_nc=4):
    cfg = ModelConfig(label_nc=label_nc, use_instance=False, feat_num=0, netG="global", ngf=4,
                      n_downsample_global=1, n_blocks_global=0)
    save_checkpoint(Checkpoint(cfg, build_generator(cfg).state_dict()), path)
    return path


def test_train_stores_names_and_style_finds_them(tmp_path):
    """train --label-names: names in model.pt (torch.load weights_only=True), style by name."""
    from p2phd_infer.cli import main
    from p2phd_infer.train.scenes import make_scenes
    make_scenes(tmp_path / "d", 2, 32, 32, seed=2)
    names = _write(tmp_path, "names.json", json.dumps({"26": {"name": "auto", "color": [1, 2, 3]},
                                                        "7": "street"}))
    r = CliRunner().invoke(main, [
        "train", "--dataroot", str(tmp_path / "d"), "--checkpoints-dir", str(tmp_path),
        "--name", "n", "--no-vgg", "--ngf", "4", "--n-downsample-global", "1",
        "--n-blocks-global", "0", "--ndf", "4", "--n-layers-d", "1", "--num-d", "1",
        "--resize-or-crop", "none", "--niter", "1", "--niter-decay", "0", "--batch-size", "2",
        "--num-workers", "0", "--device", "cpu", "--no-progress", "--label-names", str(names)])
    assert r.exit_code == 0, r.output
    raw = torch.load(tmp_path / "n" / "model.pt", weights_only=True)
    assert raw["label_names"] == {26: "auto", 7: "street"}
    assert raw["label_colors"] == {26: [1, 2, 3]}
    ckpt = load_checkpoint(tmp_path / "n" / "model.pt")
    assert parse_style("auto=3,street=1", ckpt.label_names) == (None, {26: 3, 7: 1})

    # A bad file fails before any work, in one line.
    bad = _write(tmp_path, "bad.txt", "7 street\n99 sky\n")
    r = CliRunner().invoke(main, ["train", "--dataroot", str(tmp_path / "d"),
                                  "--checkpoints-dir", str(tmp_path), "--name", "bad", "--no-vgg",
                                  "--label-names", str(bad), "--device", "cpu"])
    assert r.exit_code == 2
    assert r.output.strip() == (f"error: {bad}:2: label id 99 is out of range (0..34, the "
                                f"model's label_nc is 35)")


def test_default_names_stay_cityscapes(tmp_path):
    from p2phd_infer.train.trainer import run_label_names, TrainOptions
    opts = TrainOptions(dataroot=str(tmp_path))
    names, colors = run_label_names(opts, ModelConfig(label_nc=35), None, None)
    assert names[26] == "car" and colors is None
    assert run_label_names(opts, ModelConfig(label_nc=4), None, None) == (None, None)


def test_import_official_label_names(tmp_path):
    from p2phd_infer.cli import main
    cfg = ModelConfig(label_nc=4, use_instance=False, feat_num=0, netG="global", ngf=4,
                      n_downsample_global=1, n_blocks_global=1)
    torch.save(build_generator(cfg).state_dict(), tmp_path / "latest_net_G.pth")
    names = _write(tmp_path, "n.txt", "0 sea 0 0 255\n3 land\n")
    r = CliRunner().invoke(main, ["import-official", "--generator",
                                  str(tmp_path / "latest_net_G.pth"), "--label-nc", "4",
                                  "--no-instance", "--label-names", str(names),
                                  "--out", str(tmp_path / "m.pt")])
    assert r.exit_code == 0, r.output
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt.label_names == {0: "sea", 3: "land"}
    assert ckpt.extra["label_colors"] == {0: [0, 0, 255]}
    r = CliRunner().invoke(main, ["import-official", "--generator",
                                  str(tmp_path / "latest_net_G.pth"), "--label-nc", "2",
                                  "--no-instance", "--label-names", str(names),
                                  "--out", str(tmp_path / "m2.pt")])
    assert r.exit_code == 2 and f"{names}:2: label id 3 is out of range" in r.output
    assert not (tmp_path / "m2.pt").exists()


def test_features_label_names_checked_before_encoding(tmp_path, monkeypatch):
    from p2phd_infer.cli import main
    model = _tiny_model(tmp_path / "m.pt")
    bad = _write(tmp_path, "bad.txt", "9 x\n")
    called = []
    monkeypatch.setattr("p2phd_infer.cli.features.build_dictionary",
                        lambda *a, **k: called.append(1))
    r = CliRunner().invoke(main, ["features", "--engine", str(model), "--data", str(tmp_path),
                                  "--label-names", str(bad)])
    assert r.exit_code == 2 and f"{bad}:1: label id 9 is out of range (0..3" in r.output
    assert not called
