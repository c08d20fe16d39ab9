"""The KServe v2 / Triton gRPC front door of `p2phd-infer serve` (`--grpc-port`): Triton's
`inference.GRPCInferenceService` (protos/, generated with grpcio-tools) over the same DataPlane
as the HTTP routes, so both speak to the same models, Runtimes, batching, statistics and
shared-memory regions, and a fault gets the same one-line message (as the gRPC status detail,
with the status code dataplane.fault_of names).

It runs on grpc.aio in the HTTP server's event loop (started and stopped by the app's lifespan),
so a gRPC request awaits its Runtime Futures exactly as an HTTP one does.

Tensors: an input's bytes come from `raw_input_contents` (one entry per input not in shared
memory, in input order, little-endian row-major, as tritonclient sends them), from its typed
`contents`, or from a shared-memory region (its `shared_memory_*` parameters). The image comes
back in `raw_output_contents`, or is written into the region its requested output names.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

import click
import grpc
from google.protobuf import json_format

from ..errors import InputError, OptionError
from .dataplane import DataPlane, fault_of
from .kserve import InferRequest, check_tensor, tensor_from_raw, tensor_from_values
from .protos import grpc_service_pb2 as pb
from .protos import inference_service_pb2_grpc as pb_grpc
from .shared_memory import uses_shared_memory

log = logging.getLogger("p2phd_infer.serve")

# InferTensorContents field holding each datatype's values (Triton's grpc_service.proto).
CONTENTS_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
                  "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
                  "UINT16": "uint_contents", "UINT32": "uint_contents",
                  "UINT64": "uint64_contents", "FP32": "fp32_contents",
                  "FP64": "fp64_contents"}


def _param(p) -> object:
    """An InferParameter / ModelRepositoryParameter -> its Python value (None when unset)."""
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def _params(m) -> dict:
    return {k: _param(v) for k, v in m.items()}


def decode_infer(msg: pb.ModelInferRequest, shared_memory, max_elements: int) -> InferRequest:
    """A ModelInferRequest -> the dataplane's InferRequest, every input a checked numpy array.
    InputError for anything malformed (unknown datatype, sizes that do not match, a raw entry too
    many or too few, a region fault)."""
    raw = list(msg.raw_input_contents)
    inputs, used = {}, 0
    for i, t in enumerate(msg.inputs):
        name = t.name or f"inputs[{i}]"
        if not t.name:
            raise InputError(name, "has no name")
        if name in inputs:
            raise InputError(name, "given twice")
        params = _params(t.parameters)
        shape = list(t.shape)
        if any(d < 0 for d in shape):
            raise InputError(name, f"shape {shape} must be non-negative")
        dtype, count = check_tensor(name, t.datatype, tuple(shape), max_elements)
        if uses_shared_memory(params):
            tensor = tensor_from_raw(name, t.datatype, shape,
                                     shared_memory.read(params, name, count * dtype.itemsize),
                                     max_elements)
        elif raw:
            if used >= len(raw):
                raise InputError(name, f"raw_input_contents has {len(raw)} entries; input "
                                       f"{name!r} has none")
            tensor = tensor_from_raw(name, t.datatype, shape, raw[used], max_elements)
            used += 1
        else:
            field = CONTENTS_FIELD.get(t.datatype)
            if field is None:
                raise InputError(name, f"datatype {t.datatype} has no typed contents; send it "
                                       f"in raw_input_contents")
            tensor = tensor_from_values(name, t.datatype, shape,
                                        getattr(t.contents, field), max_elements)
        inputs[name] = tensor
    if used != len(raw):
        raise InputError("raw_input_contents", f"{len(raw)} entries for {used} inputs")
    outputs, out_params = [], {}
    for i, o in enumerate(msg.outputs):
        if not o.name:
            raise InputError(f"outputs[{i}]", "has no name")
        params = _params(o.parameters)
        if "classification" in params:
            raise InputError(o.name, "the classification extension is not supported")
        outputs.append((o.name, True))
        if uses_shared_memory(params):
            out_params[o.name] = params
    return InferRequest(msg.id or None, inputs, _params(msg.parameters), outputs, True,
                        out_params)


def encode_infer(result) -> pb.ModelInferResponse:
    out = pb.ModelInferResponse(model_name=result.model_name,
                                model_version=result.model_version, id=result.id or "")
    shared = getattr(result, "shared", {}) or {}
    for name, array, _ in result.outputs:
        t = out.outputs.add(name=name, datatype="UINT8", shape=list(array.shape))
        if name in shared:
            for k, v in shared[name].items():
                if isinstance(v, str):
                    t.parameters[k].string_param = v
                else:
                    t.parameters[k].int64_param = int(v)
        # One raw entry per output, empty for one in shared memory: Triton's C++ client (and so
        # perf_analyzer) reads raw_output_contents[i] for the i-th output without a bound check.
        out.raw_output_contents.append(b"" if name in shared else array.tobytes())
    return out


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """Each method: the request message -> the dataplane call -> the response message; any fault
    aborts the call with its status code and one-line message."""

    def __init__(self, dp: DataPlane, frames_done=None):
        self.dp = dp
        self.shm = dp.shared_memory
        self._frames_done = frames_done or (lambda n: None)

    async def _fail(self, context, e: BaseException):
        f = fault_of(e)
        if f.kind == "internal":
            log.error("internal error on gRPC %s", type(e).__name__, exc_info=e)
        elif f.kind == "engine":
            log.error("engine fault: %s", e, exc_info=getattr(e, "error", None))
        self.dp.failure(f.kind)
        await context.abort(getattr(grpc.StatusCode, f.grpc), f.message)

    async def _call(self, context, fn, *args, blocking: bool = False):
        try:
            if blocking:
                return await asyncio.to_thread(fn, *args)
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - every fault answers this call, a bug too
            await self._fail(context, e)

    # ------------------------------------------------------------------ health and metadata

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.dp.live())

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.dp.ready())

    async def ModelReady(self, request, context):
        ready = await self._call(context, self.dp.model_ready, request.name,
                                 request.version or None)
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request, context):
        return json_format.ParseDict(self.dp.server_metadata(), pb.ServerMetadataResponse())

    async def ModelMetadata(self, request, context):
        meta = await self._call(context, self.dp.model_metadata, request.name,
                                request.version or None)
        return json_format.ParseDict(meta, pb.ModelMetadataResponse())

    async def ModelConfig(self, request, context):
        config = await self._call(context, self.dp.model_config, request.name,
                                  request.version or None)
        response = pb.ModelConfigResponse()
        json_format.ParseDict(config, response.config)
        return response

    async def ModelStatistics(self, request, context):
        stats = await self._call(context, self.dp.statistics, request.name or None,
                                 request.version or None)
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

    # ------------------------------------------------------------------ inference

    async def _infer(self, request: pb.ModelInferRequest, disconnected=None):
        """One infer request -> its response message; raises the project's errors."""
        version = request.model_version or None
        limit = self.dp.element_limit(request.model_name, version)
        req = await asyncio.to_thread(decode_infer, request, self.shm, limit)
        result = await self.dp.infer(request.model_name, version, req,
                                     disconnected=disconnected)
        if result.outputs:
            self._frames_done(result.outputs[0][1].shape[0])
        return await asyncio.to_thread(encode_infer, result)

    async def ModelInfer(self, request, context):
        gone = asyncio.Event()
        context.add_done_callback(lambda _c: gone.set())

        async def disconnected():
            await gone.wait()

        # The call runs in a task of its own: when the client cancels or its deadline passes,
        # grpc.aio cancels this handler; the dataplane then sees the client gone (`gone`), drops
        # the frames the engine has not taken and counts the request as cancelled.
        task = asyncio.ensure_future(self._infer(request, disconnected))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            gone.set()
            try:
                await task
            except Exception as e:  # noqa: BLE001 - Cancelled, or whatever ended it first
                f = fault_of(e)
                self.dp.failure(f.kind)
                log.info("cancelled: gRPC ModelInfer %s: %s", request.model_name, f.message)
            raise
        except Exception as e:  # noqa: BLE001 - every fault answers this call, a bug too
            await self._fail(context, e)

    async def ModelStreamInfer(self, request_iterator, context):
        """Each request of the stream answered as soon as it is done (several in flight at
        once, so they batch together); a failed one answers with its error_message and the
        stream goes on, as Triton's does."""
        answers: asyncio.Queue = asyncio.Queue()
        pending: set = set()

        async def one(req):
            try:
                answers.put_nowait(pb.ModelStreamInferResponse(
                    infer_response=await self._infer(req)))
            except Exception as e:  # noqa: BLE001 - the fault answers this request only
                f = fault_of(e)
                if f.kind == "internal":
                    log.error("internal error on gRPC stream", exc_info=e)
                self.dp.failure(f.kind)
                answers.put_nowait(pb.ModelStreamInferResponse(
                    error_message=f.message,
                    infer_response=pb.ModelInferResponse(model_name=req.model_name,
                                                         model_version=req.model_version,
                                                         id=req.id)))

        async def read():
            async for req in request_iterator:
                task = asyncio.ensure_future(one(req))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*list(pending))
            answers.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while True:
                item = await answers.get()
                if item is None:
                    break
                yield item
        finally:
            reader.cancel()

    # ------------------------------------------------------------------ repository

    async def RepositoryIndex(self, request, context):
        rows = await self._call(context, self.dp.repository_index, bool(request.ready))
        return json_format.ParseDict({"models": rows}, pb.RepositoryIndexResponse(),
                                     ignore_unknown_fields=True)

    def _control_params(self, request, allowed: tuple) -> None:
        extra = sorted(set(request.parameters) - set(allowed))
        if extra:
            raise OptionError(request.model_name, f"load/unload parameters "
                                                  f"{', '.join(extra)} are not supported")

    async def RepositoryModelLoad(self, request, context):
        await self._call(context, self._control_params, request, ())
        await self._call(context, self.dp.load, request.model_name, blocking=True)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        await self._call(context, self._control_params, request, ("unload_dependents",))
        await self._call(context, self.dp.unload, request.model_name, blocking=True)
        return pb.RepositoryModelUnloadResponse()

    # ------------------------------------------------------------------ shared memory

    async def _regions(self, context, kind: str, name: str, response_type):
        regions = await self._call(context, self.shm.status, kind, name)
        out = response_type()
        for r in regions:
            out.regions[r["name"]].CopyFrom(response_type.RegionStatus(**r))
        return out

    async def SystemSharedMemoryStatus(self, request, context):
        return await self._regions(context, "system", request.name,
                                   pb.SystemSharedMemoryStatusResponse)

    async def SystemSharedMemoryRegister(self, request, context):
        await self._call(context, self.shm.register_system, request.name, request.key,
                         request.offset, request.byte_size, blocking=True)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request, context):
        await self._call(context, self.shm.unregister, "system", request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(self, request, context):
        return await self._regions(context, "cuda", request.name,
                                   pb.CudaSharedMemoryStatusResponse)

    async def CudaSharedMemoryRegister(self, request, context):
        await self._call(context, self.shm.register_cuda, request.name, request.raw_handle,
                         request.device_id, request.byte_size, blocking=True)
        return pb.CudaSharedMemoryRegisterResponse()

    async def CudaSharedMemoryUnregister(self, request, context):
        await self._call(context, self.shm.unregister, "cuda", request.name)
        return pb.CudaSharedMemoryUnregisterResponse()


# The calls an orchestrator's probes make without credentials (as HTTP's /v2/health/*).
OPEN_METHODS = ("/inference.GRPCInferenceService/ServerLive",
                "/inference.GRPCInferenceService/ServerReady")


class KeyCheck(grpc.aio.ServerInterceptor):
    """The server's API keys (access.AccessPolicy.check_key) on every call but the health
    probes: `authorization: Bearer KEY` metadata, as tritonclient sends it through `headers`.
    A call without a valid key ends UNAUTHENTICATED before its method runs."""

    def __init__(self, access, dp: DataPlane):
        self.access, self.dp = access, dp

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method in OPEN_METHODS:
            return handler
        auth = next((v for k, v in details.invocation_metadata or ()
                     if k.lower() == "authorization"), None)
        try:
            self.access.check_key(auth if isinstance(auth, str) else None)
            return handler
        except Exception as e:  # noqa: BLE001 - AccessDenied (or a bug): answers this call
            f = fault_of(e)
        self.dp.failure(f.kind)

        async def deny(request, context):
            await context.abort(getattr(grpc.StatusCode, f.grpc), f.message)

        async def deny_stream(requests, context):
            await context.abort(getattr(grpc.StatusCode, f.grpc), f.message)
            yield  # an async generator, as a streaming handler must be

        codec = dict(request_deserializer=handler.request_deserializer,
                     response_serializer=handler.response_serializer)
        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny_stream, **codec)
        return grpc.unary_unary_rpc_method_handler(deny, **codec)


