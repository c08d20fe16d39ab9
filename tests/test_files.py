"""files.py's contract: the one atomic writer never leaves a partial file, and never replaces
what is not a regular file (a folder, a symbolic link, a device, a FIFO, a socket); streams are
written to only where the writer allows them."""
from __future__ import annotations

import os
import socket
import stat

import pytest

from p2phd_infer.errors import OutputError
from p2phd_infer.files import check_writable, is_temp_name, write_atomic
from helpers import char_device


def _leftovers(folder):
    return [n for n in os.listdir(folder) if is_temp_name(n)]


def test_writes_bytes_text_and_by_function(tmp_path):
    write_atomic(tmp_path / "a.bin", b"\x00\x01")
    write_atomic(tmp_path / "sub" / "b.txt", "text")
    write_atomic(tmp_path / "c.dat", lambda tmp: tmp.write_bytes(b"made"))
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "b.txt").read_text() == "text"
    assert (tmp_path / "c.dat").read_bytes() == b"made"
    write_atomic(tmp_path / "a.bin", b"again")            # a regular file is replaced
    assert (tmp_path / "a.bin").read_bytes() == b"again"
    assert _leftovers(tmp_path) == []


def test_a_failed_writer_leaves_nothing(tmp_path):
    def broken(tmp):
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="No space left"):
        write_atomic(tmp_path / "x.png", broken)
    assert os.listdir(tmp_path) == []


def test_character_device_is_refused_not_replaced(tmp_path):
    dev = char_device(tmp_path / "null")
    for call in (lambda: write_atomic(dev, b"x"), lambda: check_writable(dev)):
        with pytest.raises(OutputError, match="is a character device, not a regular file") as e:
            call()
        assert str(dev) in str(e.value) and "\n" not in str(e.value)
    assert stat.S_ISCHR(os.lstat(dev).st_mode)
    assert _leftovers(tmp_path) == []


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "summary.json"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match=r"is a FIFO \(named pipe\), not a regular file"):
        write_atomic(fifo, "{}")
    with pytest.raises(OutputError, match="FIFO"):
        check_writable(fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_symlink_is_refused_and_its_target_kept(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "out.png"
    link.symlink_to(target)
    with pytest.raises(OutputError, match="is a symbolic link, not a regular file"):
        write_atomic(link, b"image")
    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="symbolic link"):
        write_atomic(dangling, b"image")
    assert link.is_symlink() and target.read_text() == "keep me"
    assert not (tmp_path / "nowhere").exists()


def test_socket_and_folder_are_refused(tmp_path):
    sock_path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        with pytest.raises(OutputError, match="is a socket, not a regular file"):
            write_atomic(sock_path, b"x")
    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        write_atomic(tmp_path / "d", b"x")


def test_streams_only_where_allowed(tmp_path, capsys, monkeypatch):
    write_atomic("-", '{"a": 1}\n', streams=True)
    write_atomic("/dev/stdout", b"bytes\n", streams=True)
    check_writable("-", streams=True)
    assert capsys.readouterr().out == '{"a": 1}\nbytes\n'
    # Without streams, "-" is a file name in the working folder, as for any other writer.
    monkeypatch.chdir(tmp_path)
    write_atomic("-", b"file")
    assert (tmp_path / "-").read_bytes() == b"file"
    with pytest.raises(OutputError, match="stream"):
        write_atomic("-", lambda tmp: None, streams=True)
