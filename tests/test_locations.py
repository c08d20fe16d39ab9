"""locations.py's contract for local folders: discovery lists each folder once whatever links
lead into it, never enters /proc, /sys or /dev, stops with a clear error past a bound; reading
takes regular files only and never blocks on a FIFO."""
from __future__ import annotations

import os
import threading

import pytest

from p2phd_infer.errors import InputError
from p2phd_infer.locations import check_regular, kind, list_files, read_bytes
from helpers import char_device


def _tree(tmp_path):
    root = tmp_path / "labels"
    (root / "a").mkdir(parents=True)
    (root / "a" / "1.png").write_bytes(b"x")
    (root / "2.png").write_bytes(b"y")
    (root / ".hidden.png").write_bytes(b"z")
    return root


def test_lists_files_sorted_without_hidden(tmp_path):
    root = _tree(tmp_path)
    assert list_files(str(root)) == [str(root / "2.png"), str(root / "a" / "1.png")]


def test_links_to_dot_do_not_multiply(tmp_path):
    root = _tree(tmp_path)
    for name in ("l1", "l2", "l3"):          # os.walk(followlinks=True) goes exponential here
        (root / name).symlink_to(".")
    (root / "a" / "up").symlink_to("..")
    assert list_files(str(root)) == [str(root / "2.png"), str(root / "a" / "1.png")]


def test_link_loop_yields_each_file_once(tmp_path):
    base = tmp_path / "l"
    base.mkdir()
    (base / "f.png").write_bytes(b"x")
    (base / "self").symlink_to("../l")       # was 40 levels deep, one "frame" per level
    assert list_files(str(base)) == [str(base / "f.png")]


def test_link_to_root_does_not_enter_proc(tmp_path):
    root = tmp_path / "labels"
    root.mkdir()
    (root / "p").symlink_to("/proc")
    (root / "d").symlink_to("/dev")
    (root / "f.png").write_bytes(b"x")
    assert list_files(str(root)) == [str(root / "f.png")]


def test_link_to_slash_is_bounded(tmp_path):
    root = tmp_path / "labels"
    root.mkdir()
    (root / "all").symlink_to("/")
    with pytest.raises(InputError, match=r"holds more than 2,000 files and folders") as e:
        list_files(str(root), max_entries=2000)
    assert str(root) in str(e.value) and "\n" not in str(e.value)


def test_fifo_is_listed_but_reading_refuses_without_blocking(tmp_path):
    root = tmp_path / "labels"
    root.mkdir()
    os.mkfifo(root / "frame.png")
    assert list_files(str(root)) == [str(root / "frame.png")]
    assert kind(str(root / "frame.png")) == "file"
    done = []

    def read():
        try:
            read_bytes(root / "frame.png")
        except InputError as e:
            done.append(str(e))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(10)
    assert done and "is a FIFO (named pipe), not a regular file" in done[0]


def test_check_regular_names_what_it_is(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    assert check_regular(tmp_path / "f").st_size == 0
    with pytest.raises(InputError, match="is a folder"):
        check_regular(tmp_path)
    with pytest.raises(InputError, match="no such palette"):
        check_regular(tmp_path / "nope", "palette")
    with pytest.raises(InputError, match="is a character device, not a regular file"):
        read_bytes(char_device(tmp_path / "null"))
