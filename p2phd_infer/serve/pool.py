"""The Runtimes of one served model (RuntimePool): admission (the model's queue limit), one
Runtime per style key (a small LRU), and the unbatched path for requests that bring their own
feature map. The dataplane (dataplane.py) calls it; nothing here knows HTTP or gRPC.

Why one Runtime per (style, seed): a Runtime takes one StyleControl for its life (runtime.py), and
only frames of one Runtime batch together, so frames of one style batch with each other; the
default style (none, seed 0: what `run` uses) keeps its Runtime for good, others are made on first
use and the least recently used is closed (after finishing its frames) when more than
`style_cache` are open.

All Runtimes share one engine through `SerializedEngine`: calls are made one at a time, and on
CUDA each call's stream first waits for the previous call's work, so an engine with static
buffers (CUDA graphs, engines/fast.py) is never run by two streams at once.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from ..api import make_style
from ..engines import Engine
from ..engines.base import resolve_device
from ..errors import EngineFault, InputError, OptionError, QueueFull, RuntimeClosed
from ..ids import remap_batch
from ..runtime import FrameTiming, Runtime
from ..styles import as_integer
from ..step import SynthesisStep
from ..synthesizer import to_uint8

DEFAULT_STYLE = (None, 0)


class SerializedEngine(Engine):
    """One engine shared by several Runtimes (and the feature-map path): one call at a time,
    and device work of call k+1 ordered after call k's."""

    def __init__(self, inner: Engine):
        self.inner = inner
        self.info = inner.info
        self.device = inner.device
        self.path = getattr(inner, "path", None)
        self._lock = threading.Lock()
        self._cuda = resolve_device(inner.device).type == "cuda"
        self._last = None

    def __call__(self, label, inst, feat=None):
        with self._lock:
            if self._cuda:
                stream = torch.cuda.current_stream(label.device)
                if self._last is not None:
                    stream.wait_event(self._last)
            out = self.inner(label, inst, feat)
            if self._cuda:
                self._last = torch.cuda.Event()
                self._last.record(stream)
            return out


