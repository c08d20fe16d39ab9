"""benchmarks/throughput.py --quick runs end to end on the CPU and writes its tables (about 45 s
on the 2-core dev box; the official generator's 183 M weights dominate at this size). Timings are
written, never asserted."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_writes_json_and_ratio_table(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--quick",
                          "--out-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads((tmp_path / "throughput_quick.json").read_text())
    assert data["meta"]["size"] == "256x128" and data["meta"]["device"] == "cpu"
    assert "Random weights" in data["meta"]["weights"]
    rows = data["rows"]
    kinds = {(r["mode"], r["engine"], r["batch"], r["format"]) for r in rows}
    for fmt in ("", "jpg", "png"):
        mode = "engine-only" if not fmt else "end-to-end"
        assert any(k[0] == mode and k[1].startswith("baseline") and k[3] == fmt for k in kinds)
        for b in (1, 2):
            assert (mode, "model.pt eager", b, fmt) in kinds, (mode, b, fmt)
    for r in rows:
        assert r["ms_per_frame"] > 0 and r["frames_per_s"] > 0 and r["peak_mem_mib"] > 0
        assert r["vs_baseline"] > 0
        if r["engine"].startswith("baseline"):
            assert r["vs_baseline"] == 1.0
    table = (tmp_path / "throughput_quick.md").read_text()
    assert "| mode | engine | precision | batch | format | ms/frame | frames/s | × baseline" in table
    assert table.count("\n| end-to-end |") == 6 and table in res.stdout
