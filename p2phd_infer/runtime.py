"""The runtime: the executor of the batching policy (batching.py) and of the synthesis step
(step.py): threads, CUDA streams and pinned staging that keep the engine busy.

    submit() ─▶ decode pool ─▶ ready list ─▶ batcher ─▶ H2D stream ─▶ compute stream ─▶ D2H stream
                (PNG -> ids,                 (same-size    (pinned      (features, engine,  (pinned
                 checks, pin)                 frames)       host)        uint8 on device)    host)
             ─▶ completer (waits for the D2H event) ─▶ encode pool (PNG/JPEG, atomic write) ─▶ Future

Which requests form a batch and when is the policy's (Triton Inference Server's dynamic batcher:
full at `max_batch_size`, or due once its oldest request has waited `max_queue_delay_us`; one
frame size per batch). The batcher thread takes an in-flight slot before it asks the policy, so
while the engine is busy requests pile up and the next batch comes out full.

On CUDA the three streams let batch k+1's upload and batch k-1's download overlap batch k's
compute. Host staging memory is pinned through PyTorch's caching host allocator: it records the
copy's stream event, so a pinned block is reused only after its copy has finished, even when the
tensor that owned it is already gone.

Failure stays local: a bad file fails its own Future (InputError naming the file); an engine
exception fails the Futures of its batch (EngineFault) and the runtime goes on serving.
"""
from __future__ import annotations

import itertools
import os
import queue
import threading
import time
import warnings
from collections import Counter, deque
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from .batching import BatchPolicy
from .errors import (EngineError, EngineFault, InputError, OptionError, OutputError, QueueFull,
                     RuntimeClosed)
from .ids import decode_maps, remap_arrays
from .image_io import LABEL_FORMATS, write_image
from .limits import (DEFAULT_MAX_PIXELS, JPEG_QUALITY, MAX_BATCH, MAX_DELAY_US,
                     MAX_PIXELS_LIMIT, MAX_QUEUE, MAX_THREADS)
from .locations import is_uri
from .plan import Job
from .engines.base import finite_frames
from .step import SynthesisStep
from .synthesizer import to_uint8


# Frames decoded by Pillow come as read-only arrays; the ids are only read, never written, so
# torch's warning about non-writable arrays says nothing useful here.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable",
                        category=UserWarning)


_batch_numbers = itertools.count()   # FrameTiming.batch: unique across the process's Runtimes


def default_workers() -> int:
    return max(2, min(8, os.cpu_count() or 2))


@dataclass(eq=False)
class _Request:
    seq: int
    future: Future
    name: str                         # what error messages call this request
    label_src: Any                    # path, numpy array or tensor
    inst_src: Any
    out: str | None                   # None: the Future's result is the uint8 [H,W,3] array
    caller_event: Any = None          # CUDA event on the submitter's stream (device inputs)
    label: torch.Tensor | None = None   # [H,W] ids: host (pinned on CUDA) or on the device
    inst: torch.Tensor | None = None    # None when the model needs no instance map
    size: tuple[int, int] | None = None
    t_ready: float = 0.0
    released: bool = False            # its queue slot was given back
    t_submit: int = 0                 # time.perf_counter_ns() at submit()


@dataclass(frozen=True)
class FrameTiming:
    """Where one frame's time went, in nanoseconds (Triton's statistics split it the same way):
    queued = submit() to its batch's dispatch (decode, checks, the batching delay, a busy engine);
    input / infer / output = its batch's host-to-device preparation, network (features, engine,
    uint8), and download. `batch` numbers every Runtime's batches in the process, so frames that
    shared one engine call can be told apart. Set as `future.timing` before a dispatched
    frame's Future resolves."""
    batch: int
    batch_size: int
    queued_ns: int
    input_ns: int
    infer_ns: int
    output_ns: int


@dataclass
class RuntimeStats:
    batches: int = 0
    frames: int = 0
    failed_batches: int = 0
    batch_sizes: Counter = field(default_factory=Counter)


