"""OpenVINO engines: our generator (or style) graph through OpenVINO's CPU plugin.

Two ways in:

- OpenvinoEngine(file): an `.onnx` written by `p2phd-infer export --format onnx`, or an OpenVINO
  IR `.xml` (+ `.bin` beside it) written by `export --format openvino`. The metadata document
  (base.py) comes from the ONNX metadata_props (OpenVINO's ONNX reader keeps them in the model's
  rt_info under "framework") or from the IR's rt_info under METADATA_KEY.
- OpenvinoModelEngine(model.pt): what `run`, `serve`, `edit` and the API use on a CPU
  (open_openvino). A converted graph has a fixed frame size and a folder may hold several, so
  the IR for a size is made on first use of that size (openvino_convert.py), kept in the
  per-user cache with its compiled blob (openvino_cache.py), and kept open.

Every frame is its own inference request on a graph at batch 1: a frame's image never depends on
how many frames share its batch (oneDNN picks kernels by shape, so a batch-4 graph can round
differently from a batch-1 graph). `streams` > 1 keeps that many frames in flight
(AsyncInferQueue) with cores/streams threads each; the default is 1 stream with every core,
because the thread count of a stream changes a frame's last bits (measured: up to 1e-5), and the
image must not depend on --batch-size. Precisions and what this CPU must have for them:
openvino_cpu.py.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import EngineError, OptionError
from .base import METADATA_KEY, Engine, EngineInfo, check_graph, info_from_json, info_to_json
from .openvino_cache import (_identity, cached_ir, checked_graph, checkpoint_record,
                             compiled_cache, ir_intact, record_checked_graph,
                             record_checkpoint)
from .openvino_convert import INT_INPUTS, convert_checkpoint
from .openvino_cpu import (OV_PRECISION, check_device, check_precision, core, cpu_cores,
                           import_openvino, openvino_version)

SUFFIXES = (".onnx", ".xml")


def read_metadata(model, path: Path) -> str:
    """The metadata JSON of an OpenVINO model read from our ONNX file or our IR."""
    for key in ([METADATA_KEY], ["framework", METADATA_KEY]):
        if model.has_rt_info(key):
            return str(model.get_rt_info(key).astype(str))
    raise EngineError(path, "no p2phd-infer metadata in this model (export it with "
                            "`p2phd-infer export --format openvino` or `--format onnx`)")


def conv_shapes(model, info: EngineInfo, dims) -> list[list[int]]:
    """The graph's convolution weight shapes, for check_graph. A table-lookup first layer
    (openvino_convert.LookupFirstLayer) counts as the convolution it replaces, with the class
    count read off its table (49 taps x (classes + 1) x (1 + edge) rows), and without the
    feature-only convolution beside it."""
    shapes = [dims(op.input(1)) for op in model.get_ops()
              if op.get_type_name() in ("Convolution", "ConvolutionBackpropData")]
    cfg = info.config
    for op in model.get_ops():
        if op.get_type_name().startswith("EmbeddingBag"):
            rows, out = dims(op.input(0))
            classes = rows // 49 // (1 + int(cfg.use_instance)) - 1
            if cfg.feat_num > 0 and [out, cfg.feat_num, 7, 7] in shapes:
                shapes.remove([out, cfg.feat_num, 7, 7])
            shapes.append([out, classes + int(cfg.use_instance) + cfg.feat_num, 7, 7])
    return shapes


class OpenvinoEngine(Engine):
    """An `.onnx` or `.xml` engine file on the OpenVINO CPU plugin (see the module doc).

    streams: CPU streams, i.e. frames computed at once (default 1: every core on one frame, the
    fastest for `run`'s default batch of 1 and no slower per frame for larger batches on a few
    cores); threads: threads in all (default: the cores this process may use); cache_dir:
    OpenVINO's compiled-model cache (CACHE_DIR), so a second open imports the compiled blob
    instead of compiling (openvino_cache.compiled_cache gives a checked one)."""

    def __init__(self, path: str | os.PathLike, device=None, *, precision: str = "fp32",
                 streams: int | None = None, threads: int | None = None,
                 cache_dir: str | os.PathLike | None = None, checked: dict | None = None):
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
        # `checked`: what an earlier open of this very file found (self.checked: its metadata
        # and inputs, for a graph already at batch 1 and its frame size). With a cache_dir the
        # file is then compiled by its path, so OpenVINO imports the blob without reading the
        # graph (reading and hashing the graph's weights is most of an open otherwise).
        fast = checked is not None and cache_dir is not None
        model = None
        if fast:
            metadata = str(checked.get("metadata", ""))
        else:
            try:
                model = core().read_model(str(self.path))
            except Exception as e:  # noqa: BLE001 - any reader fault is a bad file
                first = (str(e).strip().splitlines() or [""])[0]
                raise EngineError(self.path, f"not a readable OpenVINO/ONNX model "
                                             f"({e.__class__.__name__}: {first})") from None
            metadata = read_metadata(model, self.path)
        info = info_from_json(metadata, self.path)
        if model is not None:
            dims = lambda port: [d.get_length() if d.is_static else None  # noqa: E731
                                 for d in port.get_partial_shape()]
            check_graph(self.path, info, conv_shapes(model, info, dims),
                        {port.get_any_name(): dims(port) for port in model.inputs})
            self.input_names = [p.get_any_name() for p in model.inputs]
            outputs = len(model.outputs)
        else:
            self.input_names = [str(n) for n in checked.get("inputs", [])]
            outputs = 1
        if "label" not in self.input_names or outputs != 1:
            raise EngineError(self.path, f"not a p2phd-infer graph (inputs {self.input_names}, "
                                         f"{outputs} outputs)")
        if info.size is None:
            raise EngineError(self.path, "the metadata names no frame size")
        # An int8 graph carries its precision (its FakeQuantize nodes); a float graph takes the
        # one asked for.
        if (info.precision == "int8") != (precision == "int8"):
            if precision == "int8":
                raise OptionError("--precision", f"int8 needs a quantized graph, and "
                                                 f"{self.path.name} is {info.precision}: export "
                                                 f"--format openvino --precision int8, or run "
                                                 f"the model.pt")
            precision = "int8"
        # An IR already at batch 1 and its size (every cached conversion) is compiled by its
        # path, so that a later open with `checked` finds the same blob.
        by_path = fast or (cache_dir is not None and self.path.suffix.lower() == ".xml" and
                           not self._reshape_batch1(model, info.size))
        self.streams = max(1, int(streams or 1))
        cores = cpu_cores()
        self.threads = max(self.streams, int(threads or cores))
        config = {"INFERENCE_PRECISION_HINT": OV_PRECISION[precision],
                  "NUM_STREAMS": str(self.streams),
                  "INFERENCE_NUM_THREADS": str(self.threads)}
        if cache_dir is not None:
            config["CACHE_DIR"] = str(cache_dir)
        try:
            self.compiled = core().compile_model(str(self.path) if by_path else model, "CPU",
                                                 config)
        except Exception as e:  # noqa: BLE001 - an op the plugin cannot run, out of memory
            first = (str(e).strip().splitlines() or [""])[0]
            raise EngineError(self.path, f"OpenVINO could not compile it for the CPU "
                                         f"({e.__class__.__name__}: {first})") from None
        if fast and ([p.get_any_name() for p in self.compiled.inputs] != self.input_names or
                     len(self.compiled.outputs) != 1):
            raise EngineError(self.path, "its compiled graph does not match what was checked")
        self.checked = dict(metadata=metadata, inputs=self.input_names) if by_path else None
        self._request = self.compiled.create_infer_request()
        self._queue = None                      # made on the first batch of several frames
        self._lock = threading.Lock()
        # Every batch is split into frames here, so any batch size works.
        info.max_batch = None
        info.precision = precision
        info.backend = "openvino"
        info.extra.update(openvino=ov.get_version(), streams=self.streams, threads=self.threads,
                          source=self.path.suffix.lower().lstrip("."),
                          loaded_from_cache=cache_dir is not None and
                          bool(self.compiled.get_property("LOADED_FROM_CACHE")))
        self.info = info

    def _reshape_batch1(self, model, size: tuple[int, int]) -> bool:
        """Fix the batch at 1 and the frame size; True when that changed the graph."""
        shapes = {}
        for port in model.inputs:
            shape = port.get_partial_shape()
            dims = [1] + [d.get_length() if d.is_static else None for d in list(shape)[1:]]
            if len(dims) != 4:
                raise EngineError(self.path, f"input {port.get_any_name()} has rank {len(dims)}, "
                                             f"expected 4")
            dims[2:] = [d if d is not None else s for d, s in zip(dims[2:], size)]
            shapes[port.get_any_name()] = dims
        if all(port.get_partial_shape().is_static and
               [d.get_length() for d in port.get_partial_shape()] == shapes[port.get_any_name()]
               for port in model.inputs):
            return False
        try:
            model.reshape(shapes)
        except Exception as e:  # noqa: BLE001 - a graph that cannot take batch 1
            raise EngineError(self.path, f"cannot fix the batch at 1 ({e.__class__.__name__}: "
                                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
        return True

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
    names and the encoder (for `--style-image`, which runs it once in PyTorch). `recorded`:
    (EngineInfo, has an encoder) from openvino_cache.checkpoint_record instead of the loaded
    `checkpoint`; the checkpoint is then loaded only when something needs its weights (a
    conversion, the encoder), and refused if the file changed since the record was checked."""

    def __init__(self, path: str | os.PathLike, build: Callable[[int, int], Path], device=None,
                 *, precision: str = "fp32", streams: int | None = None,
                 checkpoint=None, recorded: tuple[EngineInfo, bool] | None = None,
                 identity: list[int] | None = None):
        from ..checkpoint import load_checkpoint
        self.path = Path(path)
        self.device = check_device(device)
        import_openvino()
        check_precision(precision)
        if checkpoint is None and recorded is None:
            checkpoint = load_checkpoint(self.path)
        self._checkpoint = checkpoint
        self._identity = identity
        self.build = build
        self.precision = precision
        self.streams = streams
        if checkpoint is not None:
            meta = EngineInfo(checkpoint.config, checkpoint.features, checkpoint.label_names)
            self._has_encoder = checkpoint.encoder is not None
        else:
            meta, self._has_encoder = recorded
        self._encoder = None
        self.info = EngineInfo(meta.config, meta.features, meta.label_names, precision=precision,
                               backend="openvino",
                               extra=dict(mode="openvino", openvino=openvino_version(),
                                          source="pt", sizes=[]))
        self._engines: dict[tuple[int, int], OpenvinoEngine] = {}
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()

    @property
    def checkpoint(self):
        with self._load_lock:
            if self._checkpoint is None:
                from ..checkpoint import load_checkpoint
                from .openvino_cache import _identity
                if _identity(self.path.resolve()) != self._identity:
                    raise EngineError(self.path, "the file changed since this engine opened it; "
                                                 "open it again")
                self._checkpoint = load_checkpoint(self.path)
            return self._checkpoint

    @property
    def encoder(self):
        if self._has_encoder and self._encoder is None:
            self._encoder = self.checkpoint.build_encoder().eval()
        return self._encoder

    def engine_for(self, height: int, width: int) -> OpenvinoEngine:
        with self._lock:
            engine = self._engines.get((height, width))
            if engine is None:
                try:
                    engine = self._open(self.build(height, width))
                except EngineError:
                    # A cached IR that passed its hash and still does not load (written by
                    # another OpenVINO build, say): convert again, once.
                    engine = self._open(self.build(height, width, rebuild=True))
                self._engines[(height, width)] = engine
                self.info.extra["sizes"].append(f"{width}x{height}")
                self.info.extra.update(streams=engine.streams, threads=engine.threads)
            return engine

    def _open(self, xml: Path) -> OpenvinoEngine:
        """The engine of a cached IR; `checked_graph`: what its first open found, so later
        opens import the compiled blob without reading the graph."""
        with compiled_cache(xml) as cache_dir:
            # The IR is hashed only where OpenVINO reads it: no checked blob to import, or one
            # that was not imported (made with other settings).
            verified = not any(cache_dir.iterdir())
            if verified and not ir_intact(xml):
                raise EngineError(xml, "the cached IR fails its content hash")
            checked = checked_graph(xml)
            engine = OpenvinoEngine(xml, precision=self.precision, streams=self.streams,
                                    cache_dir=cache_dir, checked=checked)
            if not verified and not engine.info.extra["loaded_from_cache"] and \
                    not ir_intact(xml):
                raise EngineError(xml, "the cached IR fails its content hash")
            if checked is None and engine.checked is not None:
                record_checked_graph(xml, engine.checked)
            return engine

    def __call__(self, label: torch.Tensor, inst: torch.Tensor,
                 feat: torch.Tensor | None = None) -> torch.Tensor:
        H, W = label.shape[-2:]
        return self.engine_for(int(H), int(W))(label, inst, feat)


