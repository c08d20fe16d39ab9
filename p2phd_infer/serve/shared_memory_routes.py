"""Triton's shared-memory extensions over HTTP (the gRPC calls are in grpc_server.py; the regions
in shared_memory.py):

    GET  /v2/systemsharedmemory[/region/{name}]/status     [{name, key, offset, byte_size}]
    POST /v2/systemsharedmemory/region/{name}/register     {key, offset, byte_size}
    POST /v2/systemsharedmemory[/region/{name}]/unregister
    GET  /v2/cudasharedmemory[/region/{name}]/status       [{name, device_id, byte_size}]
    POST /v2/cudasharedmemory/region/{name}/register       {raw_handle: {b64}, device_id,
                                                            byte_size}
    POST /v2/cudasharedmemory[/region/{name}]/unregister

A name in the path is the region; without one, unregister drops every region of that kind.
"""
from __future__ import annotations

import asyncio
import base64
import binascii

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import InputError
from .kserve import loads
from .shared_memory import SharedMemory


def shared_memory_routes(shm: SharedMemory, endpoint, read_body) -> list[Route]:
    """The routes, each wrapped by the app's `endpoint` (faults -> KServe errors, metrics)."""

    async def body_object(request: Request) -> dict:
        doc = loads(await read_body(request), "request")
        if not isinstance(doc, dict):
            raise InputError("request", "the register request must be a JSON object")
        return doc

    def status(kind: str):
        @endpoint("shared_memory")
        async def handle(request: Request) -> Response:
            return JSONResponse(shm.status(kind, request.path_params.get("name", "")))
        return handle

    def unregister(kind: str):
        @endpoint("shared_memory")
        async def handle(request: Request) -> Response:
            await read_body(request)
            shm.unregister(kind, request.path_params.get("name", ""))
            return JSONResponse({})
        return handle

    @endpoint("shared_memory")
    async def register_system(request: Request) -> Response:
        doc = await body_object(request)
        await asyncio.to_thread(shm.register_system, request.path_params["name"],
                                doc.get("key"), doc.get("offset", 0), doc.get("byte_size"))
        return JSONResponse({})

    @endpoint("shared_memory")
    async def register_cuda(request: Request) -> Response:
        name = request.path_params["name"]
        doc = await body_object(request)
        handle = doc.get("raw_handle")
        b64 = handle.get("b64") if isinstance(handle, dict) else None
        if not isinstance(b64, str):
            raise InputError(name, "raw_handle must be {\"b64\": <base64 of the CUDA IPC "
                                   "handle>}")
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(name, "raw_handle.b64 is not base64") from None
        await asyncio.to_thread(shm.register_cuda, name, raw, doc.get("device_id", 0),
                                doc.get("byte_size"))
        return JSONResponse({})

    routes = []
    for kind, prefix in (("system", "/v2/systemsharedmemory"), ("cuda", "/v2/cudasharedmemory")):
        region = prefix + "/region/{name}"
        routes += [
            Route(prefix + "/status", status(kind), methods=["GET"]),
            Route(region + "/status", status(kind), methods=["GET"]),
            Route(prefix + "/unregister", unregister(kind), methods=["POST"]),
            Route(region + "/unregister", unregister(kind), methods=["POST"]),
            Route(region + "/register",
                  register_system if kind == "system" else register_cuda, methods=["POST"]),
        ]
    return routes
