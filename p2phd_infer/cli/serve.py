"""`p2phd-infer serve`: the HTTP inference server (p2phd_infer/serve/) on uvicorn."""
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
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve_cmd(engine, host, port, model_name, max_batch_size, max_delay_us, max_queue, device,
              precision, mode, max_body_mb, max_pixels, style_cache, log_level):
    """Serve the model over HTTP: KServe v2 / Triton (/v2/...), /v1/synthesize, /metrics.

    Concurrent requests batch together as `run`'s frames do. SIGTERM (or Ctrl-C) stops
    accepting, answers every admitted request, closes the runtime and exits 0.
    """
    try:
        import uvicorn  # noqa: F401 - a missing server package fails before the engine loads

        from ..serve.app import create_app
    except ImportError as e:
        raise MissingDependency("serve", f"needs {e.name}: pip install starlette uvicorn "
                                         f"prometheus-client python-multipart") from None
    if not model_name or "/" in model_name:
        raise OptionError("--model-name", f"{model_name!r} must be non-empty and without '/'")
    sock = _listen(host, port)
    from ..engines import open_engine
    eng = open_engine(engine, device, precision=precision, mode=mode)
    app = create_app(eng, model_name=model_name, max_batch_size=max_batch_size,
                     max_delay_us=max_delay_us, max_queue=max_queue,
                     max_body_bytes=int(max_body_mb * (1 << 20)), max_pixels=max_pixels,
                     style_cache=style_cache)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    click.echo(f"p2phd-infer serve: model {model_name!r} ({eng.name}, {eng.device}) on "
               f"http://{shown}:{bound[1]}", err=True)
    run_server(app, sock, log_level)


def run_server(app, sock: socket.socket, log_level: str) -> None:
    """The app on uvicorn over a listening socket, until SIGTERM or Ctrl-C; exit 1 if it never
    started (serve and edit)."""
    import uvicorn
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


def _listen(host: str, port: int) -> socket.socket:
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
        raise OptionError("--port", f"cannot listen on {host}:{port} ({e.strerror or e})") \
            from None
    sock.set_inheritable(True)
    return sock
