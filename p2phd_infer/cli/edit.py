"""`p2phd-infer edit`: the editor (p2phd_infer/serve/editor.py) in a browser, on the serve app."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError, MissingDependency
from ..plan import DEFAULT_MAX_PIXELS
from .base import engine_options
from .serve import _listen, run_server


@click.command("edit")
@click.argument("label", required=False, type=click.Path(dir_okay=False))
@click.option("--instances", "inst", type=click.Path(dir_okay=False),
              help="The instance map (16-bit PNG) of LABEL.")
@engine_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback by default).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0: any free port).")
@click.option("--max-batch-size", default=4, show_default=True, type=click.IntRange(1, 4096),
              help="Most frames per engine call (swatches and other clients batch together).")
@click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True,
              type=click.IntRange(1, 2**34), help="Refuse maps with more pixels than this.")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def edit_cmd(label, inst, engine, host, port, device, precision, mode, max_batch_size,
             max_pixels, log_level):
    """Edit label maps in the browser and see the synthesized image after each edit.

    Paint and fill classes, add and delete objects, pick each object's look from its class's
    feature clusters, undo/redo, load and download maps. Starts the server with the editor at
    / and prints its URL (it opens no browser). LABEL (+ --instances) is loaded first; the
    bundled samples are always offered.
    """
    try:
        import uvicorn  # noqa: F401 - a missing server package fails before the engine loads

        from ..serve.access import AccessPolicy
        from ..serve.app import create_app
        from ..serve.editor import Sample, demo_samples
    except ImportError as e:
        raise MissingDependency("edit", f"needs {e.name}: pip install starlette uvicorn "
                                        f"prometheus-client python-multipart") from None
    samples = []
    if label is not None:
        from ..image_io import read_id_png
        lab = read_id_png(label, max_pixels)          # a bad file is one error line, now
        if inst is not None and read_id_png(inst, max_pixels).shape != lab.shape:
            raise InputError(inst, f"size differs from the label map {label}")
        samples.append(Sample(Path(label).stem, Path(label), Path(inst) if inst else None))
    elif inst is not None:
        raise click.UsageError("--instances needs a LABEL map")
    names = {s.name for s in samples}
    samples += [s for s in demo_samples() if s.name not in names]
    sock = _listen(host, port)
    from ..engines import open_engine
    eng = open_engine(engine, device, precision=precision, mode=mode)
    app = create_app(eng, max_batch_size=max_batch_size, max_delay_us=2000,
                     max_pixels=max_pixels, editor=True, samples=samples,
                     access=AccessPolicy.for_bind(host))
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    click.echo(f"p2phd-infer edit: {eng.name} on {eng.device}; open http://{shown}:{bound[1]}/",
               err=True)
    run_server(app, sock, log_level)
