"""Compile every Triton kernel's production launches for Hopper (sm_90) and report what ptxas
says about each: registers per thread, spill stores/loads, stack frame.

No GPU needed. Each kernel's launcher (label_conv_triton, encode_codes, instance_norm_act_triton,
_instance_mean_triton, ...) is called on `meta` tensors of the product's shapes (a 2048x1024
Cityscapes frame through the default local model), with the kernel object replaced by a recorder,
so the launch arguments are exactly the ones the launcher passes on CUDA (its CUDA tiling branch:
meta is not "cpu"). Triton's own binder then turns those arguments into the specialisation a real
launch gets (ints equal to 1 as constants, 16-divisible ints and pointers marked so), Triton
compiles that to PTX for sm_90, and the ptxas shipped in the triton wheel assembles it with -v.
Register and spill counts only exist after ptxas: the PTX has none (it uses virtual registers).

Run: python tests/sm90_ptxas.py [--json] [--only SUBSTRING], without TRITON_INTERPRET (the
interpreter cannot compile).
Exit status 0 with a line `SKIP <why>` where this triton cannot compile for CUDA or has no ptxas.
tests/test_fast_compile.py runs this in a subprocess.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile

import torch

META = torch.device("meta")


class _Recorder:
    """Stands in for a @triton.jit kernel: kernel[grid](*args, **kw) records instead of running."""

    def __init__(self, kernel, sink: list, name: str):
        self.kernel, self.sink, self.name = kernel, sink, name

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.sink.append((self.name, self.kernel, grid, args, kwargs))
        return launch


def _empty(*shape, dtype=torch.float16, cl=False):
    fmt = torch.channels_last if cl else torch.contiguous_format
    return torch.empty(*shape, dtype=dtype, device=META, memory_format=fmt)


def record_launches() -> list:
    """(case name, kernel, grid, args, kwargs) for every production launch shape checked."""
    # The modules, not the functions of the same names that p2phd_infer.kernels exports.
    fs = importlib.import_module("p2phd_infer.kernels.feature_scatter")
    im = importlib.import_module("p2phd_infer.kernels.instance_mean")
    inorm = importlib.import_module("p2phd_infer.kernels.instance_norm")
    lc = importlib.import_module("p2phd_infer.kernels.label_conv")

    sink: list = []

    def run(case, mod, kernels, call):
        """call() with mod's kernels replaced by recorders; with several kernels, each case
        name starts with the kernel's (stats, finalize, apply, ...)."""
        saved = {k: getattr(mod, k) for k in kernels}
        for k, orig in saved.items():
            name = case if len(kernels) == 1 else f"{k.strip('_').removesuffix('_kernel')} {case}"
            setattr(mod, k, _Recorder(orig, sink, name))
        try:
            call()
        finally:
            for k, orig in saved.items():
                setattr(mod, k, orig)

    H, W = 1024, 2048                    # a Cityscapes frame, full resolution
    PH, PW = lc.pooled_size(H), lc.pooled_size(W)
    label_nc, ncode = 35, 72             # 35 classes + "no class", x edge
    code = _empty(1, 1, H, W, dtype=torch.uint8)
    # G2's front (ngf 32) on the full-res codes, + the 3 feature channels' conv.
    run("label_conv full O=32", lc, ["_label_conv_kernel"], lambda: lc.label_conv_triton(
        code, _empty(49, ncode, 32), _empty(32, dtype=torch.float32), 32, False,
        _empty(1, 32, H, W, cl=True), torch.float16, True))
    # G1's first layer (ngf 64) on the pooled codes (lookup_pooled=True).
    run("label_conv pooled O=64", lc, ["_label_conv_kernel"], lambda: lc.label_conv_triton(
        code, _empty(49, ncode, 64), _empty(64, dtype=torch.float32), 64, True,
        _empty(1, 64, PH, PW, cl=True), torch.float16, True))
    # The dense alternative (default for G1): the pooled one-hot, 36 -> 40 channels.
    run("encode_codes pooled C=40", lc, ["_encode_codes_kernel"], lambda: lc.encode_codes(
        code, label_nc, True, 40, True, torch.float16, True))
    run("encode_codes full C=40", lc, ["_encode_codes_kernel"], lambda: lc.encode_codes(
        code, label_nc, True, 40, False, torch.float16, True))
    # InstanceNorm at each stage of the local model (G2 ngf 32, G1 ngf 64, 4 downsamplings),
    # channels_last fp16; the residual blocks (1024 ch) add a view of a padded buffer.
    # The last case has 2^31 elements (1024 channels at full resolution): its strides pass
    # int32, so they arrive as i64 arguments (no production layer is that large).
    for C, h, w, pad, res in [(32, H, W, 0, False), (64, PH, PW, 3, False),
                              (128, PH // 2, PW // 2, 0, False), (1024, 32, 64, 1, True),
                              (1024, H, W, 0, False)]:
        def call(C=C, h=h, w=w, pad=pad, res=res):
            x = _empty(1, C, h, w, cl=True)
            r = _empty(1, C, h + 2, w + 2, cl=True)[:, :, 1:-1, 1:-1] if res else None
            inorm.instance_norm_act_triton(x, not res, r, pad)
        run(f"instance_norm C={C} {h}x{w} pad={pad}{' +res' if res else ''}", inorm,
            ["_stats_kernel", "_finalize_kernel", "_apply_kernel"], call)
    # Encoder features (3 channels) averaged per instance, full res.
    feat, inst = _empty(1, 3, H, W), _empty(1, 1, H, W, dtype=torch.int32)
    run("instance_mean C=3", im, ["_insert_kernel", "_accumulate_kernel", "_gather_kernel"],
        lambda: im._instance_mean_triton(feat, inst))
    run("feature_scatter F=4", fs, ["_feature_scatter_kernel"], lambda:
        fs._feature_scatter_triton(inst, _empty(1, 300, dtype=torch.int32), _empty(1, 300, 4)))
    return sink


def ptxas_path() -> str | None:
    import triton
    p = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    return p if os.path.exists(p) else None


def compile_ptx(kernel, args, kwargs, target):
    """The PTX of this launch's specialisation, through Triton's own binder and compiler."""
    import triton
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, spec, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, spec,
                                                              options)
    src = ASTSource(kernel, signature, constexprs, attrs)
    return triton.compile(src, target=target, options=options.__dict__).asm["ptx"]


