"""The per-user cache of converted OpenVINO models and of their compiled blobs.

`$XDG_CACHE_HOME` (or ~/.cache)/p2phd-infer/openvino/<key>/
    model.xml, model.bin   the IR of one model.pt at one frame size (and precision, variant)
    entry.json             what it was made from, and the content hash of model.xml and model.bin
    compiled/              OpenVINO's compiled-model cache (CACHE_DIR) for this IR: a second
                           run imports the compiled blob instead of compiling again
    compiled.json          the content hash of each blob OpenVINO wrote there
    checked.json           what the first open of this IR found (its metadata and inputs), so
                           a later open compiles the IR by its path and OpenVINO imports the blob
                           without reading the graph and its weights

key = hash over (the checkpoint file's bytes, frame size, precision, variant, OpenVINO version,
CACHE_FORMAT): new weights, a new OpenVINO or a new layout never read an old entry. An entry is
built in a temporary folder beside it and renamed into place whole, under a lock file, so
concurrent runs (Ray actors on one machine) build it once and a reader never sees half of one.

Every use checks content, not sizes: the IR's files against the hashes in entry.json, each blob
against compiled.json (a file overwritten in place with NaN constants keeps its size and would
give black images). An entry that fails is rebuilt; a blob that fails, or that no record names
(a compile killed midway), is removed and OpenVINO compiles again. The hash is xxh3-128 (about
10 GB/s: the official generator's 730 MB of weights are checked in well under a tenth of a
second; sha256 would take 0.6 s of every start). It detects corruption, not forgery: whoever can
write this folder can also write a matching hash. The MAX_ENTRIES most recently used entries
are kept.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

from ..errors import OutputError
from ..files import is_temp_name, temp_path, write_atomic
from .openvino_cpu import openvino_version

CACHE_FORMAT = 3
# Entries kept: each is a model's fp32 weights (730 MB for the official 1024p generator), so the
# least recently used beyond this many are removed after a conversion.
MAX_ENTRIES = 8
COMPILED = "compiled"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "p2phd-infer" / "openvino"


def _hasher():
    import xxhash
    return xxhash.xxh3_128()


def content_hash(path: str | os.PathLike) -> str:
    """xxh3-128 of a file's bytes, hex (hashed from a read-only mapping: no copy)."""
    import mmap
    h = _hasher()
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
                h.update(view)
    return h.hexdigest()


