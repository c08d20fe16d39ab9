"""The ASGI app of `p2phd-infer serve` (Starlette): KServe v2 / Triton endpoints, a multipart
endpoint for people, Prometheus metrics.

    GET  /v2/health/live, /v2/health/ready, /v2          server liveness, readiness, metadata
    GET  /v2/models/{name}[/versions/1][/ready]          model metadata, readiness
    POST /v2/models/{name}[/versions/1]/infer            JSON tensors or the binary extension
    POST /v1/synthesize                                  multipart label PNG [+ inst PNG] -> image
    GET  /metrics                                        Prometheus text format
    GET  /, /static/*, /editor/*                         the editor (editor.py; with editor=True)

Every frame goes through a Runtime (runtime.py) via backend.Backend, so frames of concurrent
requests batch together; the handler awaits the Runtime's Future (asyncio.wrap_future) and never
blocks the event loop: body parsing, PNG decode and encode run on worker threads.

Errors are KServe's shape, {"error": "<one line>"}: a bad request 400, an unknown model or path
404, a body over --max-body-mb 413, a full queue 503 with Retry-After, an engine fault 500 (only
the frames of that engine call fail).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..engines import Engine
from ..errors import EngineFault, Error, InputError, OptionError, QueueFull, RuntimeClosed
from ..image_io import encode_image, read_id_png
from ..plan import DEFAULT_MAX_PIXELS
from .backend import Backend
from .kserve import FLOAT_TYPES, HEADER_LENGTH, INTEGER_TYPES, TooLarge, decode_request, \
    decompress, encode_response
from .metrics import ServerMetrics

log = logging.getLogger("p2phd_infer.serve")

MODEL_VERSION = "1"
RETRY_AFTER_S = "1"
SERVER_NAME = "p2phd-infer"
# Triton's extension names for what this server speaks beyond the core protocol.
EXTENSIONS = ["binary_tensor_data", "parameters"]


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("p2phd-infer")
    except Exception:  # noqa: BLE001 - running from a source tree that is not installed
        return "0"


class _Fault(Exception):
    def __init__(self, status: int, message: str, kind: str):
        super().__init__(message)
        self.status, self.kind = status, kind


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or e.__class__.__name__


def create_app(engine: Engine, *, model_name: str = "p2phd", max_batch_size: int = 1,
               max_delay_us: int = 0, max_queue: int = 64, max_body_bytes: int = 64 << 20,
               max_pixels: int | None = DEFAULT_MAX_PIXELS, style_cache: int = 4,
               jpeg_quality: int = 95, decode_workers: int | None = None,
               editor: bool = False, samples: list | None = None) -> Starlette:
    """The app over `engine`. Its Runtimes start with the app (lifespan startup) and are closed,
    after every admitted frame is answered, at shutdown. editor: also serve the editor page at /
    (editor.py), with `samples` (editor.Sample) to load."""
    cfg = engine.config
    info = engine.info
    state: dict = {}

    def backend() -> Backend:
        b = state.get("backend")
        if b is None or not b.ready:
            raise RuntimeClosed("the server is not ready")
        return b

    metrics = ServerMetrics(lambda: state["backend"].batch_sizes() if "backend" in state else {},
                            lambda: state["backend"].queue_depth() if "backend" in state else 0,
                            max_batch_size)
    H, W = info.size if info.size is not None else (-1, -1)
    inputs_meta = [{"name": "label", "datatype": "INT32", "shape": [-1, 1, H, W]}]
    if cfg.needs_instance_map:
        inputs_meta.append({"name": "inst", "datatype": "INT32", "shape": [-1, 1, H, W]})
    if cfg.feat_num > 0:
        inputs_meta.append({"name": "feat", "datatype": "FP32",
                            "shape": [-1, cfg.feat_num, H, W]})
    model_meta = {"name": model_name, "versions": [MODEL_VERSION],
                  "platform": f"p2phd_{info.backend}",
                  "inputs": inputs_meta,
                  "outputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, H, W, 3]}]}
    known_inputs = [m["name"] for m in inputs_meta]

    # ------------------------------------------------------------------ plumbing

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def endpoint(name: str):
        """Wrap a handler: errors -> KServe error responses; count and time every answer."""
        def wrap(fn):
            async def handle(request: Request) -> Response:
                t0 = time.perf_counter()
                kind = None
                try:
                    response = await fn(request)
                except _Fault as e:
                    response, kind = error(e.status, str(e)), e.kind
                except TooLarge as e:
                    response, kind = error(413, str(e)), "too_large"
                except QueueFull as e:
                    response, kind = error(503, _one_line(e), {"Retry-After": RETRY_AFTER_S}), \
                        "queue_full"
                except RuntimeClosed as e:
                    response, kind = error(503, _one_line(e), {"Retry-After": RETRY_AFTER_S}), \
                        "closed"
                except (InputError, OptionError) as e:
                    response, kind = error(400, _one_line(e)), "input"
                except EngineFault as e:
                    log.error("engine fault: %s", e, exc_info=e.error)
                    response, kind = error(500, _one_line(e)), "engine"
                except Error as e:
                    response, kind = error(400, _one_line(e)), "input"
                except Exception as e:  # noqa: BLE001 - a bug must still answer this request
                    log.exception("internal error on %s", request.url.path)
                    response, kind = error(500, f"internal error: {_one_line(e)}"), "internal"
                if kind is not None:
                    metrics.failure(kind)
                metrics.observe(name, response.status_code, time.perf_counter() - t0)
                return response
            return handle
        return wrap

    async def read_body(request: Request) -> bytes:
        """The whole body, refusing (413) one over max_body_bytes before reading it when the
        Content-Length says so, and as soon as it grows past the limit otherwise (chunked)."""
        length = request.headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > max_body_bytes:
            raise TooLarge(f"the body of {int(length):,} bytes is over the limit of "
                           f"{max_body_bytes:,} (--max-body-mb)")
        chunks, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > max_body_bytes:
                raise TooLarge(f"the body is over the limit of {max_body_bytes:,} bytes "
                               f"(--max-body-mb)")
            chunks.append(chunk)
        return b"".join(chunks)

    def check_model(request: Request) -> None:
        name = request.path_params["name"]
        version = request.path_params.get("version")
        if name != model_name:
            raise _Fault(404, f"unknown model {name!r} (this server has {model_name!r})",
                         "not_found")
        if version is not None and version not in ("", MODEL_VERSION):
            raise _Fault(404, f"model {name!r} has no version {version!r} (versions: "
                              f"{MODEL_VERSION})", "not_found")

    # ------------------------------------------------------------------ health and metadata

    @endpoint("health")
    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    @endpoint("health")
    async def ready(request: Request) -> Response:
        if "backend" not in state or not state["backend"].ready:
            return JSONResponse({"ready": False}, status_code=503)
        return JSONResponse({"ready": True})

    @endpoint("metadata")
    async def server_meta(request: Request) -> Response:
        return JSONResponse({"name": SERVER_NAME, "version": _version(),
                             "extensions": EXTENSIONS})

    @endpoint("metadata")
    async def model_metadata(request: Request) -> Response:
        check_model(request)
        return JSONResponse(model_meta)

    @endpoint("health")
    async def model_ready(request: Request) -> Response:
        check_model(request)
        ok = "backend" in state and state["backend"].ready
        return JSONResponse({"name": model_name, "ready": ok}, status_code=200 if ok else 503)

    # ------------------------------------------------------------------ inference

    def ids_input(t, what: str):
        if t.datatype not in INTEGER_TYPES:
            raise InputError(t.name, f"datatype {t.datatype}: {what} ids must be an integer "
                                     f"type (INT32)")
        a = t.array
        if a.ndim != 4 or a.shape[1] != 1:
            raise InputError(t.name, f"shape {list(a.shape)}; expected [batch, 1, H, W]")
        return a

    @endpoint("infer")
    async def infer(request: Request) -> Response:
        check_model(request)
        body = await read_body(request)
        body = decompress(body, request.headers.get("content-encoding"), max_body_bytes)
        max_elements = max_pixels * max_queue * max(1, cfg.feat_num) if max_pixels else 2**40
        req = await asyncio.to_thread(decode_request, body, request.headers.get(HEADER_LENGTH),
                                      max_elements)
        for name in req.inputs:
            if name not in known_inputs:
                raise InputError(name, f"not an input of model {model_name!r} (inputs: "
                                       f"{', '.join(known_inputs)})")
        if "label" not in req.inputs:
            raise InputError("label", "the request has no 'label' input")
        label = ids_input(req.inputs["label"], "label")
        B = label.shape[0]
        if B < 1:
            raise InputError("label", "batch dimension is 0")
        inst = None
        if "inst" in req.inputs:
            inst = ids_input(req.inputs["inst"], "instance")
            if inst.shape != label.shape:
                raise InputError("inst", f"shape {list(inst.shape)} differs from label's "
                                         f"{list(label.shape)}")
        elif cfg.needs_instance_map:
            raise InputError("inst", "this model needs an instance map input 'inst'")
        outputs = req.outputs or [("image", req.binary_default)]
        for name, _ in outputs:
            if name != "image":
                raise InputError(name, f"not an output of model {model_name!r} (outputs: image)")
        style, seed = req.parameters.get("style"), req.parameters.get("seed", 0)
        if style is not None and not isinstance(style, str):
            raise OptionError("style", f"{style!r} is not a string")
        b = backend()
        if "feat" in req.inputs:
            t = req.inputs["feat"]
            if t.datatype not in FLOAT_TYPES:
                raise InputError("feat", f"datatype {t.datatype}: the feature map is FP32")
            if style is not None:
                raise OptionError("style", "give a style or a feature map 'feat', not both")
            rgb = await asyncio.wrap_future(b.submit_with_features(label, inst, t.array))
        else:
            names = ["label"] if B == 1 else [f"label[{i}]" for i in range(B)]
            futures = b.submit([(label[i, 0], None if inst is None else inst[i, 0])
                                for i in range(B)], style, seed, names)
            rgb = np.stack(await _gather(futures))
        metrics.frames_done(B)
        body, headers = await asyncio.to_thread(
            encode_response, model_name, MODEL_VERSION, req.id,
            [(name, rgb, binary) for name, binary in outputs])
        return Response(body, headers=headers)

    @endpoint("synthesize")
    async def synthesize(request: Request) -> Response:
        body = await read_body(request)
        form = await _parse_form(request, body, max_body_bytes)
        try:
            label_up, inst_up = form.get("label"), form.get("inst")
            if label_up is None or isinstance(label_up, str):
                raise InputError("label", "a multipart file field 'label' (the label map PNG) "
                                          "is required")
            if isinstance(inst_up, str):
                raise InputError("inst", "must be a file field (the instance map PNG)")
            label_bytes = await label_up.read()
            inst_bytes = await inst_up.read() if inst_up is not None else None
            style = form.get("style") or None
            seed = form.get("seed") or 0
            fmt = str(form.get("format") or "png").lower()
        finally:
            await form.close()
        if fmt not in ("png", "jpg", "jpeg"):
            raise OptionError("format", f"{fmt!r}: png or jpg")
        if not isinstance(style, (str, type(None))) or not isinstance(seed, (str, int)):
            raise OptionError("style", "style and seed are text fields")
        label = await asyncio.to_thread(read_id_png, label_bytes, max_pixels, name="label")
        inst = None
        if inst_bytes is not None:
            inst = await asyncio.to_thread(read_id_png, inst_bytes, max_pixels, name="inst")
        rgb = (await _gather(backend().submit([(label, inst)], style, seed, ["label"])))[0]
        metrics.frames_done(1)
        data = await asyncio.to_thread(encode_image, rgb, "png" if fmt == "png" else "jpg",
                                       jpeg_quality)
        return Response(data, media_type="image/png" if fmt == "png" else "image/jpeg")

    @endpoint("metrics")
    async def prometheus(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------ the app

    async def not_found(request: Request, exc: HTTPException) -> Response:
        metrics.failure("not_found")
        metrics.observe("other", exc.status_code, 0.0)
        return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state["backend"] = await asyncio.to_thread(
            Backend, engine, max_batch_size=max_batch_size, max_delay_us=max_delay_us,
            max_queue=max_queue, max_pixels=max_pixels, style_cache=style_cache,
            decode_workers=decode_workers)
        try:
            yield
        finally:
            # uvicorn has stopped accepting and answered every request it had; close() still
            # finishes any frame left (none should be) and joins the Runtimes' threads.
            await asyncio.to_thread(state["backend"].close)

    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_meta, methods=["GET"]),
        Route(model, model_metadata, methods=["GET"]),
        Route(versioned, model_metadata, methods=["GET"]),
        Route(model + "/ready", model_ready, methods=["GET"]),
        Route(versioned + "/ready", model_ready, methods=["GET"]),
        Route(model + "/infer", infer, methods=["POST"]),
        Route(versioned + "/infer", infer, methods=["POST"]),
        Route("/v1/synthesize", synthesize, methods=["POST"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    if editor:
        from .editor import editor_routes
        routes += editor_routes(engine, backend, endpoint, read_body, samples or [],
                                max_pixels=max_pixels, frames_done=metrics.frames_done,
                                parse_form=_parse_form)
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: not_found, 405: not_found})
    app.state.metrics = metrics
    app.state.serve = state
    return app


async def _gather(futures) -> list:
    """The results of runtime Futures, in order; the first failure raises once all are done
    (so no frame of a failed request is still running when its answer goes out)."""
    results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures),
                                   return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


async def _parse_form(request: Request, body: bytes, limit: int):
    """Parse an already-read (size-checked) multipart body."""
    from starlette.formparsers import MultiPartException

    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form(max_files=2, max_fields=16,
                                                         max_part_size=limit)
    except MultiPartException as e:
        raise InputError("request", f"bad multipart body ({e.message})") from None
    except (ValueError, KeyError) as e:
        raise InputError("request", f"bad form body ({_one_line(e)})") from None