def ptxas_report(ptxas: str, ptx: str) -> dict:
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        # The flags Triton's make_cubin uses (triton/backends/nvidia/compiler.py), sm_90a target.
        proc = subprocess.run([ptxas, "-lineinfo", "-v", "--regAllocOptLevel=2",
                               "--gpu-name=sm_90a", src, "-o", os.path.join(d, "k.cubin")],
                              capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed ({proc.returncode}):\n{log[-2000:]}")
    return parse_ptxas(log)


def parse_ptxas(log: str) -> dict:
    """`ptxas -v` info lines -> {registers, spill_stores, spill_loads, stack}."""
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    if regs is None or spill is None:
        raise RuntimeError(f"no register/spill line in ptxas output:\n{log[-2000:]}")
    return {"registers": int(regs.group(1)), "spill_stores": int(spill.group(1)),
            "spill_loads": int(spill.group(2)), "stack": int(stack.group(1)) if stack else 0}


def main() -> int:
    if os.environ.get("TRITON_INTERPRET"):
        print("SKIP TRITON_INTERPRET is set; the interpreter cannot compile")
        return 0
    try:
        import triton
        from triton.backends.compiler import GPUTarget
    except ImportError as e:
        print(f"SKIP triton cannot compile for CUDA here: {e}")
        return 0
    ptxas = ptxas_path()
    if ptxas is None:
        print(f"SKIP no ptxas in this triton wheel ({triton.__version__})")
        return 0
    target = GPUTarget("cuda", 90, 32)
    results = {}
    launches = record_launches()
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else ""
    for name, kernel, grid, args, kwargs in launches:
        if only not in name:
            continue
        if name in results:                    # a launcher called twice with one case name
            continue
        try:
            ptx = compile_ptx(kernel, args, kwargs, target)
        except (TypeError, AttributeError, ImportError) as e:
            print(f"SKIP this triton's compile API differs: {type(e).__name__}: {e}")
            return 0
        rep = ptxas_report(ptxas, ptx)
        # 16-byte vector loads (of the table rows, of channels_last activations).
        rep["v4_loads"] = len(re.findall(r"\bld\.global(?:\.\w+)*\.v4\.", ptx))
        rep["num_warps"] = kwargs.get("num_warps", 4)
        rep["grid"] = list(grid)
        results[name] = rep
    if "--json" not in sys.argv:
        for name, r in results.items():
            print(f"{name:58s} regs {r['registers']:3d}  spill st/ld {r['spill_stores']:5d}/"
                  f"{r['spill_loads']:5d} B  stack {r['stack']:5d} B  v4 ld {r['v4_loads']:3d}  "
                  f"warps {r['num_warps']}  grid {r['grid']}")
    print("RESULT " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
