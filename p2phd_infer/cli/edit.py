"""`p2phd-infer edit`: the editor (p2phd_infer/serve/editor.py) in a browser, on the serve app."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError, MissingDependency
from ..serve.options import EditOptions
from .options import click_options
from .serve import _listen, run_server

# The editor's swatches (one request per cluster) arrive together: a short wait batches them.
EDITOR_DELAY_US = 2000


@click.command("edit")
@click_options(EditOptions)
def edit_cmd(**options):
    """Edit label maps in the browser and see the synthesized image after each edit.

    Paint and fill classes, add and delete objects, pick each object's look from its class's
    feature clusters, undo/redo, load and download maps. Starts the server with the editor at
    / and prints its URL (it opens no browser). LABEL (+ --instances) is loaded first; the
    bundled samples are always offered.
    """
    o = EditOptions(**options)
    try:
        import uvicorn  # noqa: F401 - a missing server package fails before the engine loads

        from ..serve.access import AccessPolicy
        from ..serve.app import create_app
        from ..serve.editor import Sample, demo_samples
    except ImportError as e:
        raise MissingDependency("edit", f"needs {e.name}: pip install starlette uvicorn "
                                        f"prometheus-client python-multipart") from None
    samples = []
    label, inst, max_pixels = o.label, o.instances, o.max_pixels
    label_map = None
    if o.label_map is not None:
        from ..label_map import read_label_map
        label_map = read_label_map(o.label_map)
    if label is not None:
        from ..image_io import read_id_png, read_label_png
        lab = read_id_png(label, max_pixels) if label_map is None else \
            read_label_png(label, max_pixels, label_format="auto")   # one error line, now
        if inst is not None and read_id_png(inst, max_pixels).shape != lab.shape[:2]:
            raise InputError(inst, f"size differs from the label map {label}")
        samples.append(Sample(Path(label).stem, Path(label), Path(inst) if inst else None))
    names = {s.name for s in samples}
    samples += [s for s in demo_samples() if s.name not in names]
    sock = _listen(o.host, o.port)
    from ..engines import open_engine
    eng = open_engine(o.engine, o.device, precision=o.precision, mode=o.mode,
                      calibration=o.calibration)
    app = create_app(eng, max_batch_size=o.max_batch_size, max_queue_delay_us=EDITOR_DELAY_US,
                     max_pixels=max_pixels, editor=True, samples=samples,
                     editor_label_map=label_map and label_map.for_model(eng.config.label_nc),
                     access=AccessPolicy.for_bind(o.host))
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    click.echo(f"p2phd-infer edit: {eng.name} on {eng.device}; open http://{shown}:{bound[1]}/",
               err=True)
    run_server(app, sock, o.log_level)
