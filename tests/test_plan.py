"""The run plan (plan.py): discovery of label maps, pairing with instance maps, output names and
the skip rule, on tiny empty-ish files (plan() reads no pixels)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2phd_infer.errors import InputError, OptionError
from p2phd_infer.plan import Job, RunOptions, discover, plan, sample_labels


def touch(root: Path, *names: str) -> None:
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def rows(found, root):
    """discover()'s rows with paths relative to root (None stays None)."""
    rel = lambda p: None if p is None else os.path.relpath(p, root)      # noqa: E731
    return [(name, rel(label), rel(inst)) for name, label, inst in found]


def test_discovery_is_recursive_sorted_and_png_only(tmp_path):
    touch(tmp_path, "labels/b.png", "labels/a.png", "labels/sub/c.png", "labels/notes.txt",
          "labels/photo.jpg")
    assert rows(discover(str(tmp_path / "labels")), tmp_path) == [
        ("a", "labels/a.png", None), ("b", "labels/b.png", None),
        ("sub/c", "labels/sub/c.png", None)]


def test_a_label_nc_0_model_also_takes_jpegs(tmp_path):
    touch(tmp_path, "in/a.png", "in/b.jpg", "in/c.JPEG", "in/d.txt")
    assert [n for n, _, _ in discover(str(tmp_path / "in"), images=True)] == ["a", "b", "c"]


def test_pairing_rules_in_order(tmp_path):
    # 1. the same relative name in --instances
    touch(tmp_path, "l/x/f.png", "i/x/f.png")
    assert rows(discover(str(tmp_path / "l"), str(tmp_path / "i")), tmp_path) == \
        [("x/f", "l/x/f.png", "i/x/f.png")]
    # 2. Cityscapes names in one folder; only the labelIds maps are frames
    touch(tmp_path, "city/a_gtFine_labelIds.png", "city/a_gtFine_instanceIds.png",
          "city/a_gtFine_color.png")
    assert rows(discover(str(tmp_path / "city")), tmp_path) == \
        [("a_gtFine_labelIds", "city/a_gtFine_labelIds.png", "city/a_gtFine_instanceIds.png")]
    # ... or its colour maps with --label-format color, paired with the same instance map
    assert rows(discover(str(tmp_path / "city"), label_format="color"), tmp_path) == \
        [("a_gtFine_color", "city/a_gtFine_color.png", "city/a_gtFine_instanceIds.png")]
    # 3. pix2pixHD sibling folders: test_label/ <-> test_inst/
    touch(tmp_path, "ds/test_label/m.png", "ds/test_inst/m.png", "ds/test_label/lonely.png")
    assert rows(discover(str(tmp_path / "ds" / "test_label")), tmp_path) == [
        ("lonely", "ds/test_label/lonely.png", None),
        ("m", "ds/test_label/m.png", "ds/test_inst/m.png")]
    # --instances is tried first: it wins over a sibling folder
    touch(tmp_path, "other/m.png")
    found = dict((n, i) for n, _, i in rows(discover(str(tmp_path / "ds" / "test_label"),
                                                     str(tmp_path / "other")), tmp_path))
    assert found == {"lonely": None, "m": "other/m.png"}


def test_one_file_is_one_frame(tmp_path):
    touch(tmp_path, "one/f.png")
    assert rows(discover(str(tmp_path / "one" / "f.png")), tmp_path) == [("f", "one/f.png", None)]


def test_bad_locations_are_named(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        discover(str(tmp_path / "nowhere"))
    touch(tmp_path, "l/a.png")
    with pytest.raises(InputError, match="instance folder does not exist"):
        discover(str(tmp_path / "l"), str(tmp_path / "nope"))


def test_outputs_are_named_by_the_relative_name_and_format(tmp_path):
    touch(tmp_path, "l/a.png", "l/sub/b.png")
    p = plan(RunOptions(labels=str(tmp_path / "l"), out=str(tmp_path / "o"), format="jpg"))
    assert p.frames == 2 and p.skipped == 0
    assert p.jobs == [Job("a", str(tmp_path / "l/a.png"), None, str(tmp_path / "o/a.jpg")),
                      Job("sub/b", str(tmp_path / "l/sub/b.png"), None,
                          str(tmp_path / "o/sub/b.jpg"))]


def test_the_skip_rule_and_overwrite(tmp_path):
    touch(tmp_path, "l/a.png", "l/b.png", "o/a.png")
    opts = RunOptions(labels=str(tmp_path / "l"), out=str(tmp_path / "o"))
    p = plan(opts)
    assert (p.frames, p.skipped, [j.name for j in p.jobs]) == (2, 1, ["b"])
    p = plan(RunOptions(labels=str(tmp_path / "l"), out=str(tmp_path / "o"), overwrite=True))
    assert (p.frames, p.skipped, [j.name for j in p.jobs]) == (2, 0, ["a", "b"])


def test_an_output_onto_an_input_or_a_file_is_refused(tmp_path):
    touch(tmp_path, "l/a.png", "f")
    with pytest.raises(OptionError, match="would overwrite an input map"):
        plan(RunOptions(labels=str(tmp_path / "l"), out=str(tmp_path / "l")))
    with pytest.raises(OptionError, match="is a file; --out is a folder"):
        plan(RunOptions(labels=str(tmp_path / "l"), out=str(tmp_path / "f")))


def test_instances_auto_pairs_nothing(tmp_path):
    touch(tmp_path, "ds/test_label/m.png", "ds/test_inst/m.png")
    p = plan(RunOptions(labels=str(tmp_path / "ds" / "test_label"), out=str(tmp_path / "o"),
                        instances="auto"))
    assert [(j.name, j.inst) for j in p.jobs] == [("m", None)]


def test_no_labels_means_the_bundled_samples_with_their_instances(tmp_path):
    p = plan(RunOptions(out=str(tmp_path / "o")))
    assert p.frames == len(list(sample_labels().glob("*.png"))) > 0
    assert all(j.inst is not None and Path(j.inst).parent.name == "instances" for j in p.jobs)