class Runtime:
    """Batched synthesis over one engine.

        with Runtime(engine, max_batch_size=4, max_queue_delay_us=2000) as rt:
            fut = rt.submit("a_labelIds.png", "a_instanceIds.png", out="out/a.png")
            for rgb in rt.map(zip(labels, insts)):     # numpy uint8 [H,W,3], in order
                ...

    engine: any Engine (engines/). style: a StyleControl for features models (None: zeros).
    max_queue_size: requests admitted and not yet finished; past it submit() blocks or raises
    QueueFull (`block_when_full`). Inputs are file paths or in-memory frames of the engine's input
    kind (step.py): label ids [H,W] of an integer type, or a label_nc 0 model's input image uint8
    [H,W,3]; numpy or torch, CPU or CUDA (device tensors are not range-checked, as that would wait
    for the device). Do not change an in-memory input until its Future is done.
    """

    def __init__(self, engine, *, max_batch_size: int = 1, max_queue_delay_us: int = 0,
                 max_queue_size: int | None = None, block_when_full: bool = True,
                 decode_workers: int | None = None, encode_workers: int | None = None,
                 style=None, jpeg_quality: int = 95, max_inflight_batches: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, label_format: str = "ids",
                 palette=None, on_written=None, label_map=None,
                 derive_instances: bool = False):
        for option, value, lo, hi in (("max_batch_size", max_batch_size, 1, MAX_BATCH),
                                      ("max_queue_delay_us", max_queue_delay_us, 0, MAX_DELAY_US),
                                      ("max_queue_size", max_queue_size, 1, MAX_QUEUE),
                                      ("decode_workers", decode_workers, 1, MAX_THREADS),
                                      ("encode_workers", encode_workers, 1, MAX_THREADS),
                                      ("max_inflight_batches", max_inflight_batches, 1, 64),
                                      ("jpeg_quality", jpeg_quality, *JPEG_QUALITY),
                                      ("max_pixels", max_pixels, 1, MAX_PIXELS_LIMIT)):
            optional = option not in ("max_batch_size", "max_queue_delay_us", "jpeg_quality")
            if value is None and optional:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise OptionError(option, f"{value!r} is outside {lo}..{hi}")
        if label_format not in LABEL_FORMATS:
            raise OptionError("label_format", f"{label_format!r}: one of "
                                              f"{', '.join(LABEL_FORMATS)}")
        self.engine = engine
        self.cfg = engine.config
        # The one frames -> image step (step.py); it decides the input kind, ids or RGB.
        self.step = SynthesisStep(engine, style)
        # File label maps: ids, color (through `palette`) or auto (image_io.read_label_png).
        self.label_format = label_format
        self.palette = palette
        # label_map (label_map.LabelMap): source ids/colours -> the model's ids, for files and
        # arrays alike; derive_instances: a frame without an instance map gets one derived from
        # its label map (sim.instances_from_labels, `--instances auto`).
        self.label_map = label_map
        self.derive_instances = derive_instances
        # Called as on_written(out, label, rgb) in an encode worker once a file output is written
        # (label: the decoded host map, ids [H,W] or uint8 RGB [3,H,W]); an exception fails that
        # frame. `run --save-comparison` writes its picture here.
        self.on_written = on_written
        self.device = self.step.device
        info = engine.info
        if info.max_batch is not None:
            max_batch_size = min(max_batch_size, info.max_batch)
        self.max_batch_size = max_batch_size
        self.max_queue_delay_us = max_queue_delay_us
        self.policy = BatchPolicy(max_batch_size, max_queue_delay_us)
        self.max_queue_size = max_queue_size or max(64, 4 * max_batch_size)
        self.block_when_full = block_when_full
        self.style = self.step.style
        self.jpeg_quality = jpeg_quality
        self.max_pixels = max_pixels
        self.stats = RuntimeStats()
        self._cuda = self.device.type == "cuda"
        # Label ids travel as uint8 when they fit (4x fewer bytes to copy); int32 on the device.
        self._label_host_dtype = torch.uint8 if self.cfg.label_nc <= 256 else torch.int32

        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)   # submitters wait here when full
        self._work = threading.Condition(self._lock)    # the batcher waits here
        self._closed = False
        self._dead: str | None = None                    # why the batcher stopped, if it did
        self._flush_seq = -1                             # requests up to this seq are due now
        self._inflight = 0                               # admitted, Future not yet done
        self._pending_decode = 0
        self._ready: list[_Request] = []
        self._undispatched: dict[int, _Request] = {}
        self._seq = itertools.count()

        # Up to this many batches between "sent to the engine" and "result on the host": enough
        # for upload, compute and download of three batches to overlap.
        self._slots = threading.Semaphore(max_inflight_batches or (3 if self._cuda else 1))
        self._completions: queue.Queue = queue.Queue()
        if self._cuda:
            self._h2d = torch.cuda.Stream(self.device)
            self._compute = torch.cuda.Stream(self.device)
            self._d2h = torch.cuda.Stream(self.device)

        from concurrent.futures import ThreadPoolExecutor
        self._decode_pool = ThreadPoolExecutor(decode_workers or default_workers(),
                                               thread_name_prefix="p2phd-decode")
        self._encode_pool = ThreadPoolExecutor(encode_workers or default_workers(),
                                               thread_name_prefix="p2phd-encode")
        self._batcher = threading.Thread(target=self._batch_loop, name="p2phd-batcher",
                                         daemon=True)
        self._completer = threading.Thread(target=self._complete_loop, name="p2phd-completer",
                                           daemon=True)
        # Every Future is resolved on this one thread, which does nothing else: a callback that
        # blocks (a submit() into a full queue) or closes the runtime never stalls the pipeline,
        # and no callback runs under the runtime's locks.
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._resolver = threading.Thread(target=self._resolve_loop, name="p2phd-results",
                                          daemon=True)
        self._batcher.start()
        self._completer.start()
        self._resolver.start()

    @classmethod
    def from_options(cls, engine, options, *, style=None, palette=None, label_map=None,
                     on_written=None, encode_workers: int | None = None) -> "Runtime":
        """The Runtime of a run (plan.RunOptions: batch size, queue delay, workers, JPEG quality,
        pixel limit, label format, --instances auto), for every executor alike. palette and
        label_map: the run's, made from the engine and the options (local_run.run_palette,
        run_label_map); encode_workers: default the run's workers."""
        from .plan import AUTO_INSTANCES
        workers = options.workers or default_workers()
        return cls(engine, max_batch_size=options.batch_size,
                   max_queue_delay_us=options.max_queue_delay_us, decode_workers=workers,
                   encode_workers=encode_workers or workers, style=style,
                   jpeg_quality=options.jpeg_quality, max_pixels=options.max_pixels,
                   label_format=options.label_format, palette=palette, label_map=label_map,
                   derive_instances=options.instances == AUTO_INSTANCES, on_written=on_written)

    # ------------------------------------------------------------------ public API

    def submit(self, label, inst=None, out: str | os.PathLike | None = None, *,
               name: str | None = None, block: bool | None = None,
               timeout: float | None = None) -> Future:
        """One frame -> a Future of the output path (with `out`) or of uint8 [H,W,3].

        label/inst: PNG locations (paths or URIs), a plan Job (its maps and output), or integer
        id maps [H,W] (numpy or torch, CPU or CUDA).
        block/timeout: override `block_when_full` for this call; a timed-out wait raises QueueFull.
        """
        if isinstance(label, Job):
            label, inst, out, name = label.label, label.inst if inst is None else inst, \
                label.out if out is None else out, name or label.label
        if name is None:
            name = str(label) if isinstance(label, (str, os.PathLike)) else None
        block = self.block_when_full if block is None else block
        caller_event = None
        if self._cuda and any(isinstance(t, torch.Tensor) and t.is_cuda for t in (label, inst)):
            # The submitter may still be writing these on its own stream: the upload waits for it.
            caller_event = torch.cuda.Event()
            caller_event.record(torch.cuda.current_stream(self.device))
        fut: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeClosed(self._dead or "the runtime is closed")
            if self._inflight >= self.max_queue_size:
                if not block:
                    raise QueueFull(f"{self.max_queue_size} requests already queued")
                if not self._space.wait_for(
                        lambda: self._closed or self._inflight < self.max_queue_size, timeout):
                    raise QueueFull(f"{self.max_queue_size} requests still queued after "
                                    f"{timeout} s")
                if self._closed:
                    raise RuntimeClosed(self._dead or "the runtime is closed")
            seq = next(self._seq)
            req = _Request(seq, fut, name or f"frame #{seq}", label, inst,
                       str(out) if out is not None else None, caller_event,
                       t_submit=time.perf_counter_ns())
            self._inflight += 1
            self._pending_decode += 1
            self._undispatched[seq] = req
            self._decode_pool.submit(self._decode, req)
        fut.add_done_callback(lambda _f, req=req: self._release(req))    # cancellations
        return fut

    def flush(self) -> None:
        """Send every request submitted so far to the engine without waiting for the batching
        delay (the end of an input: nothing more will join their batches)."""
        with self._lock:
            self._flush_seq = next(self._seq) - 1
            self._seq = itertools.count(self._flush_seq + 1)
            self._work.notify_all()

    def map(self, items: Iterable, *, return_exceptions: bool = False) -> Iterator:
        """Results of `items`, in their order, with at most `max_queue_size` in flight.

        An item is a Frame, a label (path or array), a (label, inst[, out]) tuple or a dict of
        submit() arguments. A failed item raises its error here (or is yielded as the exception
        object with return_exceptions=True); leaving the loop early cancels what is left."""
        window: deque[Future] = deque()
        try:
            for item in items:
                if len(window) >= self.max_queue_size:
                    yield _outcome(window.popleft(), return_exceptions)
                if isinstance(item, dict):
                    window.append(self.submit(**{**item, "block": True}))
                elif isinstance(item, tuple):
                    window.append(self.submit(*item, block=True))
                else:
                    window.append(self.submit(item, block=True))
            self.flush()
            while window:
                yield _outcome(window.popleft(), return_exceptions)
        finally:
            for f in window:
                f.cancel()

    def close(self, cancel: bool = False) -> None:
        """Stop taking requests; finish what was submitted (or, with cancel, cancel every request
        not yet handed to the engine: batches already running finish); join every thread. Safe
        from a Future's callback (it then returns once the pipeline has drained)."""
        with self._lock:
            self._closed = True
            self._space.notify_all()
            self._work.notify_all()
            doomed = list(self._undispatched.values()) if cancel else []
        for req in doomed:
            req.future.cancel()
        # Decode tasks of cancelled requests still run (and skip the work), so the count of
        # pending decodes reaches zero and the batcher knows no more input will come.
        self._decode_pool.shutdown(wait=True)
        with self._lock:
            self._work.notify_all()
        for t in (self._batcher, self._completer):
            if t is not threading.current_thread():
                t.join()
        self._encode_pool.shutdown(wait=True)
        self._results.put(None)
        if self._resolver is not threading.current_thread():
            self._resolver.join()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Leaving on an error (or Ctrl-C) cancels the queue instead of working through it.
        self.close(cancel=exc_type is not None)

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ decode stage

    def _release(self, req: _Request) -> None:
        """Give back the request's queue slot, once."""
        with self._lock:
            if req.released:
                return
            req.released = True
            self._inflight -= 1
            self._space.notify()

    def _resolve(self, req: _Request, result=None, error: BaseException | None = None) -> None:
        """The request is done: free its slot now, resolve its Future on the results thread."""
        self._release(req)
        self._results.put((req.future, result, error))

    def _resolve_loop(self) -> None:
        while True:
            item = self._results.get()
            if item is None:
                return
            fut, result, error = item
            if fut.done():
                continue
            try:
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(result)
            except Exception:  # noqa: BLE001 - cancelled meanwhile; a callback's own error
                pass

    def _decode(self, req: _Request) -> None:
        error = None
        if not req.future.cancelled():
            try:
                self._prepare(req)
            except InputError as e:
                error = e
            except Exception as e:  # noqa: BLE001 - whatever broke, it broke for this request only
                error = InputError(req.name, f"could not be read ({e.__class__.__name__}: {e})")
        ok = error is None and not req.future.cancelled()
        with self._lock:
            self._pending_decode -= 1
            if ok and self._dead is not None:
                ok, error = False, RuntimeClosed(self._dead)
            if ok:
                req.t_ready = time.monotonic()
                self._ready.append(req)
            else:
                self._undispatched.pop(req.seq, None)
            self._work.notify_all()
        if error is not None and req.future.set_running_or_notify_cancel():
            self._resolve(req, error=error)

    def _prepare(self, req: _Request) -> None:
        """Decode and check one request's inputs; on CUDA, stage host maps in pinned memory."""
        cfg = self.cfg
        size = self.engine.info.size
        if isinstance(req.label_src, (str, os.PathLike)):
            if req.inst_src is not None and not isinstance(req.inst_src, (str, os.PathLike)):
                raise InputError(req.name, "a label file needs an instance file, not an array")
            label, inst = decode_maps(str(req.label_src), None if req.inst_src is None else
                                      str(req.inst_src), cfg, size=size,
                                      max_pixels=self.max_pixels, label_format=self.label_format,
                                      palette=self.palette, label_map=self.label_map,
                                      derive_instances=self.derive_instances)
        else:
            label_src, inst_src = remap_arrays(req.label_src, req.inst_src, cfg, req.name,
                                               label_map=self.label_map,
                                               derive_instances=self.derive_instances)
            label, inst = self.step.frame_inputs(label_src, inst_src, req.name, self.max_pixels)
        H, W = label.shape[-2:]
        if self._cuda:
            label = self._stage(label, self._label_host_dtype)
            inst = self._stage(inst, torch.int32) if inst is not None else None
        req.label, req.inst, req.size = label, inst, (H, W)

    @staticmethod
    def _stage(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if t.is_cuda:
            return t
        pinned = torch.empty(t.shape, dtype=dtype, pin_memory=True)
        pinned.copy_(t)    # values already checked to fit dtype
        return pinned

    # ------------------------------------------------------------------ batcher

    def _next_batch(self) -> list[_Request] | None:
        """Block until the batching policy (batching.py) sends a batch; None when closed and
        drained."""
        with self._lock:
            while True:
                if any(j.future.cancelled() for j in self._ready):
                    for j in self._ready:
                        if j.future.cancelled():
                            self._undispatched.pop(j.seq, None)
                    self._ready = [j for j in self._ready if not j.future.cancelled()]
                drained = self._closed and self._pending_decode == 0
                if self._ready:
                    decision = self.policy.next_batch(self._ready, time.monotonic(),
                                                      drained=drained, flush_seq=self._flush_seq)
                    if decision.batch:
                        chosen = set(map(id, decision.batch))
                        self._ready = [j for j in self._ready if id(j) not in chosen]
                        for j in decision.batch:
                            self._undispatched.pop(j.seq, None)
                        return decision.batch
                    self._work.wait(decision.wake_at - time.monotonic())
                elif drained:
                    return None
                else:
                    self._work.wait()

    def _batch_loop(self) -> None:
        try:
            if self._cuda:
                torch.cuda.set_device(self.device)
            while True:
                self._slots.acquire()
                batch = self._next_batch()
                if batch is None:
                    self._slots.release()
                    return
                self._dispatch(batch)
        except BaseException as e:  # noqa: BLE001 - KeyboardInterrupt, SystemExit, a bug here
            self._die(f"the runtime stopped ({e.__class__.__name__}: {e})")
        finally:
            self._completions.put(None)

    def _die(self, why: str) -> None:
        """The batcher cannot go on: close, and fail every request not yet finished."""
        with self._lock:
            self._dead = why
            self._closed = True
            doomed = {id(j): j for j in [*self._undispatched.values(), *self._ready]}
            doomed = list(doomed.values())
            self._ready = []
            self._undispatched.clear()
            self._space.notify_all()
            self._work.notify_all()
        for req in doomed:
            try:
                running = req.future.set_running_or_notify_cancel()
            except RuntimeError:        # already failed by its own decode error
                continue
            if running:
                self._resolve(req, error=RuntimeClosed(why))
            else:
                self._release(req)

    def _dispatch(self, batch: list[_Request]) -> None:
        reqs = [j for j in batch if j.future.set_running_or_notify_cancel()]
        for j in batch:
            if j not in reqs:
                self._release(j)
        if not reqs:
            self._slots.release()
            return
        batch = next(_batch_numbers)
        self.stats.batches += 1
        self.stats.frames += len(reqs)
        self.stats.batch_sizes[len(reqs)] += 1
        t_start = time.perf_counter_ns()
        try:
            with torch.inference_mode():
                if self._cuda:
                    host, event = self._run_cuda(reqs)
                    clock = (batch, t_start, None)       # phases read from the events later
                else:
                    host, phases = self._run_cpu(reqs)
                    event, clock = None, (batch, t_start, phases)
        except Exception as e:  # noqa: BLE001 - an engine fault fails its batch, not the runtime
            self._slots.release()
            self._fail(reqs, e)
            return
        except BaseException as e:  # KeyboardInterrupt in the engine: this batch, then the rest
            self._slots.release()
            self._fail(reqs, e)
            raise
        self._completions.put((reqs, host, event, clock))

    def _fail(self, reqs: list[_Request], error: BaseException) -> None:
        self.stats.failed_batches += 1
        for j in reqs:
            fault = EngineFault(j.name, error, len(reqs))
            fault.__cause__ = error
            self._resolve(j, error=fault)

    def _run_cpu(self, reqs: list[_Request]) -> tuple[np.ndarray, tuple[int, int, int]]:
        """The batch's images and its (input, infer, output) nanoseconds."""
        t0 = time.perf_counter_ns()
        label, inst = self.step.stack([j.label for j in reqs],
                                      None if reqs[0].inst is None else [j.inst for j in reqs])
        label = label.to(self.device)
        inst = None if inst is None else inst.to(self.device)
        t1 = time.perf_counter_ns()
        image = to_uint8(self.step(label, inst))   # on the device: 4x fewer bytes than float
        t2 = time.perf_counter_ns()
        host = image.cpu().numpy()
        return host, (t1 - t0, t2 - t1, time.perf_counter_ns() - t2)

    def _run_cuda(self, reqs: list[_Request]):
        """Queue upload, compute and download of one batch on their streams; nothing waits here.
        Returns the pinned host result and the events that mark its stages, with the per-frame
        finite flags (read by the completer once the download is done)."""
        h2d, compute, d2h = self._h2d, self._compute, self._d2h
        for j in reqs:
            if j.caller_event is not None:
                h2d.wait_event(j.caller_event)
        began = torch.cuda.Event(enable_timing=True)
        began.record(h2d)
        with torch.cuda.stream(h2d):
            labels = [j.label.to(self.device, non_blocking=True) for j in reqs]
            insts = None if reqs[0].inst is None else \
                [j.inst.to(self.device, non_blocking=True) for j in reqs]
            uploaded = torch.cuda.Event(enable_timing=True)
            uploaded.record(h2d)
        with torch.cuda.stream(compute):
            compute.wait_event(uploaded)
            for t in labels + (insts or []):
                t.record_stream(compute)   # allocated on h2d (or by the caller), read here
            label, inst = self.step.stack(labels, insts)
            out = self.step(label, inst, check=False)      # checked below, with the download
            finite = finite_frames(out)
            image = to_uint8(out)
            computed = torch.cuda.Event(enable_timing=True)
            computed.record(compute)
        with torch.cuda.stream(d2h):
            d2h.wait_event(computed)
            image.record_stream(d2h)
            finite.record_stream(d2h)
            host = torch.empty(image.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(image, non_blocking=True)
            host_finite = torch.empty(finite.shape, dtype=torch.bool, pin_memory=True)
            host_finite.copy_(finite, non_blocking=True)
            downloaded = torch.cuda.Event(enable_timing=True)
            downloaded.record(d2h)
        return host, (began, uploaded, computed, downloaded, host_finite)

    # ------------------------------------------------------------------ completion and encode

    def _complete_loop(self) -> None:
        while True:
            item = self._completions.get()
            if item is None:
                return
            reqs, host, event, (batch, t_start, phases) = item
            try:
                if event is not None:
                    began, uploaded, computed, downloaded, finite = event
                    downloaded.synchronize()
                    fault = self.engine.finite_fault(finite)
                    if fault is not None:
                        raise fault
                    host = host.numpy()
                    # Device time between the events (a stream still busy with the batch before
                    # counts towards this one's phase).
                    phases = tuple(int(a.elapsed_time(b) * 1e6) for a, b in
                                   ((began, uploaded), (uploaded, computed),
                                    (computed, downloaded)))
            except Exception as e:  # noqa: BLE001 - an asynchronous device error
                self._slots.release()
                self._fail(reqs, e)
                continue
            self._slots.release()
            for j in reqs:
                j.future.timing = FrameTiming(batch, len(reqs), t_start - j.t_submit, *phases)
            for j, rgb in zip(reqs, host):
                if j.out is None:
                    self._resolve(j, rgb)
                else:
                    self._encode_pool.submit(self._encode, j, rgb)

    def _encode(self, req: _Request, rgb: np.ndarray) -> None:
        try:
            write_image(req.out, rgb, self.jpeg_quality)
        except Exception as e:  # noqa: BLE001 - disk full, permissions: this output only
            self._resolve(req, error=e if isinstance(e, OutputError) else OutputError(req.out, e))
            return
        try:
            if self.on_written is not None:
                self.on_written(req.out, req.label, rgb)
        except Exception as e:  # noqa: BLE001 - that frame's extra output only
            self._resolve(req, error=e if isinstance(e, (InputError, OutputError)) else
                          OutputError(req.out, e))
        else:
            self._resolve(req, req.out if is_uri(req.out) else Path(req.out))


def _outcome(fut: Future, return_exceptions: bool):
    try:
        return fut.result()
    except (Exception, CancelledError) as e:
        if return_exceptions:
            return e
        raise