def grpc_server(dp: DataPlane, sock_address: str, *, max_message_bytes: int,
                frames_done=None, access=None) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server of `dp` bound to `sock_address` ("host:port"), not yet started; and the
    port it bound (for port 0). access: an AccessPolicy whose API keys every call but the health
    probes must carry. OptionError when the address cannot be bound."""
    interceptors = [KeyCheck(access, dp)] if access is not None and access.keys else []
    server = grpc.aio.server(interceptors=interceptors, options=[
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 0),
    ])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(dp, frames_done), server)
    try:
        port = server.add_insecure_port(sock_address)
    except RuntimeError as e:
        raise OptionError("--grpc-port", f"cannot listen on {sock_address} ({e})") from None
    if port == 0:
        raise OptionError("--grpc-port", f"cannot listen on {sock_address}")
    return server, port


@contextlib.asynccontextmanager
async def serving(dp: DataPlane, address: str, *, max_message_bytes: int, frames_done=None,
                  access=None, grace_s: float = 30.0):
    """The gRPC server of `dp` on `address` for the body of the `async with` (the HTTP app's
    lifespan): started in the running event loop, then stopped, letting calls in flight finish
    for up to grace_s."""
    server, port = grpc_server(dp, address, max_message_bytes=max_message_bytes,
                               frames_done=frames_done, access=access)
    await server.start()
    host = address.rsplit(":", 1)[0]
    click.echo(f"p2phd-infer serve: gRPC on {host}:{port}", err=True)
    try:
        yield server
    finally:
        await server.stop(grace_s)