def open_openvino(ckpt_path: str | os.PathLike, device=None, *, precision: str = "fp32",
                  streams: int | None = None, root: Path | None = None,
                  log: Callable[[str], None] | None = None,
                  checkpoint=None, calibration=None,
                  lookup: bool = False,
                  identity: list[int] | None = None) -> OpenvinoModelEngine:
    """model.pt on OpenVINO's CPU plugin, converted per frame size on first use and cached.
    `checkpoint`: the file already loaded (it is then not read again); `identity`: the file's
    (openvino_cache._identity) from before it was loaded, so that later opens use a record of
    it instead (recorded_checkpoint: the weights are loaded only to convert). precision int8:
    quantized by NNCF on `calibration` (a folder of label maps; None: the bundled samples),
    cached per weights, size and calibration set (openvino_int8.py). lookup: the
    full-resolution first layer as a table lookup (openvino_convert.LookupFirstLayer; fp32)."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():                 # worded as open_engine words it
        raise EngineError(ckpt_path, "no such engine file" if not ckpt_path.exists()
                          else "not a file")
    import_openvino()
    check_precision(precision)
    recorded = None
    if checkpoint is None:
        recorded, identity = recorded_checkpoint(ckpt_path, root)
    if checkpoint is None and recorded is None:
        from ..checkpoint import load_checkpoint
        identity = _identity(ckpt_path.resolve())
        checkpoint = load_checkpoint(ckpt_path)
    if recorded is None and identity is not None:
        record_checkpoint(ckpt_path, identity, info_to_json(EngineInfo(
            checkpoint.config, checkpoint.features, checkpoint.label_names)),
            checkpoint.encoder is not None, root)
    engine: OpenvinoModelEngine

    def ckpt():
        return engine.checkpoint

    if precision == "int8":
        from .openvino_int8 import calibration_digest, calibration_files, import_nncf
        import_nncf()
        files = calibration_files(calibration)       # an empty folder fails now, in one line
        variant = f"calibration {calibration_digest(files)}"
    else:
        files, variant = None, "lookup" if lookup else ""
    if lookup and precision == "int8":
        raise OptionError("--precision", "int8 keeps the first layers as convolutions (in f32); "
                                         "the lookup first layer is an fp32/bf16 graph")

    def make(height: int, width: int):
        if precision != "int8":
            return convert_checkpoint(ckpt(), height, width, lookup=lookup)
        # Quantized from the fp32 entry (converted now if absent): one conversion serves both.
        from .openvino_int8 import calibration_frames, quantize
        f32 = cached_ir(ckpt_path, height, width, "fp32", root=root, log=log,
                        make=lambda: convert_checkpoint(ckpt(), height, width))
        return quantize(core().read_model(str(f32)), calibration_frames(files, ckpt(), height,
                                                                       width), engine.config)

    def build(height: int, width: int, rebuild: bool = False) -> Path:
        return cached_ir(ckpt_path, height, width, precision, rebuild=rebuild, root=root,
                         verify=False,
                         log=log, variant=variant, make=lambda: make(height, width),
                         what=" int8 (NNCF calibration)" if precision == "int8" else "")

    engine = OpenvinoModelEngine(ckpt_path, build, device, precision=precision, streams=streams,
                                 checkpoint=checkpoint, recorded=recorded, identity=identity)
    return engine


def recorded_checkpoint(ckpt_path: Path, root: Path | None = None):
    """((EngineInfo, has an encoder), identity) from openvino_cache.checkpoint_record, or
    (None, None) when there is no valid record of this file as it is now."""
    record = checkpoint_record(ckpt_path, root)
    if record is None:
        return None, None
    try:
        meta = info_from_json(record["info"], ckpt_path)
    except EngineError:
        return None, None
    return (meta, record["encoder"]), record["identity"]
