"""Where files live: local paths, or URIs of any filesystem pyarrow opens (s3://, gs://,
hdfs://, file://). Discovery, reading and the atomic writer go through these few functions, so a
run reads and writes a bucket exactly as it does a folder. Local paths never import pyarrow.
"""
from __future__ import annotations

import os
import stat
import threading
from pathlib import Path, PurePosixPath

from .errors import InputError, MissingDependency

PYARROW_HINT = 'pip install pyarrow (or "p2phd-infer[ray]")'
# Discovery stops with an error past this many entries (files and folders): far above any
# dataset folder (Cityscapes' train split is 2,975 frames), far below a whole filesystem.
MAX_ENTRIES = 1_000_000
# Kernel filesystems a labels folder can lead into through a link (to `/`, say): never walked.
PSEUDO_FOLDERS = ("/proc", "/sys", "/dev")


def is_uri(location: str | os.PathLike | None) -> bool:
    return location is not None and "://" in str(location)


def join(base: str, rel: str) -> str:
    if is_uri(base):
        return base.rstrip("/") + "/" + rel
    return str(Path(base) / rel)


def parent(location: str) -> str:
    if is_uri(location):
        return location.rstrip("/").rsplit("/", 1)[0]
    return str(Path(location).parent)


def basename(location: str) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1] if is_uri(location) else \
        Path(location).name


