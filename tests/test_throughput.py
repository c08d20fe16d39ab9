"""benchmarks/throughput.py --quick at its smallest size (64x64, the official shape's minimum):
every row is there, its figures are sane, the end-to-end rows wrote their frames (and the images
are the official way's, up to rounding), and the JSON and Markdown say the same thing. About
15-25 s on the 2-core dev box (the official generator's 183 M random weights dominate). Timings
are checked for sanity, never against a speed target."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("jpg", "png")
BATCHES = (1, 2)


def md_rows(table: str) -> list[list[str]]:
    """The data rows of the first Markdown table, as lists of cell texts."""
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| mode | engine |") and set(rows[1]) <= set("|-: ")
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in rows[2:]]


def test_quick_benchmark_rows_outputs_and_reports_agree(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--quick",
                          "--size", "64x64", "--out-dir", str(out), "--work-dir", str(work)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads((out / "throughput_quick.json").read_text())
    meta, rows = data["meta"], data["rows"]
    assert meta["size"] == "64x64" and meta["device"] == "cpu" and meta["skipped"] == []
    n_e2e = meta["end_to_end_frames"]
    assert n_e2e == 2              # --quick's 2 frames, a whole number of the largest batch (2)

    # Every row, once: the baseline (engine-only and one end-to-end row per format), and the
    # plain eager engine at each batch size, engine-only and end-to-end per format.
    want = [("engine-only", "baseline: official G, eager", 1, "")]
    want += [("end-to-end", "baseline: official G, eager, serial", 1, f) for f in FORMATS]
    for b in BATCHES:
        want += [("engine-only", "model.pt eager", b, "")]
        want += [("end-to-end", "model.pt eager", b, f) for f in FORMATS]
    assert [(r["mode"], r["engine"], r["batch"], r["format"]) for r in rows] == want

    base = {(r["mode"], r["format"]): r["ms_per_frame"] for r in rows
            if r["engine"].startswith("baseline")}
    for r in rows:
        ms = r["ms_per_frame"]
        assert math.isfinite(ms) and ms > 0, r
        assert math.isclose(r["frames_per_s"], 1000 / ms, rel_tol=1e-9), r
        assert math.isfinite(r["peak_mem_mib"]) and r["peak_mem_mib"] > 0, r
        # Each ratio is against the baseline row of the same mode and format.
        assert math.isclose(r["vs_baseline"], base[(r["mode"], r["format"])] / ms,
                            rel_tol=1e-9), r
        if r["mode"] == "end-to-end" and not r["engine"].startswith("baseline"):
            assert r["frames"] == r["files"] == n_e2e, r

    # The end-to-end outputs exist and decode at the benchmark's size; the runtime's PNGs equal
    # the official way's up to rounding (the official tensor2im truncates, to_uint8 rounds: one
    # level), and that comparison does tell frames apart.
    for r in rows:
        if r["mode"] != "end-to-end":
            continue
        files = sorted((work / r["outputs"]).glob(f"*.{r['format']}"))
        assert len(files) == r["files"] >= 2, r
        for f in files:
            assert Image.open(f).size == (64, 64)
    base_png = next(r for r in rows if r["engine"].startswith("baseline") and r["format"] == "png")
    ref = {f.name: np.asarray(Image.open(f), dtype=np.int16)
           for f in (work / base_png["outputs"]).glob("*.png")}
    for r in rows:
        if r["engine"] == "model.pt eager" and r["format"] == "png":
            for name, want_img in ref.items():
                got = np.asarray(Image.open(work / r["outputs"] / name), dtype=np.int16)
                assert np.abs(got - want_img).max() <= 1, (r["batch"], name)
    a, b = sorted(ref)[:2]
    assert np.abs(ref[a] - ref[b]).max() > 1

    # The Markdown table holds the JSON rows, in order, with the same figures; stdout prints it.
    table = (out / "throughput_quick.md").read_text()
    cells = md_rows(table)
    assert len(cells) == len(rows)
    for c, r in zip(cells, rows):
        mode, engine, precision, batch, fmt, ms, fps, vs, mib, quality, note = c
        assert (mode, engine, precision, int(batch), fmt) == \
            (r["mode"], r["engine"], r["precision"], r["batch"], r["format"] or "-")
        assert ms == f"{r['ms_per_frame']:.2f}" and fps == f"{r['frames_per_s']:.2f}"
        assert vs == f"{r['vs_baseline']:.2f}" and mib == f"{r['peak_mem_mib']:.0f}"
        assert note == r["note"]
        # model.pt fp32 eager is the quality reference itself; the baseline has its own weights
        assert quality == ("-" if r["engine"].startswith("baseline") else "identical"), r
    assert "Throughput at 64x64" in table and table.strip() in res.stdout