_digests: dict[tuple, str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """content_hash of a file, remembered per (path, size, mtime) for this process."""
    path = Path(path).resolve()
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _digests:
        _digests[memo] = content_hash(path)
    return _digests[memo]


def _identity(path: Path) -> list[int]:
    """A file's identity without reading it: any write to it, a rename onto it or a touch
    changes its inode, size, mtime or ctime (ctime cannot be set back by a user)."""
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _record_path(path: Path, root: Path) -> Path:
    h = _hasher()
    h.update(str(path).encode())
    return root / f"{h.hexdigest()[:32]}.checkpoint.json"


def checkpoint_record(ckpt_path: str | os.PathLike, root: Path | None = None) -> dict | None:
    """What an earlier open recorded of this model.pt: its content hash ("xxh3", the cache
    key's), its engine metadata ("info": config, features, label names) and whether it has an
    encoder, while the file's identity is the one it was recorded with; None otherwise. So a
    later open neither reads nor hashes the checkpoint until it converts."""
    try:
        path = Path(ckpt_path).resolve()
        record = json.loads(_record_path(path, root or cache_root()).read_text())
        ok = isinstance(record, dict) and record.get("identity") == _identity(path) and \
            isinstance(record.get("xxh3"), str) and isinstance(record.get("info"), str) and \
            isinstance(record.get("encoder"), bool)
    except (OSError, ValueError, ImportError):
        return None
    return record if ok else None


def record_checkpoint(ckpt_path: str | os.PathLike, identity: list[int], info_json: str,
                      encoder: bool, root: Path | None = None) -> None:
    """Record, for checkpoint_record, a model.pt loaded while it had `identity`: hashed now,
    unless the file changed meanwhile (then nothing is recorded)."""
    path = Path(ckpt_path).resolve()
    root = root or cache_root()
    digest = file_digest(path)
    if _identity(path) != identity:
        return
    with contextlib.suppress(OutputError, OSError):   # read-only cache: later opens load it
        root.mkdir(parents=True, exist_ok=True)
        write_atomic(_record_path(path, root),
                     json.dumps(dict(checkpoint=str(path), identity=identity, xxh3=digest,
                                     encoder=encoder, info=info_json), indent=1) + "\n")


def cache_key(digest: str, height: int, width: int, precision: str, variant: str = "") -> str:
    """variant: what else the IR depends on (int8: the calibration set; the lookup first
    layers), "" for the plain graph."""
    text = f"{CACHE_FORMAT}|{digest}|{height}x{width}|{precision}|{variant}|{openvino_version()}"
    h = _hasher()
    h.update(text.encode())
    return h.hexdigest()[:32]


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` (a lock file), where the OS has flock."""
    try:
        import fcntl
    except ImportError:                     # Windows: the rename below is still atomic
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_dead_staging(root: Path) -> None:
    """Staging folders of builders that died (temp names whose process is gone)."""
    for entry in root.iterdir():
        if entry.is_dir() and is_temp_name(entry.name):
            try:
                pid = int(entry.name.rsplit(".p2tmp", 1)[0].rsplit(".", 1)[1].split("-")[0])
                os.kill(pid, 0)
            except ProcessLookupError:
                shutil.rmtree(entry, ignore_errors=True)
            except (ValueError, IndexError, OSError):
                pass


def _entry_ok(entry: Path, key: str | None, hashes: bool = True) -> bool:
    """The entry is the one for `key` (None: any) and its IR files hold the bytes it was
    written with (without `hashes`: their sizes only)."""
    try:
        meta = json.loads((entry / "entry.json").read_text())
        if key is not None and meta.get("key") != key:
            return False
        for name in ("model.xml", "model.bin"):
            f = entry / name
            if f.stat().st_size != meta["files"][name]["bytes"] or \
                    hashes and content_hash(f) != meta["files"][name]["xxh3"]:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def ir_intact(xml: Path) -> bool:
    """The cached IR `xml` holds the bytes its entry was written with (for cached_ir(...,
    verify=False), whose caller checks this before anything reads the IR)."""
    return _entry_ok(xml.parent, None)


def _evict(root: Path, keep: Path) -> None:
    """Remove the least recently used entries beyond MAX_ENTRIES (never `keep`). An engine that
    has one open in another process keeps reading it: its files are open or mapped."""
    def last_use(entry: Path) -> float:
        try:
            return (entry / "entry.json").stat().st_mtime
        except OSError:
            return 0.0
    entries = sorted((e for e in root.iterdir() if e.is_dir() and not is_temp_name(e.name)
                      and e != keep), key=last_use, reverse=True)
    for old in entries[MAX_ENTRIES - 1:]:
        shutil.rmtree(old, ignore_errors=True)


def cached_ir(ckpt_path: str | os.PathLike, height: int, width: int, precision: str = "fp32",
              *, make: Callable[[], object], variant: str = "", rebuild: bool = False,
              root: Path | None = None, log: Callable[[str], None] | None = None,
              what: str = "", verify: bool = True) -> Path:
    """The cached IR (.xml) of model.pt at one frame size, made now by `make()` (-> ov.Model) if
    absent, corrupted or `rebuild`; `log(message)` is told before it is made. verify=False:
    an existing entry's IR is checked by size only, and the caller checks its content with
    ir_intact before it reads the IR (an import of its checked blob does not read it)."""
    from .openvino_convert import save_ir
    root = root or cache_root()
    recorded = checkpoint_record(ckpt_path, root)
    digest = recorded["xxh3"] if recorded is not None else file_digest(ckpt_path)
    key = cache_key(digest, height, width, precision, variant)
    entry = root / key
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(root, f"cannot create the OpenVINO cache ({e.strerror or e})") from None
    with _locked(root / f".{key}.lock"):
        if not rebuild and _entry_ok(entry, key, hashes=verify):
            os.utime(entry / "entry.json")          # last use, for _evict
            return entry / "model.xml"
        _remove_dead_staging(root)
        if log is not None:
            log(f"converting {Path(ckpt_path).name} to OpenVINO{what} for {width}x{height} "
                f"frames (once; cached in {entry})")
        model = make()
        staging = temp_path(entry)
        staging.mkdir()
        try:
            save_ir(model, staging / "model.xml")
            files = {n: {"bytes": (staging / n).stat().st_size,
                         "xxh3": content_hash(staging / n)} for n in ("model.xml", "model.bin")}
            meta = {"key": key, "checkpoint": str(Path(ckpt_path).resolve()),
                    "checkpoint_xxh3": digest, "size": [height, width],
                    "precision": precision, "variant": variant,
                    "openvino": openvino_version(), "format": CACHE_FORMAT, "files": files}
            write_atomic(staging / "entry.json", json.dumps(meta, indent=1) + "\n")
            if entry.exists():
                shutil.rmtree(entry)            # corrupted or stale: replaced whole
            os.rename(staging, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _evict(root, keep=entry)
    return entry / "model.xml"


def _blob_records(entry: Path) -> dict[str, dict]:
    try:
        records = json.loads((entry / "compiled.json").read_text())
        return records if isinstance(records, dict) else {}
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def compiled_cache(xml: Path) -> Iterator[Path]:
    """The CACHE_DIR for compiling the cached IR `xml`, under the entry's lock: blobs that fail
    their recorded hash (or have none) are removed first; blobs OpenVINO writes while the caller
    compiles are recorded after."""
    entry = xml.parent
    folder = entry / COMPILED
    folder.mkdir(exist_ok=True)
    with _locked(entry.parent / f".{entry.name}.lock"):
        records = _blob_records(entry)
        kept = {}
        for blob in folder.iterdir():
            rec = records.get(blob.name)
            try:
                ok = rec is not None and blob.is_file() and \
                    blob.stat().st_size == rec["bytes"] and content_hash(blob) == rec["xxh3"]
            except (OSError, KeyError, TypeError):
                ok = False
            if ok:
                kept[blob.name] = rec
            elif blob.is_dir():
                shutil.rmtree(blob, ignore_errors=True)
            else:
                blob.unlink(missing_ok=True)
        yield folder
        for blob in folder.iterdir():
            if blob.name not in kept and blob.is_file():
                kept[blob.name] = {"bytes": blob.stat().st_size, "xxh3": content_hash(blob)}
        if kept != records:
            write_atomic(entry / "compiled.json", json.dumps(kept, indent=1) + "\n")


CHECKED = "checked.json"


def checked_graph(xml: Path) -> dict | None:
    """What the first open of the cached IR `xml` found (None: not recorded, or unreadable)."""
    try:
        record = json.loads((xml.parent / CHECKED).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("metadata"), str) or \
            not isinstance(record.get("inputs"), list):
        return None
    return record


def record_checked_graph(xml: Path, record: dict) -> None:
    write_atomic(xml.parent / CHECKED, json.dumps(record, indent=1) + "\n")