class _Filesystems:
    """pyarrow filesystems by URI, one client per scheme and authority (an S3 client is slow to
    make); safe to share between threads."""

    def __init__(self):
        self._known: dict[str, tuple[object, str]] = {}
        self._lock = threading.Lock()

    def split(self, uri: str):
        """(filesystem, path inside it, the URI prefix that goes before such paths)."""
        try:
            from pyarrow import fs as pafs
        except ImportError:
            raise MissingDependency(uri, f"URIs need pyarrow: {PYARROW_HINT}") from None
        scheme, rest = uri.split("://", 1)
        authority = f"{scheme}://{rest.split('/', 1)[0]}"
        with self._lock:
            known = self._known.get(authority)
        if known is not None and uri.startswith(known[1]):
            return known[0], uri[len(known[1]):], known[1]
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
        except Exception as e:  # noqa: BLE001 - unknown scheme, bad bucket, no credentials
            raise InputError(uri, f"cannot open this filesystem ({e.__class__.__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from None
        prefix = uri[: len(uri) - len(path)] if uri.endswith(path) else authority
        if uri.endswith(path) and "?" not in uri:
            with self._lock:
                self._known[authority] = (fs, prefix)
        return fs, path, prefix


FILESYSTEMS = _Filesystems()


def kind(location: str) -> str:
    """'file', 'dir' or 'missing'. Anything that exists and is not a folder (a FIFO, a device)
    is a 'file' here: reading it is refused with what it is (read_bytes), never blocks."""
    if not is_uri(location):
        try:
            st = os.stat(location)
        except (OSError, ValueError):
            return "missing"
        return "dir" if stat.S_ISDIR(st.st_mode) else "file"
    from pyarrow import fs as pafs
    fs, path, _ = FILESYSTEMS.split(location)
    t = fs.get_file_info(path).type
    return "file" if t == pafs.FileType.File else "dir" if t == pafs.FileType.Directory \
        else "missing"


def describe_mode(mode: int) -> str:
    """What a file of this st_mode is, for messages: "a FIFO (named pipe)", "a folder", ..."""
    for test, what in ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file" if not stat.S_ISREG(mode) else "a regular file"


def what_is(path: str | os.PathLike) -> str:
    """"a file", "a folder", "a character device", ... for a local path that exists."""
    st = os.stat(path)
    return "a file" if stat.S_ISREG(st.st_mode) else describe_mode(st.st_mode)


def check_regular(path: str | os.PathLike, what: str = "file", error=InputError) -> os.stat_result:
    """os.stat of a local file about to be read; `error(path, fault)` if it is missing or is not
    a regular file (a folder, FIFO, device, socket), so nothing opens a FIFO and blocks."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(path, f"no such {what}") from None
    except OSError as e:
        raise error(path, f"cannot be read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(path, f"is a folder, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise error(path, f"is {describe_mode(st.st_mode)}, not a regular file")
    return st


def _pseudo(top: os.stat_result) -> tuple[set[tuple[int, int]], set[int]]:
    """The (device, inode) of /proc, /sys and /dev, and the devices of those on their own
    filesystem (so none of their subfolders is entered either, whatever link leads there); the
    folder being walked is never among them."""
    keys, devs = set(), set()
    for p in PSEUDO_FOLDERS:
        try:
            st = os.stat(p)
        except OSError:
            continue
        keys.add((st.st_dev, st.st_ino))
        if st.st_dev != _ROOT_DEV:
            devs.add(st.st_dev)
    return keys - {(top.st_dev, top.st_ino)}, devs - {top.st_dev}


try:
    _ROOT_DEV = os.stat("/").st_dev
except OSError:  # pragma: no cover - no root folder
    _ROOT_DEV = -1


def _walk_local(root: str, max_entries: int) -> list[str]:
    """Every non-folder entry under `root`, following links to folders, each folder once (by
    device and inode: a link loop or a link to `.` is walked once), never into /proc, /sys or
    /dev; InputError past `max_entries` entries."""
    try:
        top = os.stat(root)
    except OSError as e:
        raise InputError(root, f"cannot be read ({e.strerror or e})") from None
    seen, skip_devs = _pseudo(top)
    seen.add((top.st_dev, top.st_ino))
    out: list[str] = []
    stack = [root]
    count = 0
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")),
                                 key=lambda e: e.name)
        except OSError:
            continue                       # unreadable folder: nothing to find in it
        subfolders = []
        for e in entries:
            count += 1
            if count > max_entries:
                raise InputError(root, f"holds more than {max_entries:,} files and folders; "
                                       f"discovery stopped (a link to `/` or a whole disk?): "
                                       f"give the folder of the label maps")
            try:
                st = e.stat()              # follows links
            except OSError:
                out.append(e.path)         # a broken link: reading it says so
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in seen or st.st_dev in skip_devs:
                    continue
                seen.add(key)
                subfolders.append(e.path)
            else:
                out.append(e.path)         # FIFOs and devices too: reading refuses them
        stack.extend(reversed(subfolders))
    return out


def list_files(root: str, max_entries: int | None = None) -> list[str]:
    """Every file under the folder `root`, recursively, as locations of root's kind, sorted.
    Hidden names (a leading dot: temporary files, editors' files) are left out. Local folders:
    links are followed but each folder is listed once, /proc, /sys and /dev are never entered,
    and more than `max_entries` (MAX_ENTRIES) entries is an InputError naming `root`."""
    limit = MAX_ENTRIES if max_entries is None else max_entries
    if not is_uri(root):
        return sorted(_walk_local(root, limit))
    from pyarrow import fs as pafs
    fs, path, prefix = FILESYSTEMS.split(root)
    found = fs.get_file_info(pafs.FileSelector(path.rstrip("/"), recursive=True,
                                               allow_not_found=True))
    if len(found) > limit:
        raise InputError(root, f"holds more than {limit:,} files and folders; give the folder "
                               f"of the label maps")
    return sorted(prefix + f.path for f in found if f.type == pafs.FileType.File
                  and not any(part.startswith(".") for part in
                              PurePosixPath(f.path[len(path.rstrip("/")):]).parts))


def existing(locations: list[str]) -> set[str]:
    """The ones that are files; one listing call per filesystem for URIs."""
    local = {x for x in locations if not is_uri(x) and os.path.isfile(x)}
    uris = [x for x in locations if is_uri(x)]
    if not uris:
        return local
    from pyarrow import fs as pafs
    by_fs: dict[int, tuple[object, list[tuple[str, str]]]] = {}
    for u in uris:
        fs, path, _ = FILESYSTEMS.split(u)
        by_fs.setdefault(id(fs), (fs, []))[1].append((u, path))
    for fs, items in by_fs.values():
        for (u, _), info in zip(items, fs.get_file_info([p for _, p in items])):
            if info.type == pafs.FileType.File:
                local.add(u)
    return local


def read_bytes(location: str | os.PathLike) -> bytes:
    """The file's bytes; InputError naming it when it cannot be read."""
    if not is_uri(location):
        return _read_local(location)
    try:
        fs, path, _ = FILESYSTEMS.split(str(location))
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise InputError(location, "no such file") from None
    except IsADirectoryError:
        raise InputError(location, "is a folder, not a file") from None
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - permissions, network
        raise InputError(location, f"could not be read ({e.__class__.__name__}: "
                                   f"{getattr(e, 'strerror', None) or e})") from None


def _read_local(path: str | os.PathLike) -> bytes:
    # Checked before the open, and opened without blocking, then checked again on the open file:
    # a FIFO (or a file swapped for one in between) is refused, never waited on.
    check_regular(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise InputError(path, f"could not be read ({e.strerror or e})") from None
    with open(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise InputError(path, f"is {describe_mode(mode)}, not a regular file")
        try:
            return f.read()
        except OSError as e:
            raise InputError(path, f"could not be read ({e.strerror or e})") from None


def resolve(location: str | os.PathLike) -> str:
    """An absolute local path, or the URI as given."""
    return str(location) if is_uri(location) else str(Path(location).resolve())
