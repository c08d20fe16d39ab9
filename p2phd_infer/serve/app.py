"""The HTTP front door of `p2phd-infer serve` (Starlette): KServe v2 / Triton routes over the
dataplane (dataplane.py), a multipart endpoint for people, Prometheus metrics.

    GET  /v2/health/live, /v2/health/ready, /v2          server liveness, readiness, metadata
    GET  /v2/models/{name}[/versions/{v}][/ready]        model metadata, readiness
    GET  /v2/models/{name}[/versions/{v}]/config         Triton model configuration
    GET  /v2/models[/{name}[/versions/{v}]]/stats        statistics extension
    POST /v2/models/{name}[/versions/{v}]/infer          JSON tensors or the binary extension
    POST /v2/repository/index                            model repository extension
    POST /v2/repository/models/{name}/load|unload        explicit model control
    POST /v1/synthesize                                  multipart label PNG [+ inst PNG] -> image
    GET  /metrics                                        Prometheus text format
    GET  /, /static/*, /editor/*                         the editor (editor.py; with editor=True)

Every frame goes through the model's Runtimes, so frames of concurrent requests batch together;
handlers await the Runtime's Futures and never block the event loop: body parsing, PNG decode and
encode run on worker threads.

Errors are KServe's shape, {"error": "<one line>"}, with the status dataplane.fault_of gives: a bad
request 400, an unknown model or path 404, a body over --max-body-mb 413, a full queue 503 with
Retry-After, an engine fault 500 (only the frames of that engine call fail).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..engines import Engine
from ..errors import Cancelled, InputError, OptionError, RuntimeClosed, TooLarge
from ..image_io import encode_image, read_id_png
from ..plan import DEFAULT_MAX_PIXELS
from .access import AccessMiddleware, AccessPolicy
from .dataplane import DEFAULT_VERSION, DataPlane, ModelSettings, ServedModel, fault_of, \
    one_line
from .kserve import HEADER_LENGTH, decode_request, decompress, encode_response, loads
from .metrics import ServerMetrics
from .shared_memory_routes import shared_memory_routes

log = logging.getLogger("p2phd_infer.serve")

RETRY_AFTER_S = "1"


def create_app(engine: Engine | None = None, *, model_name: str = "p2phd",
               max_batch_size: int = 1, max_queue_delay_us: int = 0, max_queue: int = 64,
               max_body_bytes: int = 64 << 20, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               style_cache: int = 4, jpeg_quality: int = 95, decode_workers: int | None = None,
               editor: bool = False, samples: list | None = None,
               dataplane: DataPlane | None = None, access: AccessPolicy | None = None,
               grpc_address: str | None = None, derive_instances: bool = False,
               label_map=None, editor_label_map=None) -> Starlette:
    """The app over one `engine` served as `model_name` version 1, or over a `dataplane` (a model
    repository, several models). The models' Runtimes start with the app (lifespan startup) and
    are closed, after every admitted frame is answered, at shutdown. editor: also serve the
    editor page at / (editor.py) over the served models, with `samples` (editor.Sample) to load.
    access: the Host / Origin / API key checks (access.py) every request passes first; the
    commands always give one (None: an app embedded in a test or another ASGI server).
    grpc_address ("host:port"): also serve the gRPC protocol there (grpc_server.py), over the
    same dataplane and with the same API keys, for the app's life."""
    if dataplane is None:
        if engine is None:
            raise OptionError("engine", "create_app needs an engine or a dataplane")
        settings = ModelSettings(max_batch_size=max_batch_size,
                                 max_queue_delay_us=max_queue_delay_us, max_queue=max_queue,
                                 style_cache=style_cache, decode_workers=decode_workers,
                                 derive_instances=derive_instances, label_map=label_map)
        dataplane = DataPlane([ServedModel(model_name, DEFAULT_VERSION, engine, settings,
                                           max_pixels=max_pixels,
                                           source=getattr(engine, "path", None))],
                              max_pixels=max_pixels)
    dp = dataplane
    metrics = ServerMetrics(dp)

    # ------------------------------------------------------------------ plumbing

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def endpoint(name: str):
        """Wrap a handler: errors -> KServe error responses; count and time every answer."""
        def wrap(fn):
            async def handle(request: Request) -> Response:
                t0 = time.perf_counter()
                try:
                    response = await fn(request)
                except ClientDisconnect:
                    response = answer_fault(request, Cancelled("request", "the client went away "
                                                                          "mid-body"))
                except HTTPException as e:       # Starlette's own (a form it cannot parse)
                    response = http_fault(request, e)
                except Exception as e:  # noqa: BLE001 - every fault answers this request
                    response = answer_fault(request, e)
                metrics.observe(name, response.status_code, time.perf_counter() - t0)
                return response
            return handle
        return wrap

    def answer_fault(request: Request, e: BaseException) -> Response:
        f = fault_of(e)
        dp.failure(f.kind)
        if f.kind == "internal":
            log.exception("internal error on %s", request.url.path, exc_info=e)
        elif f.kind == "engine":
            log.error("engine fault: %s", f.message, exc_info=getattr(e, "error", None))
        elif f.kind == "cancelled":
            log.info("cancelled: %s %s: %s", request.method, request.url.path, f.message)
        return error(f.http, f.message, {"Retry-After": RETRY_AFTER_S} if f.retry else None)

    async def read_body(request: Request) -> bytes:
        """The whole body, refusing (413) one over max_body_bytes before reading it when the
        Content-Length says so, and as soon as it grows past the limit otherwise (chunked)."""
        length = request.headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > max_body_bytes:
            raise TooLarge("request", f"the body of {int(length):,} bytes is over the limit of "
                                      f"{max_body_bytes:,} (--max-body-mb)")
        chunks, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > max_body_bytes:
                raise TooLarge("request", f"the body is over the limit of {max_body_bytes:,} "
                                          f"bytes (--max-body-mb)")
            chunks.append(chunk)
        return b"".join(chunks)

    def disconnected(request: Request):
        """An awaitable that returns once the client has closed the connection (the body is
        already read, so the next ASGI message can only be the disconnect)."""
        async def wait():
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    return
                await asyncio.sleep(0.1)     # a server that repeats empty body messages
        return wait

    def name_version(request: Request) -> tuple[str, str | None]:
        return request.path_params["name"], request.path_params.get("version")

    # ------------------------------------------------------------------ health and metadata

    @endpoint("health")
    async def live(request: Request) -> Response:
        return JSONResponse({"live": dp.live()})

    @endpoint("health")
    async def ready(request: Request) -> Response:
        ok = dp.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @endpoint("metadata")
    async def server_meta(request: Request) -> Response:
        return JSONResponse(dp.server_metadata())

    @endpoint("metadata")
    async def model_metadata(request: Request) -> Response:
        return JSONResponse(dp.model_metadata(*name_version(request)))

    @endpoint("metadata")
    async def model_config(request: Request) -> Response:
        return JSONResponse(dp.model_config(*name_version(request)))

    @endpoint("health")
    async def model_ready(request: Request) -> Response:
        name, version = name_version(request)
        ok = dp.model_ready(name, version)              # NotFound (404) for an unknown one
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    @endpoint("stats")
    async def stats(request: Request) -> Response:
        return JSONResponse(dp.statistics(request.path_params.get("name"),
                                          request.path_params.get("version")))

    # ------------------------------------------------------------------ repository

    @endpoint("repository")
    async def repository_index(request: Request) -> Response:
        body = await read_body(request)
        ready_only = False
        if body.strip():
            doc = loads(body, "request")
            if not isinstance(doc, dict):
                raise InputError("request", "the repository index request must be a JSON object")
            ready_only = doc.get("ready") is True
        return JSONResponse(dp.repository_index(ready_only))

    def control_parameters(body: bytes) -> dict:
        if not body.strip():
            return {}
        doc = loads(body, "request")
        if not isinstance(doc, dict) or not isinstance(doc.get("parameters", {}), dict):
            raise InputError("request", "a load/unload request is a JSON object with an "
                                        "optional 'parameters' object")
        return doc.get("parameters", {})

    @endpoint("repository")
    async def repository_load(request: Request) -> Response:
        params = control_parameters(await read_body(request))
        given = [k for k in params if k == "config" or k.startswith("file:")]
        if given:
            raise OptionError(given[0], "loading with a configuration or files sent in the "
                                        "request is not supported: put them in the "
                                        "repository folder")
        await asyncio.to_thread(dp.load, request.path_params["name"])
        return JSONResponse({})

    @endpoint("repository")
    async def repository_unload(request: Request) -> Response:
        control_parameters(await read_body(request))   # unload_dependents: no ensembles here
        await asyncio.to_thread(dp.unload, request.path_params["name"])
        return JSONResponse({})

    # ------------------------------------------------------------------ inference

    @endpoint("infer")
    async def infer(request: Request) -> Response:
        name, version = name_version(request)
        limit = dp.element_limit(name, version)        # 404 before the body is read
        body = await read_body(request)
        body = decompress(body, request.headers.get("content-encoding"), max_body_bytes)
        req = await asyncio.to_thread(decode_request, body, request.headers.get(HEADER_LENGTH),
                                      limit, dp.shared_memory)
        result = await dp.infer(name, version, req, disconnected=disconnected(request))
        metrics.frames_done(result.outputs[0][1].shape[0] if result.outputs else 0)
        body, headers = await asyncio.to_thread(
            encode_response, result.model_name, result.model_version, result.id,
            result.outputs, result.shared)
        return Response(body, headers=headers)

    def first_model() -> str:
        """The model /v1/synthesize uses when the form names none: the first loaded."""
        names = dp.names()
        if not names:
            raise RuntimeClosed("no model is loaded")
        return names[0]

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
            model = form.get("model") or first_model()
        finally:
            await form.close()
        if fmt not in ("png", "jpg", "jpeg"):
            raise OptionError("format", f"{fmt!r}: png or jpg")
        if not isinstance(style, (str, type(None))) or not isinstance(seed, (str, int)) or \
                not isinstance(model, str):
            raise OptionError("style", "style, seed and model are text fields")
        label = await asyncio.to_thread(read_id_png, label_bytes, max_pixels, name="label")
        inst = None
        if inst_bytes is not None:
            inst = await asyncio.to_thread(read_id_png, inst_bytes, max_pixels, name="inst")
        rgb = (await dp.synthesize(model, None, [(label, inst)], style, seed, ["label"],
                                   disconnected=disconnected(request)))[0]
        metrics.frames_done(1)
        data = await asyncio.to_thread(encode_image, rgb, "png" if fmt == "png" else "jpg",
                                       jpeg_quality)
        return Response(data, media_type="image/png" if fmt == "png" else "image/jpeg")

    @endpoint("metrics")
    async def prometheus(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------ the app

    def http_fault(request: Request, exc: HTTPException) -> Response:
        """Starlette's HTTPException (no route, wrong method, a form it cannot parse): its own
        status, the one-line KServe error."""
        kind = "not_found" if exc.status_code in (404, 405) else \
            "input" if exc.status_code < 500 else "internal"
        dp.failure(kind)
        return error(exc.status_code, f"{request.method} {request.url.path}: "
                                      f"{one_line(Exception(exc.detail))}", exc.headers)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        response = http_fault(request, exc)
        metrics.observe("other", exc.status_code, 0.0)
        return response

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await asyncio.to_thread(dp.start)
        try:
            if grpc_address is None:
                yield
            else:
                from .grpc_server import serving
                async with serving(dp, grpc_address, max_message_bytes=max_body_bytes,
                                   frames_done=metrics.frames_done, access=access):
                    yield
        finally:
            # uvicorn has stopped accepting and answered every request it had; close() still
            # finishes any frame left (none should be) and joins the Runtimes' threads.
            await asyncio.to_thread(dp.close)

    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_meta, methods=["GET"]),
        Route("/v2/models/stats", stats, methods=["GET"]),
        Route(model, model_metadata, methods=["GET"]),
        Route(versioned, model_metadata, methods=["GET"]),
        Route(model + "/ready", model_ready, methods=["GET"]),
        Route(versioned + "/ready", model_ready, methods=["GET"]),
        Route(model + "/config", model_config, methods=["GET"]),
        Route(versioned + "/config", model_config, methods=["GET"]),
        Route(model + "/stats", stats, methods=["GET"]),
        Route(versioned + "/stats", stats, methods=["GET"]),
        Route(model + "/infer", infer, methods=["POST"]),
        Route(versioned + "/infer", infer, methods=["POST"]),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", repository_load, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", repository_unload, methods=["POST"]),
        Route("/v1/synthesize", synthesize, methods=["POST"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    routes += shared_memory_routes(dp.shared_memory, endpoint, read_body)
    if editor:
        from .editor import editor_routes
        routes += editor_routes(dp.model, endpoint, read_body, samples or [],
                                default=first_model(), max_pixels=max_pixels,
                                frames_done=metrics.frames_done, parse_form=_parse_form,
                                label_map=editor_label_map)

    def refused(kind: str, status: int) -> None:
        dp.failure(kind)
        metrics.observe("refused", status, 0.0)

    middleware = [] if access is None else [Middleware(AccessMiddleware, policy=access,
                                                       refused=refused)]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware,
                    exception_handlers={HTTPException: http_error})
    app.state.metrics = metrics
    app.state.dataplane = dp
    return app


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
    except HTTPException as e:           # Starlette wraps the parser's faults inside an app
        raise InputError("request", f"bad multipart body ({one_line(Exception(e.detail))})") \
            from None
    except (ValueError, KeyError) as e:
        raise InputError("request", f"bad form body ({one_line(e)})") from None
