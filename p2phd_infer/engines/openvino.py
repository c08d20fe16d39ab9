"""OpenVINO engine: our generator (or style) graph through OpenVINO's CPU plugin.

Two ways in:

- OpenvinoEngine(file): an `.onnx` written by `p2phd-infer export --format onnx`, or an OpenVINO
  IR `.xml` (+ `.bin` beside it) written by `export --format openvino`. The metadata document
  (base.py) comes from the ONNX metadata_props (OpenVINO's ONNX reader keeps them in the model's
  rt_info under "framework") or from the IR's rt_info under METADATA_KEY.
- OpenvinoModelEngine(model.pt): what `run` uses on a CPU (open_openvino). A converted graph has
  a fixed frame size and a folder may hold several, so the IR for a size is made on first use of
  that size (cached_ir) and kept open.

Conversion (convert_module): OpenVINO's PyTorch frontend traces the same module the exporters
export (the Synthesizer: one-hot and edges inside), at batch 1 and one frame size, with int32
`label`/`inst` and float `feat` inputs. It runs here, not through export/onnx_export.py, because
`run` (and each Ray actor) converts, and the runtime and engine layers may not import the export
layer (tests/test_architecture.py). The IR keeps fp32 weights (ov.save_model would halve them to
fp16 by default): the precision is chosen when the engine compiles it, so one IR serves both.

Cache: `$XDG_CACHE_HOME` (or ~/.cache)/p2phd-infer/openvino/<key>/{model.xml, model.bin,
entry.json}, key = sha256 over (the checkpoint file's bytes, frame size, precision, OpenVINO
version, CACHE_FORMAT): new weights, a new OpenVINO or a new layout never read an old entry. An
entry is built in a temporary folder beside it and renamed into place whole, under a lock file,
so concurrent runs (Ray actors on one machine) build it once and a reader never sees half of
one; an entry that fails to load is removed and rebuilt; the MAX_ENTRIES most recently used are
kept.

Every frame is its own inference request on a graph at batch 1: a frame's image never depends on
how many frames share its batch (oneDNN picks kernels by shape, so a batch-4 graph can round
differently from a batch-1 graph). `streams` > 1 keeps that many frames in flight
(AsyncInferQueue) with cores/streams threads each; the default is 1 stream with every core,
because the thread count of a stream changes a frame's last bits (measured: up to 1e-5), and the
image must not depend on --batch-size.

precision: fp32 (INFERENCE_PRECISION_HINT f32: OpenVINO would otherwise pick bf16 by itself on a
CPU that has it) or bf16, only where the CPU plugin reports native BF16 in
OPTIMIZATION_CAPABILITIES (AVX512-BF16 or AMX); elsewhere OpenVINO would emulate it slower than
fp32, so it is refused. fp16 is refused on a CPU, as the PyTorch engine refuses it
(engines/pytorch.py): it buys no speed without AVX512-FP16, and mapping it silently to bf16 would
hand back other numbers than asked for.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import EngineError, MissingDependency, OptionError, OutputError
from ..files import is_temp_name, temp_path, write_atomic
from .base import METADATA_KEY, Engine, EngineInfo, check_graph, info_from_json, info_to_json, \
    resolve_device

PRECISIONS = ("fp32", "bf16")
OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
INT_INPUTS = ("label", "inst", "style_inst")
SUFFIXES = (".onnx", ".xml")


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise MissingDependency("openvino", "OpenVINO engines need it: pip install openvino") \
            from None
    return openvino


_core = None
_core_lock = threading.Lock()


def core():
    """One OpenVINO Core per process (it holds the loaded CPU plugin)."""
    global _core
    with _core_lock:
        if _core is None:
            _core = import_openvino().Core()
        return _core


def openvino_version() -> str:
    return import_openvino().get_version()


def cpu_capabilities() -> set[str]:
    return {str(c) for c in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")}


def cpu_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:          # not Linux
        return max(1, os.cpu_count() or 1)


def check_precision(precision: str) -> None:
    """OptionError for a precision the OpenVINO CPU engine does not run on this CPU."""
    if precision not in PRECISIONS:
        why = ("fp16 on a CPU is refused (no speed without AVX512-FP16, and not the bf16 it "
               "could be mapped to); use fp32 or bf16") if precision == "fp16" else \
            f"one of {', '.join(PRECISIONS)}"
        raise OptionError("--precision", f"{precision!r} for the OpenVINO engine: {why}")
    if precision == "bf16" and "BF16" not in cpu_capabilities():
        raise OptionError("--precision", "bf16: this CPU has no native BF16 (OpenVINO's CPU "
                                         "plugin reports " + ", ".join(sorted(cpu_capabilities()))
                          + "); use fp32")


def check_device(device) -> torch.device:
    if device is not None and not (isinstance(device, str) and device.strip() == "auto"):
        dev = resolve_device(device)
        if dev.type != "cpu":
            raise OptionError("--device", f"{device!r}: the OpenVINO engine runs on the CPU")
    return torch.device("cpu")


def read_metadata(model, path: Path) -> str:
    """The metadata JSON of an OpenVINO model read from our ONNX file or our IR."""
    for key in ([METADATA_KEY], ["framework", METADATA_KEY]):
        if model.has_rt_info(key):
            return str(model.get_rt_info(key).astype(str))
    raise EngineError(path, "no p2phd-infer metadata in this model (export it with "
                            "`p2phd-infer export --format openvino` or `--format onnx`)")


class OpenvinoEngine(Engine):
    """An `.onnx` or `.xml` engine file on the OpenVINO CPU plugin (see the module doc).

    streams: CPU streams, i.e. frames computed at once (default 1: every core on one frame, the
    fastest for `run`'s default batch of 1 and no slower per frame for larger batches on a few
    cores); threads: threads in all (default: the cores this process may use)."""

    def __init__(self, path: str | os.PathLike, device=None, *, precision: str = "fp32",
                 streams: int | None = None, threads: int | None = None):
        self.path = Path(path)
        self.device = check_device(device)
        check_precision(precision)
        if self.path.suffix.lower() not in SUFFIXES:
            raise EngineError(self.path, f"not an OpenVINO engine file ({', '.join(SUFFIXES)})")
        if not self.path.is_file():
            raise EngineError(self.path, "no such engine file" if not self.path.exists()
                              else "not a file")
        if self.path.suffix.lower() == ".xml" and not self.path.with_suffix(".bin").is_file():
            raise EngineError(self.path, f"its weights {self.path.with_suffix('.bin').name} are "
                                         f"missing (an IR is the .xml and the .bin beside it)")
        ov = import_openvino()
        try:
            model = core().read_model(str(self.path))
        except Exception as e:  # noqa: BLE001 - any reader fault is a bad file
            first = (str(e).strip().splitlines() or [""])[0]
            raise EngineError(self.path, f"not a readable OpenVINO/ONNX model "
                                         f"({e.__class__.__name__}: {first})") from None
        info = info_from_json(read_metadata(model, self.path), self.path)
        check_graph(self.path, info, [[d.get_length() if d.is_static else -1 for d in
                                       op.input(1).get_partial_shape()] for op in model.get_ops()
                                      if op.get_type_name() in ("Convolution",
                                                                "ConvolutionBackpropData")])
        self.input_names = [p.get_any_name() for p in model.inputs]
        if "label" not in self.input_names or len(model.outputs) != 1:
            raise EngineError(self.path, f"not a p2phd-infer graph (inputs {self.input_names}, "
                                         f"{len(model.outputs)} outputs)")
        if info.size is None:
            raise EngineError(self.path, "the metadata names no frame size")
        self._reshape_batch1(model, info.size)
        self.streams = max(1, int(streams or 1))
        cores = cpu_cores()
        self.threads = max(self.streams, int(threads or cores))
        config = {"INFERENCE_PRECISION_HINT": OV_PRECISION[precision],
                  "NUM_STREAMS": str(self.streams),
                  "INFERENCE_NUM_THREADS": str(self.threads)}
        try:
            self.compiled = core().compile_model(model, "CPU", config)
        except Exception as e:  # noqa: BLE001 - an op the plugin cannot run, out of memory
            first = (str(e).strip().splitlines() or [""])[0]
            raise EngineError(self.path, f"OpenVINO could not compile it for the CPU "
                                         f"({e.__class__.__name__}: {first})") from None
        self._request = self.compiled.create_infer_request()
        self._queue = None                      # made on the first batch of several frames
        self._lock = threading.Lock()
        # Every batch is split into frames here, so any batch size works.
        info.max_batch = None
        info.precision = precision
        info.backend = "openvino"
        info.extra.update(openvino=ov.get_version(), streams=self.streams, threads=self.threads,
                          source=self.path.suffix.lower().lstrip("."))
        self.info = info

    def _reshape_batch1(self, model, size: tuple[int, int]) -> None:
        shapes = {}
        for port in model.inputs:
            shape = port.get_partial_shape()
            dims = [1] + [d.get_length() if d.is_static else None for d in list(shape)[1:]]
            if len(dims) != 4:
                raise EngineError(self.path, f"input {port.get_any_name()} has rank {len(dims)}, "
                                             f"expected 4")
            dims[2:] = [d if d is not None else s for d, s in zip(dims[2:], size)]
            shapes[port.get_any_name()] = dims
        try:
            model.reshape(shapes)
        except Exception as e:  # noqa: BLE001 - a graph that cannot take batch 1
            raise EngineError(self.path, f"cannot fix the batch at 1 ({e.__class__.__name__}: "
                                         f"{str(e).splitlines()[0] if str(e) else ''})") from None

    # --- the Engine interface ------------------------------------------------------------------

    def __call__(self, label: torch.Tensor, inst: torch.Tensor,
                 feat: torch.Tensor | None = None) -> torch.Tensor:
        return self._run(self.generator_feeds(label, inst, feat, "feat" in self.input_names))

    def style(self, label: torch.Tensor, inst: torch.Tensor, style_image: torch.Tensor,
              style_inst: torch.Tensor) -> torch.Tensor:
        """Style from an example photo (style graphs), as engines/onnx.py."""
        return self._run(self.style_feeds(label, inst, style_image, style_inst))

    # --- running -------------------------------------------------------------------------------

    def _arrays(self, feeds: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise EngineError(self.path, f"graph inputs {missing} were not given")
        out = {}
        for n in self.input_names:
            dtype = torch.int32 if n in INT_INPUTS else torch.float32
            out[n] = feeds[n].detach().to("cpu", dtype).contiguous().numpy()
        return out

    def _run(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        arrays = self._arrays(feeds)
        B = arrays["label"].shape[0]
        H, W = arrays["label"].shape[-2:]
        frames = [{n: a[i:i + 1] for n, a in arrays.items()} for i in range(B)]
        out = np.empty((B, self.config.output_nc, H, W), dtype=np.float32)
        with self._lock:
            if B == 1 or self.streams == 1:
                for i, frame in enumerate(frames):
                    out[i] = self._request.infer(frame)[0][0]
            else:
                self._run_async(frames, out)
        return torch.from_numpy(out)

    def _run_async(self, frames: list[dict[str, np.ndarray]], out: np.ndarray) -> None:
        ov = import_openvino()
        if self._queue is None:
            self._queue = ov.AsyncInferQueue(self.compiled, self.streams)

        def done(request, i):
            # The request's output buffer is reused by its next frame: copy it out now.
            out[i] = request.get_output_tensor(0).data[0]

        self._queue.set_callback(done)
        for i, frame in enumerate(frames):
            self._queue.start_async(frame, userdata=i)
        self._queue.wait_all()


class OpenvinoModelEngine(Engine):
    """A model.pt through OpenVINO: one OpenvinoEngine per frame size, from `build(H, W)` (a
    path to the size's `.xml`; `build(H, W, rebuild=True)` converts again), made on first use of
    that size (see the module doc).

    Carries what the runtime and the styles need from the checkpoint: config, features, label
    names and the encoder (for `--style-image`, which runs it once in PyTorch)."""

    def __init__(self, path: str | os.PathLike, build: Callable[[int, int], Path], device=None,
                 *, precision: str = "fp32", streams: int | None = None,
                 checkpoint=None):
        from ..checkpoint import load_checkpoint
        self.path = Path(path)
        self.device = check_device(device)
        import_openvino()
        check_precision(precision)
        ckpt = checkpoint if checkpoint is not None else load_checkpoint(self.path)
        self.checkpoint = ckpt
        self.build = build
        self.precision = precision
        self.streams = streams
        self.encoder = ckpt.build_encoder()
        if self.encoder is not None:
            self.encoder = self.encoder.eval()
        self.info = EngineInfo(ckpt.config, ckpt.features, ckpt.label_names, precision=precision,
                               backend="openvino",
                               extra=dict(mode="openvino", openvino=openvino_version(),
                                          source="pt", sizes=[]))
        self._engines: dict[tuple[int, int], OpenvinoEngine] = {}
        self._lock = threading.Lock()

    def engine_for(self, height: int, width: int) -> OpenvinoEngine:
        with self._lock:
            engine = self._engines.get((height, width))
            if engine is None:
                try:
                    engine = OpenvinoEngine(self.build(height, width), precision=self.precision,
                                            streams=self.streams)
                except EngineError:
                    # A cached IR that no longer loads (a truncated or edited file): convert
                    # again, once.
                    engine = OpenvinoEngine(self.build(height, width, rebuild=True),
                                            precision=self.precision, streams=self.streams)
                self._engines[(height, width)] = engine
                self.info.extra["sizes"].append(f"{width}x{height}")
                self.info.extra.update(streams=engine.streams, threads=engine.threads)
            return engine

    def __call__(self, label: torch.Tensor, inst: torch.Tensor,
                 feat: torch.Tensor | None = None) -> torch.Tensor:
        H, W = label.shape[-2:]
        return self.engine_for(int(H), int(W))(label, inst, feat)


# --- conversion -------------------------------------------------------------------------------

CACHE_FORMAT = 2
# Entries kept: each is a model's fp32 weights (730 MB for the official 1024p generator), so the
# least recently used beyond this many are removed after a conversion.
MAX_ENTRIES = 8
INPUT_ORDER = ("label", "inst", "feat", "style_image", "style_inst")
# Conversions done by this process (the tests check that a cached entry is not converted again).
conversions = 0


class GeneratorInputs(nn.Module):
    """The Synthesizer with the generator graph's inputs: label, inst (every engine is fed one;
    a model without instance edges ignores it), and feat for features models."""

    def __init__(self, synth: nn.Module):
        super().__init__()
        self.synth = synth
        self.input_names = ["label", "inst"] + (["feat"] if synth.cfg.feat_num > 0 else [])

    def forward(self, label: torch.Tensor, inst: torch.Tensor,
                feat: torch.Tensor | None = None) -> torch.Tensor:
        return self.synth(label, inst, feat)


def example_feeds(names: list[str], cfg, height: int, width: int) -> dict[str, torch.Tensor]:
    """Batch-1 tracing inputs of the right dtypes (values matter only for tracing)."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for n in names:
        if n in INT_INPUTS:
            hi = cfg.label_nc if n == "label" else 8
            out[n] = torch.randint(0, hi, (1, 1, height, width), generator=g, dtype=torch.int32)
        else:
            ch = cfg.feat_num if n == "feat" else 3
            out[n] = torch.rand(1, ch, height, width, generator=g) * 2 - 1
    return out


