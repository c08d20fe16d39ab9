"""`p2phd-infer serve`: the inference server (p2phd_infer/serve/): HTTP on uvicorn, gRPC on
grpc.aio in the same event loop."""
from __future__ import annotations

import signal
import socket
import sys

import click

from ..errors import MissingDependency, OptionError
from ..plan import DEFAULT_MAX_PIXELS
from .base import engine_options


@click.command("serve")
@engine_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback by default: put a reverse proxy in front for "
                   "TLS and auth).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0: any free port, printed at start).")
@click.option("--grpc-port", default=8001, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port of the KServe v2 / Triton gRPC protocol, on --host too (0: any "
                   "free port, printed at start).")
@click.option("--no-grpc", is_flag=True, help="Serve HTTP only.")
@click.option("--model-name", default="p2phd", show_default=True,
              help="The model's name in /v2/models/NAME.")
@click.option("--max-batch-size", default=4, show_default=True, type=click.IntRange(1, 4096),
              help="Most frames per engine call; frames of concurrent requests batch together.")
@click.option("--max-delay-us", default=2000, show_default=True,
              type=click.IntRange(0, 60_000_000),
              help="How long a batch waits for more frames, in microseconds.")
@click.option("--max-queue", default=64, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Frames admitted at once; past it requests get 503 with Retry-After.")
@click.option("--max-body-mb", default=64.0, show_default=True,
              type=click.FloatRange(0.001, 65536),
              help="Largest request body, in MiB (after decompression); larger ones get 413.")
@click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True,
              type=click.IntRange(1, 2**34), help="Refuse frames with more pixels than this.")
@click.option("--style-cache", default=4, show_default=True, type=click.IntRange(0, 256),
              help="Features models: runtimes kept for (style, seed) keys besides the default.")
@click.option("--model-repository", type=click.Path(file_okay=False),
              help="Serve every model of a Triton-style repository: DIR/NAME/VERSION/model.pt "
                   "(or .onnx, .xml, .plan), optional DIR/NAME/config.pbtxt for its batching. "
                   "Instead of --engine.")
@click.option("--model-control-mode", type=click.Choice(["none", "explicit"]), default="none",
              show_default=True,
              help="With --model-repository: none (every model loaded at start, no load/unload) "
                   "or explicit (the --load-model ones at start; /v2/repository load/unload).")
@click.option("--load-model", multiple=True,
              help="Explicit model control: a model to load at start ('*': all); repeatable.")
@click.option("--allow-origin", multiple=True,
              help="A web origin (https://app.example) whose pages may call this server; "
                   "requests from any other site get 403. Repeatable; '*' allows any.")
@click.option("--allow-host", multiple=True,
              help="A Host header name to serve besides the bound address (and, on loopback, "
                   "localhost); others get 403 (DNS rebinding). Repeatable; '*' allows any.")
@click.option("--api-key", envvar="P2PHD_API_KEY", show_envvar=True,
              help="Require 'Authorization: Bearer KEY' on every request but the health "
                   "probes (at least 16 characters; the variable keeps it out of `ps`).")
@click.option("--api-key-file", type=click.Path(dir_okay=False),
              help="Like --api-key, the keys read from a file, one a line.")
@click.option("--insecure-no-auth", is_flag=True,
              help="Allow a non-loopback --host without an API key (behind a proxy that "
                   "authenticates).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve_cmd(engine, host, port, grpc_port, no_grpc, model_name, max_batch_size, max_delay_us,
              max_queue, device, precision, mode, max_body_mb, max_pixels, style_cache,
              model_repository, model_control_mode, load_model, allow_origin, allow_host,
              api_key, api_key_file, insecure_no_auth, log_level):
    """Serve models over HTTP (KServe v2 / Triton /v2/..., /v1/synthesize, /metrics) and gRPC
    (Triton's GRPCInferenceService on --grpc-port).

    Concurrent requests batch together as `run`'s frames do. Requests from other web sites,
    with a foreign Host header, or (with an API key) without the key are refused. SIGTERM (or
    Ctrl-C) stops accepting, answers every admitted request, closes the runtimes and exits 0.
    """
    try:
        import uvicorn  # noqa: F401 - a missing server package fails before the engine loads

        from ..serve.access import AccessPolicy, is_loopback, read_key_file
        from ..serve.app import create_app
        from ..serve.dataplane import DataPlane, ModelSettings
        from ..serve.repository import Repository
    except ImportError as e:
        raise MissingDependency("serve", f"needs {e.name}: pip install starlette uvicorn "
                                         f"prometheus-client python-multipart") from None
    if not model_name or "/" in model_name:
        raise OptionError("--model-name", f"{model_name!r} must be non-empty and without '/'")
    if model_repository is not None and engine is not None:
        raise OptionError("--model-repository", "give --engine (one model) or "
                                                "--model-repository, not both")
    if model_repository is None and (load_model or model_control_mode != "none"):
        raise OptionError("--model-control-mode", "model control needs --model-repository")
    if load_model and model_control_mode != "explicit":
        raise OptionError("--load-model", "needs --model-control-mode explicit (in mode none "
                                          "every model is loaded)")
    keys = ([api_key] if api_key else []) + (read_key_file(api_key_file) if api_key_file
                                             else [])
    if not keys and not is_loopback(host) and not insecure_no_auth:
        raise OptionError("--host", f"{host} is reachable from other machines: give --api-key "
                                    f"or --api-key-file (or --insecure-no-auth behind a proxy "
                                    f"that authenticates)")
    access = AccessPolicy.for_bind(host, allow_hosts=allow_host, allow_origins=allow_origin,
                                   keys=keys)
    sock = _listen(host, port)
    grpc_address = None
    if not no_grpc:
        if grpc_port != 0:
            if grpc_port == sock.getsockname()[1]:
                raise OptionError("--grpc-port", f"{grpc_port} is the HTTP --port")
            _listen(host, grpc_port, "--grpc-port").close()   # busy: one clear error, now
        grpc_address = f"[{host}]:{grpc_port}" if ":" in host else f"{host}:{grpc_port}"
    from ..engines import open_engine
    limits = dict(max_body_bytes=int(max_body_mb * (1 << 20)), max_pixels=max_pixels,
                  access=access, grpc_address=grpc_address)
    if model_repository is None:
        eng = open_engine(engine, device, precision=precision, mode=mode)
        app = create_app(eng, model_name=model_name, max_batch_size=max_batch_size,
                         max_delay_us=max_delay_us, max_queue=max_queue,
                         style_cache=style_cache, **limits)
        what = f"model {model_name!r} ({eng.name}, {eng.device})"
    else:
        settings = ModelSettings(max_batch_size=max_batch_size, max_delay_us=max_delay_us,
                                 max_queue=max_queue, style_cache=style_cache)
        repo = Repository(model_repository,
                          lambda path: open_engine(path, device, precision=precision,
                                                   mode=mode), settings)
        found = repo.scan()
        explicit = model_control_mode == "explicit"
        names = sorted(found) if not explicit or "*" in load_model else list(load_model)
        for name in names:
            if name not in found:
                have = ", ".join(found) or "no models"
                raise OptionError("--load-model", f"{name!r} is not a model of "
                                                  f"{model_repository} ({have})")
        if not names and not explicit:
            raise OptionError("--model-repository", f"{model_repository} holds no model (a "
                                                    f"folder NAME/1/ with model.pt, .onnx, "
                                                    f".xml or .plan)")
        models = [m for name in names for m in repo.open(name, max_pixels)]
        dp = DataPlane(models, repository=repo, explicit=explicit, max_pixels=max_pixels)
        app = create_app(dataplane=dp, **limits)
        what = (f"{len(models)} model versions from {model_repository} "
                f"({', '.join(names) or 'none loaded'})")
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    click.echo(f"p2phd-infer serve: {what} on http://{shown}:{bound[1]}", err=True)
    run_server(app, sock, log_level)


def run_server(app, sock: socket.socket, log_level: str) -> None:
    """The app on uvicorn over a listening socket, until SIGTERM or Ctrl-C; exit 1 if it never
    started (serve and edit)."""
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
                                           access_log=False))
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
