#!/usr/bin/env python
"""A `perf_analyzer --input-data` file of real frames: label maps (and instance maps) read as the
server reads them, written as perf_analyzer's JSON (one "data" entry per frame, each input's
shape without the batch dimension and its INT32 little-endian bytes base64-encoded, which
perf_analyzer sends as they are). perf_analyzer's own random data is not a valid label map (ids
past the model's label_nc) and zeros are one class; these are the frames the model was made for.

    python benchmarks/perf_inputs.py --out perf_data.json          # the bundled demo samples
    python benchmarks/perf_inputs.py frames/ --instances insts/ --limit 32 --out perf_data.json
    perf_analyzer -m p2phd -u 127.0.0.1:8001 -i grpc --input-data perf_data.json

Every frame must have the same size (perf_analyzer sends one shape per input); --inst-as-label
writes each label map as the instance map too, for a model that needs one when none were made
(pix2pixHD's convention when a dataset has no instances: boundaries between classes only).
"""
from __future__ import annotations

import base64
import json
import sys

import click
import numpy as np


def entry(label: np.ndarray, inst: np.ndarray | None) -> dict:
    """One frame -> one perf_analyzer data entry {input: {content: {b64}, shape}}."""
    out = {}
    for name, ids in (("label", label), ("inst", inst)):
        if ids is None:
            continue
        raw = np.ascontiguousarray(ids, dtype="<i4").tobytes()
        out[name] = {"content": {"b64": base64.b64encode(raw).decode("ascii")},
                     "shape": [1, *ids.shape]}
    return out


def perf_inputs(labels: str, instances: str | None = None, *, limit: int | None = None,
                inst_as_label: bool = False) -> dict:
    """The --input-data document for the label maps under `labels`. OptionError when there are
    none or their sizes differ (InputError for an unreadable map, naming it)."""
    from p2phd_infer.errors import OptionError
    from p2phd_infer.image_io import read_id_png
    from p2phd_infer.plan import discover

    found = discover(labels, instances)
    if not found:
        raise OptionError("LABELS", f"no label maps in {labels}")
    data, size = [], None
    for name, label_path, inst_path in found[:limit]:
        label = read_id_png(label_path)
        inst = read_id_png(inst_path) if inst_path is not None else \
            (label if inst_as_label else None)
        if size is None:
            size = label.shape
        elif label.shape != size:
            raise OptionError("LABELS", f"{name} is {label.shape[1]}x{label.shape[0]}, the "
                                        f"first frame {size[1]}x{size[0]}: perf_analyzer sends "
                                        f"one shape per input")
        if instances is not None and inst_path is None:
            raise OptionError("--instances", f"no instance map pairs with {name}")
        data.append(entry(label, inst))
    return {"data": data}


@click.command()
@click.argument("labels", required=False)
@click.option("--instances", type=click.Path(exists=True, file_okay=False), default=None,
              help="Instance maps paired with the label maps by name [the samples' own when "
                   "LABELS is not given].")
@click.option("--inst-as-label", is_flag=True,
              help="Write each label map as its instance map too (no instance maps exist).")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="At most this many frames (perf_analyzer cycles through them).")
@click.option("--out", type=click.Path(dir_okay=False), required=True,
              help="The JSON file to write (replaced atomically).")
def main(labels, instances, inst_as_label, limit, out):
    """Write a perf_analyzer --input-data JSON file from LABELS (a folder or one PNG of ids)."""
    from p2phd_infer.errors import Error
    from p2phd_infer.files import write_atomic
    from p2phd_infer.plan import sample_labels

    if labels is None:
        labels = str(sample_labels())
        instances = instances or str(sample_labels().parent / "instances")
    try:
        doc = perf_inputs(labels, instances, limit=limit, inst_as_label=inst_as_label)
    except Error as e:
        raise SystemExit(f"error: {e}") from None
    write_atomic(out, json.dumps(doc) + "\n")
    shape = doc["data"][0]["label"]["shape"]
    print(f"{out}: {len(doc['data'])} frames, inputs {', '.join(doc['data'][0])}, shape "
          f"{shape}", file=sys.stderr)


if __name__ == "__main__":
    main()