def convert_module(module: nn.Module, names: list[str], info: EngineInfo):
    """An fp32 module taking `names` (label, inst, feat / style inputs) -> ov.Model at batch 1
    and info.size, with the metadata document in rt_info."""
    global conversions
    ov = import_openvino()
    H, W = info.size
    feeds = example_feeds(names, info.config, H, W)
    # By position (the frontend names inputs after the forward's parameters); named below.
    spec = [(list(t.shape), ov.Type.i32 if n in INT_INPUTS else ov.Type.f32)
            for n, t in feeds.items()]
    import warnings
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")          # tracer notes about Python control flow
        try:
            model = ov.convert_model(module.eval(), example_input=tuple(feeds.values()),
                                     input=spec)
        except Exception as e:  # noqa: BLE001 - an op the frontend cannot take
            first = (str(e).strip().splitlines() or [""])[0]
            raise EngineError("", f"OpenVINO could not convert the model "
                                  f"({e.__class__.__name__}: {first})") from None
    for port, n in zip(model.inputs, names):
        port.get_tensor().set_names({n})
    model.outputs[0].get_tensor().set_names({"image"})
    info.extra.update(inputs=names, openvino=openvino_version())
    model.set_rt_info(info_to_json(info), [METADATA_KEY])
    conversions += 1
    return model


