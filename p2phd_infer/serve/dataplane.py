"""The dataplane of `p2phd-infer serve`: what every front door (the HTTP routes of app.py, the gRPC
service) does, with no transport in it: model lookup, KServe v2 request checks, admission, the
call into the model's Runtimes, statistics, and the status of every fault.

    DataPlane(models, *, repository=None, explicit=False, max_pixels=...)
        start(), close()                      open / close the models' Runtimes (blocking calls)
        live(), ready() -> bool
        server_metadata() -> dict             {name, version, extensions}
        model(name, version=None)             -> ServedModel; NotFound, or RuntimeClosed when it
                                                 is known but not loaded
        model_ready(name, version=None) -> bool
        model_metadata(name, version=None)    -> dict, KServe model metadata
        model_config(name, version=None)      -> dict, Triton model configuration (JSON form)
        element_limit(name, version=None)     -> int, most elements one input tensor may have
                                                 (give it to the decoders in kserve.py)
        await infer(name, version, request, disconnected=None) -> InferResult
                                                 request: kserve.InferRequest (inputs as Tensors:
                                                 name, datatype, numpy array; outputs asked for)
        await synthesize(name, version, frames, style, seed, names, disconnected=None)
                                              -> list of uint8 [H,W,3] (/v1/synthesize, editor)
        statistics(name=None, version=None)   -> {"model_stats": [...]} (Triton's fields)
        repository_index(ready_only=False)    -> [{name, version, state, reason}]
        load(name), unload(name)              explicit model control (blocking calls)
        served() -> [ServedModel]             every loaded model version
        batch_sizes() -> Counter              frames per engine call over every model served
        shared_memory                         the registered regions (shared_memory.py)
        failure(kind)                         count a failed call by fault_of's kind: front
                                              doors call it once per failed request
    fault_of(exception) -> Fault              HTTP status, gRPC status name, metrics kind, one line

`disconnected`: an awaitable factory that returns once the client has gone; the request's frames
not yet computed are then cancelled (the Runtime drops them before the engine) and Cancelled is
raised. Every method raises the project's errors (errors.py); `fault_of` maps them to statuses.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import numpy as np

from ..engines import Engine
from ..errors import (AccessDenied, Cancelled, EngineFault, Error, InputError, NotFound,
                      OptionError, QueueFull, RuntimeClosed, TooLarge)
from ..ids import as_ids
from ..plan import DEFAULT_MAX_PIXELS
from ..step import RGB, input_kind, label_input
from .kserve import FLOAT_TYPES, INTEGER_TYPES, InferRequest
from .pool import RuntimePool
from .shared_memory import SharedMemory
from .stats import ModelStats

log = logging.getLogger("p2phd_infer.serve")

SERVER_NAME = "p2phd-infer"
DEFAULT_VERSION = "1"
# Triton's extension names for what this server speaks beyond the core protocol.
EXTENSIONS = ["binary_tensor_data", "parameters", "statistics", "model_configuration",
              "system_shared_memory", "cuda_shared_memory",
              "model_repository", "model_repository(unload_dependents)"]
# Engine kind -> Triton's (platform, backend) names for the model configuration.
TRITON_NAMES = {"torch": ("", "pytorch"), "aoti": ("", "pytorch"),
                "onnx": ("onnxruntime_onnx", "onnxruntime"), "tensorrt": ("tensorrt_plan",
                                                                          "tensorrt"),
                "openvino": ("", "openvino")}


def server_version() -> str:
    try:
        from importlib.metadata import version
        return version("p2phd-infer")
    except Exception:  # noqa: BLE001 - running from a source tree that is not installed
        return "0"


# ---------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """How a front door answers an exception: HTTP status, gRPC status code name (grpc.StatusCode
    member), the metrics kind, the one-line message, whether to send Retry-After."""
    http: int
    grpc: str
    kind: str
    message: str
    retry: bool = False


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or e.__class__.__name__


def fault_of(e: BaseException) -> Fault:
    """The status of any exception a request met; anything not the project's own is a bug (500),
    which the caller logs with its traceback."""
    msg = one_line(e)
    if isinstance(e, NotFound):
        return Fault(404, "NOT_FOUND", "not_found", msg)
    if isinstance(e, TooLarge):
        return Fault(413, "RESOURCE_EXHAUSTED", "too_large", msg)
    if isinstance(e, QueueFull):
        return Fault(503, "UNAVAILABLE", "queue_full", msg, retry=True)
    if isinstance(e, RuntimeClosed):
        return Fault(503, "UNAVAILABLE", "closed", msg, retry=True)
    if isinstance(e, AccessDenied):
        if e.unauthenticated:
            return Fault(401, "UNAUTHENTICATED", "unauthenticated", msg)
        return Fault(403, "PERMISSION_DENIED", "forbidden", msg)
    if isinstance(e, Cancelled):
        # 499: nginx's "client closed request"; nobody reads it, the metrics and log do.
        return Fault(499, "CANCELLED", "cancelled", msg)
    if isinstance(e, EngineFault):
        return Fault(500, "INTERNAL", "engine", msg)
    if isinstance(e, Error):           # InputError, OptionError, CheckpointError, ...
        return Fault(400, "INVALID_ARGUMENT", "input", msg)
    return Fault(500, "INTERNAL", "internal", f"internal error: {msg}")


# Fault kind -> Triton's failure reason (nv_inference_request_failure{reason}).
REASON_OF = {"queue_full": "REJECTED", "closed": "REJECTED", "cancelled": "CANCELED",
             "engine": "BACKEND"}


# ---------------------------------------------------------------------------- one model


@dataclass(frozen=True)
class ModelSettings:
    """Batching and admission of one model version (per model in a repository)."""
    max_batch_size: int = 1
    max_queue_delay_us: int = 0
    max_queue: int = 64
    style_cache: int = 4
    decode_workers: int | None = None
    # serve --instances auto: a request without 'inst' gets one derived from its label map;
    # serve --label-map: label maps arrive in the map's source ids (label_map.LabelMap)
    derive_instances: bool = False
    label_map: object | None = None


class ServedModel:
    """One version of one model: its engine, settings, Runtimes (while loaded) and statistics."""

    def __init__(self, name: str, version: str, engine: Engine, settings: ModelSettings, *,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, source: Path | None = None):
        self.name, self.version, self.engine = name, version, engine
        self.settings = settings
        self.max_pixels = max_pixels
        self.source = source
        self.stats = ModelStats(name, version)
        self.pool: RuntimePool | None = None
        cfg = engine.config
        self.input_kind = input_kind(engine)     # label ids, or a label_nc 0 model's RGB image
        self.inputs = ["label"] + (["inst"] if cfg.needs_instance_map else []) + \
            (["feat"] if cfg.feat_num > 0 else [])
        self.max_batch_size = min(settings.max_batch_size,
                                  engine.info.max_batch or settings.max_batch_size)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        s = self.settings
        self.pool = RuntimePool(self.engine, max_batch_size=self.max_batch_size,
                                max_queue_delay_us=s.max_queue_delay_us, max_queue=s.max_queue,
                                max_pixels=self.max_pixels, style_cache=s.style_cache,
                                decode_workers=s.decode_workers,
                                derive_instances=s.derive_instances, label_map=s.label_map)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    @property
    def ready(self) -> bool:
        return self.pool is not None and self.pool.ready

    def running(self) -> RuntimePool:
        if not self.ready:
            raise RuntimeClosed(f"model {self.name!r} version {self.version} is not ready")
        return self.pool

    # ------------------------------------------------------------------ description

    def _frame_dims(self) -> tuple[int, int]:
        size = self.engine.info.size
        return size if size is not None else (-1, -1)

    def metadata(self, versions: list[str]) -> dict:
        H, W = self._frame_dims()
        types, dims = self._input_types(H, W)
        platform, backend = self.triton_names()
        return {"name": self.name, "versions": versions, "platform": platform or backend,
                "inputs": [{"name": n, "datatype": types[n], "shape": [-1, *dims[n]]}
                           for n in self.inputs],
                "outputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, H, W, 3]}]}

    def _input_types(self, H: int, W: int) -> tuple[dict, dict]:
        """Each input's KServe datatype and per-frame dims: what the synthesis step takes."""
        label_type, label_dims = label_input(self.input_kind, H, W)
        types = {"label": label_type, "inst": "INT32", "feat": "FP32"}
        dims = {"label": label_dims, "inst": [1, H, W],
                "feat": [self.engine.config.feat_num, H, W]}
        return types, dims

    def triton_names(self) -> tuple[str, str]:
        return TRITON_NAMES.get(self.engine.info.backend, ("", self.engine.info.backend))

    def config(self) -> dict:
        """Triton's model configuration (model_config.proto as JSON), consistent with
        metadata(): the same inputs, datatypes and per-frame dims (batch dimension left out, as
        Triton does when max_batch_size > 0)."""
        H, W = self._frame_dims()
        platform, backend = self.triton_names()
        types, dims = self._input_types(H, W)
        device = getattr(self.engine, "device", "cpu")
        gpu = str(device).startswith("cuda")
        group = {"name": self.name, "kind": "KIND_GPU" if gpu else "KIND_CPU", "count": 1}
        if gpu:
            idx = str(device).partition(":")[2]
            group["gpus"] = [int(idx) if idx.isdigit() else 0]
        return {
            "name": self.name, "platform": platform, "backend": backend,
            "version_policy": {"all": {}},
            "max_batch_size": self.max_batch_size,
            "input": [{"name": n, "data_type": "TYPE_" + types[n],
                       "format": "FORMAT_NONE", "dims": dims[n],
                       "optional": n == "feat" or (n == "inst" and
                                                   self.settings.derive_instances),
                       "allow_ragged_batch": False, "is_shape_tensor": False}
                      for n in self.inputs],
            "output": [{"name": "image", "data_type": "TYPE_UINT8", "dims": [H, W, 3],
                        "label_filename": "", "is_shape_tensor": False}],
            "dynamic_batching": {
                "preferred_batch_size": [self.max_batch_size],
                "max_queue_delay_microseconds": self.settings.max_queue_delay_us,
                "preserve_ordering": True,
                "default_queue_policy": {"max_queue_size": self.settings.max_queue,
                                         "timeout_action": "REJECT"},
            },
            "instance_group": [group],
            "default_model_filename": self.source.name if self.source else "",
            # What runs, in the words every command uses (engines.describe_engine's line).
            "parameters": {"engine": {"string_value": str(
                self.engine.info.extra.get("engine") or getattr(self.engine, "name", backend))},
                           "precision": {"string_value": self.engine.info.precision}},
        }


