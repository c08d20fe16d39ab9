"""The one atomic writer: every file this project writes goes through here.

A write goes to a unique temporary name in the target's folder (so the final rename is atomic on
that filesystem), and is renamed over the target only when complete: a reader, a resumed run or
a concurrent writer of the same target never sees a partial file, and the last writer wins. On
any failure the temporary file is removed and the error names the target.

A target that exists and is not a regular file (a folder, a symbolic link, a device such as
/dev/null, a FIFO, a socket) is refused, never replaced: the rename would turn /dev/null into a
file, or a link into a copy. Writers that take a stream (`--summary-json -`) pass `streams=True`:
"-", /dev/stdout and /dev/stderr are then written to as they are.

Temporary names are `.<start of the name>.<pid>-<random>.p2tmp`: unique per write (threads and
processes), short enough for a 255-byte target name, and recognisable, so a rerun can remove the
ones a killed process left (`remove_stale_temps`), never a live writer's.
"""
from __future__ import annotations

import os
import re
import stat
import sys
import uuid
from pathlib import Path
from typing import Callable

from .errors import OutputError
from .locations import FILESYSTEMS, describe_mode, is_uri

TEMP_SUFFIX = ".p2tmp"
_TEMP_RE = re.compile(r"^\..*\.(\d+)-[0-9a-f]{8}" + re.escape(TEMP_SUFFIX) + r"(\.[A-Za-z0-9]+)?$")
_NAME_KEEP = 32       # bytes of the target's name kept in its temporary name
STREAMS = {"-": "stdout", "/dev/stdout": "stdout", "/dev/stderr": "stderr"}


def temp_path(path: str | os.PathLike, suffix: str = "") -> Path:
    """A fresh temporary name beside `path`. `suffix` (".onnx", ".pt2") is for writers that
    infer the format from the name."""
    path = Path(path)
    stem = path.name.encode()[:_NAME_KEEP].decode(errors="ignore")
    return path.with_name(f".{stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}{suffix}")


def is_temp_name(name: str) -> bool:
    return _TEMP_RE.match(name) is not None


def is_stream(path: str | os.PathLike) -> bool:
    """"-", /dev/stdout or /dev/stderr: written to as a stream where a writer allows it."""
    return str(path) in STREAMS


def refuse_special(path: str | os.PathLike) -> None:
    """OutputError if `path` exists and is not a regular file (the link itself is looked at,
    not what it points to)."""
    try:
        st = os.lstat(path)
    except (OSError, ValueError):
        return                  # missing (or unreachable: the write will say why)
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(path, "is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(path, f"is {describe_mode(st.st_mode)}, not a regular file; an output "
                                f"never replaces one (remove it or choose another path)")


def write_atomic(path: str | os.PathLike, data: bytes | str | Callable[[Path], None], *,
                 suffix: str = "", make_parents: bool = True, streams: bool = False) -> None:
    """Write `data` (bytes, text, or a function that writes a file at the path it is given) to
    `path` atomically. OutputError naming `path` on any failure; nothing is left behind. A
    `path` that exists and is not a regular file is refused (refuse_special); with `streams`,
    "-", /dev/stdout and /dev/stderr are written to as streams instead.
    `path` may be a URI (locations.py): the same temporary name and move on that filesystem."""
    if streams and is_stream(path):
        return _write_stream(str(path), data)
    if is_uri(path):
        return _write_uri(str(path), data)
    path = Path(path)
    refuse_special(path)
    try:
        if make_parents:
            path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(path, f"cannot create its folder ({e.strerror or e})") from None
    tmp = temp_path(path, suffix)
    try:
        if callable(data):
            data(tmp)
            if not tmp.is_file():
                raise OutputError(path, "the writer produced no file")
        else:
            with open(tmp, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(path, f"cannot be written ({e.strerror or e})") from None
    finally:
        if os.path.lexists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _write_stream(name: str, data) -> None:
    stream = getattr(sys, STREAMS[name])
    if callable(data):
        raise OutputError(name, "only bytes or text can be written to a stream")
    try:
        if isinstance(data, str):
            stream.write(data)
        elif getattr(stream, "buffer", None) is not None:
            stream.flush()
            stream.buffer.write(data)
        else:
            stream.write(data.decode())
        stream.flush()
    except (OSError, ValueError) as e:
        raise OutputError(name, f"cannot be written ({getattr(e, 'strerror', None) or e})") \
            from None


def check_writable(path: str | os.PathLike, *, streams: bool = False) -> None:
    """OutputError now, before any slow work, if `path` could not be written later (with
    `streams`, as write_atomic, "-", /dev/stdout and /dev/stderr always can)."""
    if streams and is_stream(path):
        return
    path = Path(path)
    refuse_special(path)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(path, f"{parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(path, f"folder {parent} is not writable")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = True) -> int:
    """Remove temporary files of this project's writers that died (their process is gone);
    live writers' files are kept. Returns how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    walk = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for root, _, names in walk:
        for name in names:
            m = _TEMP_RE.match(name)
            if m and not _pid_alive(int(m.group(1))):
                try:
                    os.unlink(os.path.join(root, name))
                    removed += 1
                except OSError:
                    pass
    return removed


def _write_uri(uri: str, data) -> None:
    fs, path, _ = FILESYSTEMS.split(uri)
    parent, _, name = path.rpartition("/")
    tmp = f"{parent}/{temp_path(name).name}"
    try:
        if callable(data):
            raise OutputError(uri, "only bytes can be written to a URI")
        fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(tmp) as f:
            f.write(data.encode() if isinstance(data, str) else data)
        fs.move(tmp, path)
    except OutputError:
        raise
    except Exception as e:  # noqa: BLE001 - permissions, network, quota
        try:
            fs.delete_file(tmp)
        except Exception:  # noqa: BLE001 - it may never have been created
            pass
        raise OutputError(uri, e) from None


def remove_temps_of(outputs: list[str]) -> int:
    """Remove the temporary files beside these outputs (local paths or URIs) whatever their
    writer: only once every writer of a job has finished (the Ray executor's last step)."""
    by_dir: dict[str, set[str]] = {}
    for out in outputs:
        head, _, name = str(out).rstrip("/").rpartition("/")
        by_dir.setdefault(head, set()).add(name.encode()[:_NAME_KEEP].decode(errors="ignore"))
    removed = 0
    for head, stems in by_dir.items():
        if is_uri(head):
            from pyarrow import fs as pafs
            fs, path, _ = FILESYSTEMS.split(head + "/")
            entries = [(i.base_name, i.path) for i in fs.get_file_info(
                pafs.FileSelector(path.rstrip("/"), allow_not_found=True))]
            delete = fs.delete_file
        else:
            try:
                entries = [(e.name, e.path) for e in os.scandir(head)]
            except OSError:
                continue
            delete = os.unlink
        for base, full in entries:
            if is_temp_name(base) and base[1:].rsplit(".", 2)[0] in stems:
                try:
                    delete(full)
                    removed += 1
                except Exception:  # noqa: BLE001 - already gone
                    pass
    return removed
