"""Where files live: local paths, or URIs of any filesystem pyarrow opens (s3://, gs://,
hdfs://, file://). Discovery, reading and the atomic writer go through these few functions, so a
run reads and writes a bucket exactly as it does a folder. Local paths never import pyarrow.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path, PurePosixPath

from .errors import InputError, MissingDependency

PYARROW_HINT = 'pip install pyarrow (or "p2phd-infer[ray]")'


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
    """'file', 'dir' or 'missing'."""
    if not is_uri(location):
        p = Path(location)
        return "file" if p.is_file() else "dir" if p.is_dir() else "missing"
    from pyarrow import fs as pafs
    fs, path, _ = FILESYSTEMS.split(location)
    t = fs.get_file_info(path).type
    return "file" if t == pafs.FileType.File else "dir" if t == pafs.FileType.Directory \
        else "missing"


def list_files(root: str) -> list[str]:
    """Every file under the folder `root`, recursively, as locations of root's kind, sorted.
    Hidden names (a leading dot: temporary files, editors' files) are left out."""
    if not is_uri(root):
        out = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            out += [os.path.join(dirpath, f) for f in filenames if not f.startswith(".")]
        return sorted(out)
    from pyarrow import fs as pafs
    fs, path, prefix = FILESYSTEMS.split(root)
    found = fs.get_file_info(pafs.FileSelector(path.rstrip("/"), recursive=True,
                                               allow_not_found=True))
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
    try:
        if not is_uri(location):
            with open(location, "rb") as f:
                return f.read()
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


def resolve(location: str | os.PathLike) -> str:
    """An absolute local path, or the URI as given."""
    return str(location) if is_uri(location) else str(Path(location).resolve())