class RuntimePool:
    """The Runtimes of one model over one engine. submit() and submit_with_features() return
    Futures; a dispatched frame's Future carries `timing` (runtime.FrameTiming) when it resolves,
    which the dataplane's statistics read."""

    def __init__(self, engine: Engine, *, max_batch_size: int = 1, max_queue_delay_us: int = 0,
                 max_queue: int = 64, max_pixels: int | None = None, style_cache: int = 4,
                 decode_workers: int | None = None, derive_instances: bool = False,
                 label_map=None):
        self.engine = engine
        self.derive_instances = derive_instances
        self.label_map = label_map
        self.shared = SerializedEngine(engine)
        self.cfg = engine.config
        # The feature-map path's step (no style: the request brings its feature map).
        self.step = SynthesisStep(self.shared)
        self.max_batch_size = min(max_batch_size, engine.info.max_batch or max_batch_size)
        self.max_queue_delay_us = max_queue_delay_us
        self.max_queue = max_queue
        self.max_pixels = max_pixels
        self.style_cache = style_cache
        self.decode_workers = decode_workers
        self._lock = threading.Lock()
        self._admitted = 0
        self._closed = False
        self._runtimes: OrderedDict[tuple | None, Runtime] = OrderedDict()
        self._retired = Counter()          # batch sizes of Runtimes already closed
        self._direct_sizes = Counter()     # engine calls of the feature-map path
        self._direct_calls = 0
        self._retiring: list[threading.Thread] = []
        self._direct = ThreadPoolExecutor(1, thread_name_prefix="p2phd-serve-feat")
        self._default_key = self.style_key(None, 0)
        with self._lock:
            self._runtime(self._default_key)

    # ------------------------------------------------------------------ state

    @property
    def ready(self) -> bool:
        return not self._closed

    def queue_depth(self) -> int:
        return self._admitted

    def batch_sizes(self) -> Counter:
        with self._lock:
            total = self._retired + self._direct_sizes
            for rt in self._runtimes.values():
                total.update(_snapshot(rt.stats.batch_sizes))
            return total

    # ------------------------------------------------------------------ admission

    def _admit(self, n: int) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeClosed("the server is shutting down")
            if n > self.max_queue:
                raise InputError("request", f"{n} frames in one request; the server takes at "
                                            f"most {self.max_queue} at once (--max-queue)")
            if self._admitted + n > self.max_queue:
                raise QueueFull(f"{self._admitted} frames already queued (--max-queue "
                                f"{self.max_queue})")
            self._admitted += n

    def _release(self, n: int) -> None:
        with self._lock:
            self._admitted -= n

    # ------------------------------------------------------------------ runtimes

    def style_key(self, style: str | None, seed) -> tuple | None:
        """(style, seed) of a request -> the key of its Runtime (None for a model without
        features, where neither changes anything). OptionError for a style such a model cannot
        take, or a seed that is not an integer."""
        style = style.strip() if isinstance(style, str) and style.strip() else None
        seed = as_integer(seed if seed is not None else 0, "seed")   # 1.5 is not seed 1
        if self.cfg.feat_num <= 0:
            if style:
                raise OptionError("style", "this model takes no instance features (feat_num 0)")
            return None
        return (style, seed)

    def _runtime(self, key) -> Runtime:
        """The Runtime of `key`, made if needed (call with the lock held)."""
        rt = self._runtimes.get(key)
        if rt is not None:
            self._runtimes.move_to_end(key)
            return rt
        style = make_style(self.engine, *key) if key is not None else None
        rt = Runtime(self.shared, style=style, max_batch_size=self.max_batch_size,
                     max_queue_delay_us=self.max_queue_delay_us, max_queue_size=self.max_queue,
                     block_when_full=False, decode_workers=self.decode_workers,
                     encode_workers=1, max_pixels=self.max_pixels,
                     derive_instances=self.derive_instances, label_map=self.label_map)
        self._runtimes[key] = rt
        while len(self._runtimes) > self.style_cache + 1:
            old = next(k for k in self._runtimes if k != self._default_key)
            self._retire(self._runtimes.pop(old))
        return rt

    def _retire(self, rt: Runtime) -> None:
        """Close an evicted Runtime off the caller's thread: close() waits for its frames."""
        def close():
            rt.close()
            with self._lock:
                self._retired.update(_snapshot(rt.stats.batch_sizes))
        t = threading.Thread(target=close, name="p2phd-serve-retire", daemon=True)
        self._retiring.append(t)
        t.start()

    def submit(self, frames: list[tuple], style: str | None = None, seed=0,
               names: list[str] | None = None) -> list[Future]:
        """(label, inst) id maps [H,W] -> one Future per frame (uint8 [H,W,3]). QueueFull when
        the server holds --max-queue frames; the frames of one request are admitted together or
        not at all."""
        key = self.style_key(style, seed)
        self._admit(len(frames))
        futures: list[Future] = []
        try:
            with self._lock:
                rt = self._runtime(key)
                for i, (label, inst) in enumerate(frames):
                    fut = rt.submit(label, inst, name=names[i] if names else None, block=False)
                    futures.append(fut)
        except BaseException:
            for f in futures:
                f.cancel()
            self._release(len(frames) - len(futures))
            for f in futures:
                f.add_done_callback(lambda _f: self._release(1))
            raise
        for f in futures:
            f.add_done_callback(lambda _f: self._release(1))
        return futures

    # ------------------------------------------------------------------ own feature maps

    def submit_with_features(self, label: np.ndarray, inst: np.ndarray | None,
                             feat: np.ndarray, name: str = "request") -> Future:
        """A request that brings its own feature map [B,F,H,W]: one engine call for its B frames
        (it does not batch with others: the Runtime makes feature maps from a style). A Future of
        uint8 [B,H,W,3]."""
        B = label.shape[0]
        self._admit(B)
        fut: Future = Future()
        t_submit = time.perf_counter_ns()

        def work():
            if not fut.set_running_or_notify_cancel():
                return
            try:
                rgb, timing = self._run_with_features(label, inst, feat, name, t_submit)
            except BaseException as e:  # noqa: BLE001 - handed to the caller through the Future
                fut.set_exception(e)
            else:
                fut.timing = timing
                fut.set_result(rgb)

        try:
            self._direct.submit(work)
        except BaseException:
            self._release(B)
            raise
        fut.add_done_callback(lambda _f: self._release(B))
        return fut

    def _run_with_features(self, label, inst, feat, name, t_submit: int):
        cfg = self.cfg
        if self.label_map is not None or (self.derive_instances and inst is None):
            label, inst = remap_batch(label, inst, cfg, "label", label_map=self.label_map,
                                      derive_instances=self.derive_instances)
        label_t, inst_t, _ = self.step.batch_inputs(label, inst, name="label", inst_name="inst",
                                                    max_pixels=self.max_pixels)
        B, _, H, W = label_t.shape
        if tuple(feat.shape) != (B, cfg.feat_num, H, W):
            raise InputError("feat", f"shape {list(feat.shape)}; expected "
                                     f"{[B, cfg.feat_num, H, W]} for this model and these maps")
        feat_t = torch.from_numpy(np.array(feat, dtype=np.float32))
        if not torch.isfinite(feat_t).all():
            raise InputError("feat", "holds NaN or infinite values")
        t0 = time.perf_counter_ns()
        label_t, feat_t = label_t.to(self.step.device), feat_t.to(self.step.device)
        inst_t = None if inst_t is None else inst_t.to(self.step.device)
        t1 = time.perf_counter_ns()
        try:
            with torch.inference_mode():
                image = to_uint8(self.step(label_t, inst_t, feat_t))
                t2 = time.perf_counter_ns()
                rgb = image.cpu().numpy()
        except Exception as e:  # noqa: BLE001 - the engine failed this request only
            fault = EngineFault(name, e, B)
            fault.__cause__ = e
            raise fault from e
        t3 = time.perf_counter_ns()
        with self._lock:
            self._direct_sizes[B] += 1
            batch = self._direct_calls
            self._direct_calls += 1
        # Negative batch numbers: this path's engine calls, apart from every Runtime's.
        return rgb, FrameTiming(-1 - batch, B, t0 - t_submit, t1 - t0, t2 - t1, t3 - t2)

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Refuse new frames, finish every admitted one, close every Runtime."""
        with self._lock:
            self._closed = True
            runtimes = list(self._runtimes.values())
        self._direct.shutdown(wait=True)
        for rt in runtimes:
            rt.close()
        for t in list(self._retiring):
            t.join()


def _snapshot(counter: Counter) -> dict:
    """A copy of a Counter the batcher thread may be adding to right now."""
    for _ in range(100):
        try:
            return dict(counter)
        except RuntimeError:       # it grew a key during the copy: copy again
            continue
    return {}
