"""`p2phd-infer serve`: the inference server (p2phd_infer/serve/): HTTP on uvicorn, gRPC on
grpc.aio in the same event loop."""
from __future__ import annotations

import signal
import socket
import sys

import click

from ..errors import MissingDependency, OptionError
from ..serve.options import ServeOptions
from .options import click_options


@click.command("serve")
@click_options(ServeOptions)
def serve_cmd(**options):
    """Serve models over HTTP (KServe v2 / Triton /v2/..., /v1/synthesize, /metrics) and gRPC
    (Triton's GRPCInferenceService on --grpc-port).

    Concurrent requests batch together as `run`'s frames do. Requests from other web sites,
    with a foreign Host header, or (with an API key) without the key are refused. SIGTERM (or
    Ctrl-C) stops accepting, answers every admitted request, closes the runtimes and exits 0.
    """
    o = ServeOptions(**options)
    try:
        import uvicorn  # noqa: F401 - a missing server package fails before the engine loads

        from ..serve.access import AccessPolicy, read_key_file
        from ..serve.app import create_app
        from ..serve.dataplane import DataPlane, ModelSettings
        from ..serve.editor import demo_samples
        from ..serve.repository import Repository
    except ImportError as e:
        raise MissingDependency("serve", f"needs {e.name}: pip install starlette uvicorn "
                                         f"prometheus-client python-multipart") from None
    keys = ([o.api_key] if o.api_key else []) + \
        (read_key_file(o.api_key_file) if o.api_key_file else [])
    access = AccessPolicy.for_bind(o.host, allow_hosts=o.allow_host,
                                   allow_origins=o.allow_origin, keys=keys)
    sock = _listen(o.host, o.port)
    grpc_address = None
    if not o.no_grpc:
        if o.grpc_port != 0:
            if o.grpc_port == sock.getsockname()[1]:
                raise OptionError("--grpc-port", f"{o.grpc_port} is the HTTP --port")
            _listen(o.host, o.grpc_port, "--grpc-port").close()   # busy: one clear error, now
        grpc_address = f"[{o.host}]:{o.grpc_port}" if ":" in o.host else \
            f"{o.host}:{o.grpc_port}"
    from ..engines import open_engine
    limits = dict(max_body_bytes=o.max_body_bytes, max_pixels=o.max_pixels, access=access,
                  grpc_address=grpc_address, editor=o.editor,
                  samples=demo_samples() if o.editor else None)
    model_repository = o.model_repository
    from ..label_map import read_label_map
    label_map = read_label_map(o.label_map) if o.label_map else None
    if model_repository is None:
        eng = open_engine(o.engine, o.device, precision=o.precision, mode=o.mode,
                          calibration=o.calibration)
        app = create_app(eng, model_name=o.model_name, max_batch_size=o.max_batch_size,
                         max_queue_delay_us=o.max_queue_delay_us, max_queue=o.max_queue,
                         style_cache=o.style_cache, derive_instances=o.instances == "auto",
                         label_map=label_map and label_map.for_model(eng.config.label_nc),
                         **limits)
        what = f"model {o.model_name!r} ({eng.name}, {eng.device})"
    else:
        # One label map for every model of the repository: its targets are checked per frame
        # against the model that serves it (ids.check_maps).
        settings = ModelSettings(max_batch_size=o.max_batch_size,
                                 max_queue_delay_us=o.max_queue_delay_us, max_queue=o.max_queue,
                                 style_cache=o.style_cache,
                                 derive_instances=o.instances == "auto", label_map=label_map)
        repo = Repository(model_repository,
                          lambda path: open_engine(path, o.device, precision=o.precision,
                                                   calibration=o.calibration,
                                                   mode=o.mode), settings)
        found = repo.scan()
        explicit = o.model_control_mode == "explicit"
        names = sorted(found) if not explicit or "*" in o.load_model else list(o.load_model)
        for name in names:
            if name not in found:
                have = ", ".join(found) or "no models"
                raise OptionError("--load-model", f"{name!r} is not a model of "
                                                  f"{model_repository} ({have})")
        if not names and not explicit:
            raise OptionError("--model-repository", f"{model_repository} holds no model (a "
                                                    f"folder NAME/1/ with model.pt, .onnx, "
                                                    f".xml or .plan)")
        models = [m for name in names for m in repo.open(name, o.max_pixels)]
        dp = DataPlane(models, repository=repo, explicit=explicit, max_pixels=o.max_pixels)
        app = create_app(dataplane=dp, **limits)
        what = (f"{len(models)} model versions from {model_repository} "
                f"({', '.join(names) or 'none loaded'})")
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    click.echo(f"p2phd-infer serve: {what} on http://{shown}:{bound[1]}"
               + (f"; the editor: open http://{shown}:{bound[1]}/" if o.editor else ""), err=True)
    # grpc.aio runs in uvicorn's event loop: the standard asyncio loop, which it supports (uvicorn
    # would otherwise take uvloop where it is installed).
    run_server(app, sock, o.log_level, loop="auto" if grpc_address is None else "asyncio")


def run_server(app, sock: socket.socket, log_level: str, loop: str = "auto") -> None:
    """The app on uvicorn over a listening socket, until SIGTERM or Ctrl-C; exit 1 if it never
    started (serve and edit). loop: uvicorn's event loop choice."""
    import logging

    import uvicorn
    # The server's own lines (loads, cancellations, engine faults) at the same level as
    # uvicorn's, one line each.
    ours = logging.getLogger("p2phd_infer.serve")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        ours.addHandler(handler)
        ours.propagate = False
    ours.setLevel(log_level.upper())
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on",
                                           access_log=False, loop=loop))
    # uvicorn handles SIGTERM/SIGINT itself (stop accepting, finish requests, lifespan shutdown),
    # then raises the signal again against the handler that was there before it. A no-op there
    # makes a finished graceful shutdown exit 0 instead of dying of that second signal.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    if not server.started:
        sys.exit(1)


def _listen(host: str, port: int, option: str = "--port") -> socket.socket:
    """A bound, listening socket (so a busy port is one clear error, and --port 0 works)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise OptionError("--host", f"{host!r}: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise OptionError(option, f"cannot listen on {host}:{port} ({e.strerror or e})") \
            from None
    sock.set_inheritable(True)
    return sock
