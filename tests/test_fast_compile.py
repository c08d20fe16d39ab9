"""Every Triton kernel compiles for Hopper (sm_90) without register spills, no GPU needed.

Triton's interpreter runs the kernels' Python, not the compiler, so a kernel can pass every CPU
test and still spill registers or fail to compile on the GPU. Spills are a property of the
machine code: PTX has virtual registers and no spill code (`.local` there is only what the source
asks for), so they show only in what ptxas reports when it assembles the PTX (`ptxas -v`: "Used N
registers", "N bytes spill stores, M bytes spill loads"). tests/sm90_ptxas.py records each
kernel's launches from its real launcher on meta tensors of a 2048x1024 frame, lets Triton's own
binder specialise them as a CUDA launch would, compiles them for sm_90 and runs the ptxas that
ships in the triton wheel on each. A subprocess, because the interpreter (switched on for the CPU
tests) cannot compile. Skipped, with the reason, where triton has no CUDA backend or no ptxas.

Found this way: the pooled dense encoding of G1's first layer (encode_codes, 40 channels in one
64-wide block) used 255 registers and spilled 2560 B per thread; in 16-channel blocks of 32
pixels it uses 69 and spills nothing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("sm90_ptxas.py")
sys.path.insert(0, str(SCRIPT.parent))
from sm90_ptxas import parse_ptxas  # noqa: E402

# The launches the report must contain (a renamed launcher must not drop a kernel silently).
EXPECTED = {
    "label_conv full O=32", "label_conv pooled O=64", "encode_codes pooled C=40",
    "encode_codes full C=40", "insert instance_mean C=3", "accumulate instance_mean C=3",
    "gather instance_mean C=3", "feature_scatter F=4",
    *(f"{k} instance_norm C=32 1024x2048 pad=0" for k in ("stats", "finalize", "apply")),
    *(f"{k} instance_norm C=1024 32x64 pad=1 +res" for k in ("stats", "finalize", "apply")),
    *(f"{k} instance_norm C=1024 1024x2048 pad=0" for k in ("stats", "finalize", "apply")),
}
# 16-byte vector loads where the data allows them: table rows, channels_last activations.
VECTOR_LOADS = ["label_conv full O=32", "label_conv pooled O=64",
                "stats instance_norm C=32 1024x2048 pad=0",
                "apply instance_norm C=1024 32x64 pad=1 +res"]

PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_encode_codes_kernel' for 'sm_90a'
ptxas info    : Function properties for _encode_codes_kernel
    1712 bytes stack frame, 2560 bytes spill stores, 2596 bytes spill loads
ptxas info    : Used 255 registers, used 0 barriers, 1712 bytes cumulative stack size
"""


def test_parse_ptxas_verbose_output():
    assert parse_ptxas(PTXAS_LOG) == {"registers": 255, "spill_stores": 2560,
                                      "spill_loads": 2596, "stack": 1712}
    with pytest.raises(RuntimeError, match="no register/spill line"):
        parse_ptxas("ptxas info    : 0 bytes gmem\n")


def test_kernels_compile_for_sm90_without_spills():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = str(SCRIPT.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.run([sys.executable, str(SCRIPT), "--json"], env=env, cwd=root,
                              capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("compiling the kernels for sm_90 took over 5 minutes")
    lines = proc.stdout.splitlines()
    skip = next((ln for ln in lines if ln.startswith("SKIP ")), None)
    if skip is not None:
        pytest.skip(skip[5:])
    line = next((ln for ln in lines if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        err = (proc.stdout + proc.stderr).strip().splitlines()
        pytest.fail("compiling the kernels for sm_90 failed:\n" + "\n".join(err[-30:]))
    result = json.loads(line[len("RESULT "):])
    missing = EXPECTED - set(result)
    assert not missing, f"launches not recorded: {sorted(missing)}"
    spills = {n: r for n, r in result.items() if r["spill_stores"] or r["spill_loads"]}
    assert not spills, f"register spills on sm_90: {spills}"
    # 255 is the most a thread may use: a kernel there is one change away from spilling.
    full = {n: r["registers"] for n, r in result.items() if r["registers"] >= 255}
    assert not full, f"at the register limit on sm_90: {full}"
    novec = [n for n in VECTOR_LOADS if result[n]["v4_loads"] == 0]
    assert not novec, f"no 16-byte vector loads: {novec}"