# ---------------------------------------------------------------------------- results


@dataclass
class InferResult:
    model_name: str
    model_version: str
    id: str | None
    outputs: list[tuple[str, np.ndarray, bool]] = field(default_factory=list)  # name, array, binary
    # output name -> the parameters of the shared-memory region it was written to
    shared: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- the dataplane


class DataPlane:
    """models: the ServedModels to serve from the start. repository: a Repository
    (repository.py) to index and (with explicit=True) load and unload from."""

    def __init__(self, models: list[ServedModel], *, repository=None, explicit: bool = False,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.repository = repository
        self.explicit = explicit
        self.max_pixels = max_pixels
        self._lock = threading.RLock()
        self._models: dict[str, dict[str, ServedModel]] = {}
        self._reasons: dict[str, str] = {}          # name -> why it is not loaded
        for m in models:
            self._models.setdefault(m.name, {})[m.version] = m
        self._started = False
        self._closed = False
        self.failures: dict[str, int] = {}          # kind -> count, every fault of every call
        self._retired_sizes: Counter = Counter()    # engine calls of unloaded models
        self.shared_memory = SharedMemory()         # the regions every front door shares

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        with self._lock:
            for versions in self._models.values():
                for m in versions.values():
                    m.start()
            self._started = True

    def close(self) -> None:
        """Refuse new requests, finish every admitted frame, close every Runtime."""
        with self._lock:
            self._closed = True
            models = [m for v in self._models.values() for m in v.values()]
        for m in models:
            m.close()
        self.shared_memory.close()

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        with self._lock:
            return self._started and not self._closed

    # ------------------------------------------------------------------ lookup

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def versions(self, name: str) -> list[str]:
        with self._lock:
            return sorted(self._models.get(name, {}), key=_version_key)

    def model(self, name: str, version: str | None = None) -> ServedModel:
        with self._lock:
            versions = self._models.get(name)
            if versions is None:
                if self.repository is not None and name in self.repository.scan():
                    raise RuntimeClosed(f"model {name!r} is not loaded"
                                        f"{self._why(name)}")
                known = ", ".join(repr(n) for n in sorted(self._models)) or "none"
                raise NotFound(f"unknown model {name!r} (this server has {known})")
            if version in (None, ""):
                return versions[max(versions, key=_version_key)]
            m = versions.get(str(version))
            if m is None:
                raise NotFound(f"model {name!r} has no version {version!r} (versions: "
                               f"{', '.join(sorted(versions, key=_version_key))})")
            return m

    def _why(self, name: str) -> str:
        reason = self._reasons.get(name)
        return f" ({reason})" if reason else ""

    def model_ready(self, name: str, version: str | None = None) -> bool:
        try:
            return self.model(name, version).ready
        except RuntimeClosed:
            return False

    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": server_version(), "extensions": EXTENSIONS}

    def model_metadata(self, name: str, version: str | None = None) -> dict:
        m = self.model(name, version)
        return m.metadata(self.versions(name))

    def model_config(self, name: str, version: str | None = None) -> dict:
        return self.model(name, version).config()

    def element_limit(self, name: str, version: str | None = None) -> int:
        m = self.model(name, version)
        if not self.max_pixels:
            return 2**40
        return self.max_pixels * m.settings.max_queue * max(1, m.engine.config.feat_num)

    # ------------------------------------------------------------------ inference

    async def infer(self, name: str, version: str | None, request: InferRequest, *,
                    disconnected: Callable[[], Awaitable] | None = None) -> InferResult:
        """A KServe v2 infer request -> its outputs (every output is the image, uint8
        [B,H,W,3]). Checks inputs against the model, admits its B frames together, and counts
        the request in the model's statistics."""
        t0 = time.perf_counter_ns()
        m = self.model(name, version)
        m.stats.request_started()
        timings: list = []
        frames = 0
        try:
            pool = m.running()
            label, inst, feat, style, seed, outputs = self._check(m, request)
            frames = label.shape[0]
            if feat is not None:
                fut = pool.submit_with_features(label, inst, feat)
                rgb = (await self._wait(pool, [fut], timings, disconnected))[0]
            else:
                names = ["label"] if frames == 1 else [f"label[{i}]" for i in range(frames)]
                # One frame of the input kind: ids [H,W], or an RGB image [H,W,3].
                one = (lambda i: label[i]) if m.input_kind == RGB else (lambda i: label[i, 0])
                futures = pool.submit([(one(i), None if inst is None else inst[i, 0])
                                       for i in range(frames)], style, seed, names)
                rgb = np.stack(await self._wait(pool, futures, timings, disconnected))
            shared = {out: self._place(request.output_parameters[out], out, rgb)
                      for out, _ in outputs if out in request.output_parameters}
        except BaseException as e:
            self._count(m, t0, frames, timings, e)
            raise
        self._count(m, t0, frames, timings, None)
        return InferResult(m.name, m.version, request.id,
                           [(out, rgb, binary) for out, binary in outputs], shared)

    def _place(self, params: dict, name: str, rgb: np.ndarray) -> dict:
        """Write an output into its shared-memory region -> the response's parameters."""
        n = self.shared_memory.write(params, name, rgb)
        out = {"shared_memory_region": params["shared_memory_region"],
               "shared_memory_byte_size": n}
        if params.get("shared_memory_offset"):
            out["shared_memory_offset"] = params["shared_memory_offset"]
        return out

    async def synthesize(self, name: str, version: str | None, frames: list[tuple],
                         style: str | None = None, seed=0, names: list[str] | None = None, *,
                         disconnected: Callable[[], Awaitable] | None = None) -> list:
        """(label, inst) id maps [H,W] -> uint8 [H,W,3] images, batched with every other
        request of the model and style (the multipart endpoint and the editor)."""
        t0 = time.perf_counter_ns()
        m = self.model(name, version)
        m.stats.request_started()
        timings: list = []
        try:
            pool = m.running()
            futures = pool.submit(frames, style, seed, names)
            images = await self._wait(pool, futures, timings, disconnected)
        except BaseException as e:
            self._count(m, t0, len(frames), timings, e)
            raise
        self._count(m, t0, len(frames), timings, None)
        return images

    def _check(self, m: ServedModel, req: InferRequest):
        for name in req.inputs:
            if name not in m.inputs:
                raise InputError(name, f"not an input of model {m.name!r} (inputs: "
                                       f"{', '.join(m.inputs)})")
        if "label" not in req.inputs:
            raise InputError("label", "the request has no 'label' input")
        rgb = m.input_kind == RGB
        label = _rgb_input(req.inputs["label"]) if rgb else \
            _ids_input(req.inputs["label"], "label")
        if label.shape[0] < 1:
            raise InputError("label", "batch dimension is 0")
        inst = None
        if "inst" in req.inputs:
            inst = _ids_input(req.inputs["inst"], "instance")
            want = (label.shape[0], 1, *label.shape[1:3]) if rgb else label.shape
            if inst.shape != tuple(want):
                raise InputError("inst", f"shape {list(inst.shape)} differs from label's "
                                         f"{list(label.shape)}" +
                                 (f" (expected {list(want)})" if rgb else ""))
        elif m.engine.config.needs_instance_map and not m.settings.derive_instances:
            raise InputError("inst", "this model needs an instance map input 'inst' (or a "
                                     "server started with --instances auto)")
        outputs = req.outputs or [("image", req.binary_default)]
        for name, _ in outputs:
            if name != "image":
                raise InputError(name, f"not an output of model {m.name!r} (outputs: image)")
            if name in req.output_parameters:         # its region holds it: checked up front
                B, _, H, W = label.shape
                self.shared_memory.check_output(req.output_parameters[name], name, B * H * W * 3)
        style, seed = req.parameters.get("style"), req.parameters.get("seed", 0)
        if style is not None and not isinstance(style, str):
            raise OptionError("style", f"{style!r} is not a string")
        if isinstance(seed, float) or isinstance(seed, bool):
            raise OptionError("seed", f"{seed!r} is not an integer")
        feat = None
        if "feat" in req.inputs:
            t = req.inputs["feat"]
            if t.datatype not in FLOAT_TYPES:
                raise InputError("feat", f"datatype {t.datatype}: the feature map is FP32")
            if style is not None:
                raise OptionError("style", "give a style or a feature map 'feat', not both")
            feat = t.array
        return label, inst, feat, style, seed, outputs

    async def _wait(self, pool: RuntimePool, futures: list, timings: list,
                    disconnected: Callable[[], Awaitable] | None) -> list:
        """The results of runtime Futures, in order; the first failure raises once all are done
        (so no frame of a failed request is still running when its answer goes out). If the
        client goes first, the frames not yet dispatched are cancelled and Cancelled raised."""
        gathered = asyncio.gather(*(asyncio.wrap_future(f) for f in futures),
                                  return_exceptions=True)
        gone = False
        if disconnected is None:
            results = await gathered
        else:
            watch = asyncio.ensure_future(disconnected())
            try:
                done, _ = await asyncio.wait({gathered, watch},
                                             return_when=asyncio.FIRST_COMPLETED)
                if gathered not in done:
                    gone = True
                    dropped = sum(f.cancel() for f in futures)
                    results = await gathered       # frames already computing finish
            finally:
                watch.cancel()
            if not gone:
                results = gathered.result()
        timings.extend(getattr(f, "timing", None) for f in futures)
        if gone:
            raise Cancelled("request", f"the client went away; {dropped} of {len(futures)} "
                                       f"frames dropped before the engine")
        for r in results:
            if isinstance(r, BaseException):
                if isinstance(r, asyncio.CancelledError):
                    raise Cancelled("request", "its frames were cancelled")
                raise r
        return results

    def _count(self, m: ServedModel, t0: int, frames: int, timings: list,
               error: BaseException | None) -> None:
        reason = None
        if error is not None:
            reason = REASON_OF.get(fault_of(error).kind, "OTHER")
        m.stats.request_done(time.perf_counter_ns() - t0, frames, timings, id(m.pool), reason)

    def failure(self, kind: str) -> None:
        with self._lock:
            self.failures[kind] = self.failures.get(kind, 0) + 1

    # ------------------------------------------------------------------ statistics

    def statistics(self, name: str | None = None, version: str | None = None) -> dict:
        """Triton's statistics extension: every loaded model version, or one model (all its
        versions, or one)."""
        if name in (None, ""):
            with self._lock:
                models = [m for n in sorted(self._models) for m in
                          (self._models[n][v] for v in sorted(self._models[n], key=_version_key))]
        elif version in (None, ""):
            self.model(name)
            with self._lock:
                vs = self._models[name]
                models = [vs[v] for v in sorted(vs, key=_version_key)]
        else:
            models = [self.model(name, version)]
        return {"model_stats": [m.stats.json() for m in models]}

    def served(self) -> list[ServedModel]:
        """Every loaded model version (for metrics)."""
        with self._lock:
            return [m for v in self._models.values() for m in v.values()]

    # ------------------------------------------------------------------ repository

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        """Triton's repository index: every model version in the repository (or, without one,
        every served model) with its state (READY, UNAVAILABLE) and why."""
        with self._lock:
            rows = []
            found = self.repository.scan() if self.repository is not None else {}
            names = sorted(set(found) | set(self._models))
            for name in names:
                loaded = self._models.get(name, {})
                for v in sorted(set(found.get(name, {})) | set(loaded), key=_version_key):
                    m = loaded.get(v)
                    if m is not None and m.ready:
                        rows.append({"name": name, "version": v, "state": "READY"})
                    elif not ready_only:
                        rows.append({"name": name, "version": v, "state": "UNAVAILABLE",
                                     "reason": self._reasons.get(name, "unloaded")})
            return rows

    def load(self, name: str) -> None:
        """Load (or reload) every version of `name` from the repository; in-flight requests of
        a reloaded model finish on the old Runtimes."""
        if self.repository is None:
            raise NotFound("the server has no model repository (--model-repository)")
        if not self.explicit:
            raise OptionError("model control", "load and unload need --model-control-mode "
                                               "explicit")
        models: list[ServedModel] = []
        try:
            models = self.repository.open(name, self.max_pixels)
            for m in models:
                m.start()
        except BaseException as e:
            for m in models:           # the versions already started
                m.close()
            if isinstance(e, Error):
                with self._lock:
                    self._reasons[name] = one_line(e)
            raise
        with self._lock:
            old = self._models.pop(name, {})
            self._models[name] = {m.version: m for m in models}
            self._reasons.pop(name, None)
        self._retire(old.values())
        log.info("loaded model %r versions %s", name, ", ".join(m.version for m in models))

    def unload(self, name: str) -> None:
        """Stop serving `name`: new requests are refused; admitted frames finish first."""
        if self.repository is None:
            raise NotFound("the server has no model repository (--model-repository)")
        if not self.explicit:
            raise OptionError("model control", "load and unload need --model-control-mode "
                                               "explicit")
        with self._lock:
            if name not in self._models and name not in self.repository.scan():
                raise NotFound(f"unknown model {name!r}")
            old = self._models.pop(name, {})
            self._reasons[name] = "unloaded"
        self._retire(old.values())
        log.info("unloaded model %r", name)

    def _retire(self, models) -> None:
        """Close models taken out of service, keeping their engine calls in batch_sizes()."""
        for m in models:
            m.close()
            if m.pool is not None:
                with self._lock:
                    self._retired_sizes.update(m.pool.batch_sizes())

    def batch_sizes(self) -> Counter:
        """{frames per engine call: calls} over every model the server has served."""
        with self._lock:
            total = Counter(self._retired_sizes)
            models = [m for v in self._models.values() for m in v.values()]
        for m in models:
            if m.pool is not None:
                total.update(m.pool.batch_sizes())
        return total


def _version_key(v: str):
    return (0, int(v)) if v.isdigit() else (1, v)


def _ids_input(t, what: str) -> np.ndarray:
    if t.datatype not in INTEGER_TYPES:
        raise InputError(t.name, f"datatype {t.datatype}: {what} ids must be an integer type "
                                 f"(INT32)")
    a = t.array
    if a.ndim != 4 or a.shape[1] != 1:
        raise InputError(t.name, f"shape {list(a.shape)}; expected [batch, 1, H, W]")
    # Range-checked here, where the input's name is known (the Runtime names a frame by its
    # label): an INT64 inst of 2**40 is a fault of `inst`.
    return as_ids(a, f"{what} map", t.name).numpy()


def _rgb_input(t) -> np.ndarray:
    """A label_nc 0 model's label input: its RGB input images, UINT8 [batch, H, W, 3]."""
    if t.datatype != "UINT8":
        raise InputError(t.name, f"datatype {t.datatype}: this model takes RGB input images, "
                                 f"UINT8 [batch, H, W, 3]")
    a = t.array
    if a.ndim != 4 or a.shape[3] != 3:
        raise InputError(t.name, f"shape {list(a.shape)}; expected [batch, H, W, 3] (an RGB "
                                 f"input image per frame)")
    return a