def convert_checkpoint(ckpt, height: int, width: int):
    """A Checkpoint's generator graph -> ov.Model at one frame size."""
    from ..synthesizer import Synthesizer
    cfg = ckpt.config
    m = cfg.stride
    if height < cfg.min_size or width < cfg.min_size or height % m or width % m:
        raise OptionError("--height/--width", f"size {width}x{height}: width and height must be "
                                              f"multiples of {m}, at least {cfg.min_size}")
    module = GeneratorInputs(Synthesizer(cfg, ckpt.build_generator()))
    info = EngineInfo(cfg, ckpt.features, ckpt.label_names, size=(height, width),
                      precision="fp32", graph="generator", backend="openvino")
    return convert_module(module, module.input_names, info)


def save_ir(model, out: str | os.PathLike) -> Path:
    """out (.xml) and the .bin beside it, fp32 weights, each written atomically (the .bin
    first, so a reader that finds the new .xml finds its weights)."""
    ov = import_openvino()
    out = Path(out)
    if out.suffix.lower() != ".xml":
        raise OutputError(out, "an OpenVINO IR is named .xml (its weights go to the .bin beside "
                               "it)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = temp_path(out)
        staging.mkdir()
    except OSError as e:
        raise OutputError(out, f"cannot be written ({e.strerror or e})") from None
    try:
        try:
            ov.save_model(model, str(staging / "model.xml"), compress_to_fp16=False)
        except Exception as e:  # noqa: BLE001 - disk full, permissions
            raise OutputError(out, f"OpenVINO could not write the IR ({e.__class__.__name__}: "
                                   f"{e})") from None
        for suffix in (".bin", ".xml"):
            write_atomic(out.with_suffix(suffix),
                         lambda tmp, s=suffix: os.replace(staging / f"model{s}", tmp))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


# --- the cache --------------------------------------------------------------------------------


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "p2phd-infer" / "openvino"


_digests: dict[tuple, str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes; remembered per (path, size, mtime) for this process."""
    path = Path(path).resolve()
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _digests:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _digests[memo] = h.hexdigest()
    return _digests[memo]


def cache_key(digest: str, height: int, width: int, precision: str) -> str:
    text = f"{CACHE_FORMAT}|{digest}|{height}x{width}|{precision}|{openvino_version()}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


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


def _entry_ok(entry: Path, key: str) -> bool:
    try:
        meta = json.loads((entry / "entry.json").read_text())
        return (meta.get("key") == key and
                (entry / "model.xml").stat().st_size == meta["xml_bytes"] and
                (entry / "model.bin").stat().st_size == meta["bin_bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


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
              *, checkpoint=None, rebuild: bool = False, root: Path | None = None,
              log: Callable[[str], None] | None = None) -> Path:
    """The cached IR (.xml) of model.pt at one frame size, converted now if absent or broken
    (or `rebuild`); `log(message)` is told before a conversion."""
    root = root or cache_root()
    key = cache_key(file_digest(ckpt_path), height, width, precision)
    entry = root / key
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(root, f"cannot create the OpenVINO cache ({e.strerror or e})") from None
    with _locked(root / f".{key}.lock"):
        if not rebuild and _entry_ok(entry, key):
            os.utime(entry / "entry.json")          # last use, for _evict
            return entry / "model.xml"
        _remove_dead_staging(root)
        if log is not None:
            log(f"converting {Path(ckpt_path).name} to OpenVINO for {width}x{height} frames "
                f"(once; cached in {entry})")
        if checkpoint is None:
            from ..checkpoint import load_checkpoint
            checkpoint = load_checkpoint(ckpt_path)
        model = convert_checkpoint(checkpoint, height, width)
        staging = temp_path(entry)
        staging.mkdir()
        try:
            save_ir(model, staging / "model.xml")
            meta = {"key": key, "checkpoint": str(Path(ckpt_path).resolve()),
                    "checkpoint_sha256": file_digest(ckpt_path), "size": [height, width],
                    "precision": precision, "openvino": openvino_version(),
                    "format": CACHE_FORMAT,
                    "xml_bytes": (staging / "model.xml").stat().st_size,
                    "bin_bytes": (staging / "model.bin").stat().st_size}
            write_atomic(staging / "entry.json", json.dumps(meta, indent=1) + "\n")
            if entry.exists():
                shutil.rmtree(entry)            # broken or stale: replaced whole
            os.rename(staging, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _evict(root, keep=entry)
    return entry / "model.xml"


def open_openvino(ckpt_path: str | os.PathLike, device=None, *, precision: str = "fp32",
                  streams: int | None = None, root: Path | None = None,
                  log: Callable[[str], None] | None = None,
                  checkpoint=None) -> "OpenvinoModelEngine":
    """model.pt on OpenVINO's CPU plugin, converted per frame size on first use and cached.
    `checkpoint`: the file already loaded (it is then not read again)."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():                 # worded as open_engine words it
        raise EngineError(ckpt_path, "no such engine file" if not ckpt_path.exists()
                          else "not a file")
    import_openvino()
    check_precision(precision)
    from ..checkpoint import load_checkpoint
    ckpt = checkpoint if checkpoint is not None else load_checkpoint(ckpt_path)

    def build(height: int, width: int, rebuild: bool = False) -> Path:
        return cached_ir(ckpt_path, height, width, precision, checkpoint=ckpt, rebuild=rebuild,
                         root=root, log=log)

    return OpenvinoModelEngine(ckpt_path, build, device, precision=precision, streams=streams,
                               checkpoint=ckpt)
