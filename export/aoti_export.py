"""AOTInductor packages (`.pt2`): torch.export of the generator (or style) graph, compiled ahead
of time for the CPU (C++, needs a C++ compiler) or CUDA (Triton kernels), loaded without Python
model code by p2phd_infer.engines.aoti.

The engine metadata rides inside the package, in AOTInductor's metadata map (key "p2phd_infer"),
so the .pt2 is self-contained.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from p2phd_infer.checkpoint import Checkpoint
from p2phd_infer.engines.aoti import quiet_cuda_toolkit_warning
from p2phd_infer.engines.base import METADATA_KEY, info_to_json, resolve_device
from p2phd_infer.errors import OptionError
from p2phd_infer.files import write_atomic

from .graphs import build_graph, check_size, example_inputs
from .graphs import engine_info

quiet_cuda_toolkit_warning()


def export_program(ckpt: Checkpoint, height: int, width: int, max_batch: int,
                   graph: str = "generator", device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32):
    """-> (torch.export.ExportedProgram with a dynamic batch 1..max_batch, input names)."""
    check_size(ckpt.config, height, width, graph)
    module = build_graph(ckpt, graph, device, dtype)
    names = module.input_names
    args = example_inputs(names, ckpt.config, 2, height, width, device, dtype)
    # Export with max >= 2 so the batch stays symbolic; the engine enforces max_batch itself.
    batch = torch.export.Dim("batch", min=1, max=max(2, max_batch))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, args, dynamic_shapes={n: {0: batch} for n in names})
    return program, names


def export_aoti(ckpt: Checkpoint, out: str | os.PathLike, height: int, width: int,
                max_batch: int = 4, graph: str = "generator", device: str | torch.device = "cpu",
                fp16: bool = False) -> Path:
    """Compile and write the .pt2 atomically (a temporary .pt2 beside it, then a rename)."""
    device = resolve_device(device)
    if fp16 and device.type != "cuda":
        raise OptionError("--fp16", "fp16 AOTInductor packages are built for CUDA (--device cuda)")
    out = Path(out)
    if out.suffix != ".pt2":
        raise OptionError(out, "an AOTInductor package must end in .pt2")
    dtype = torch.float16 if fp16 else torch.float32
    program, names = export_program(ckpt, height, width, max_batch, graph, device, dtype)
    info = engine_info(ckpt, height, width, max_batch, "fp16" if fp16 else "fp32", graph, "aoti",
                       inputs=names, device=device.type)
    write_atomic(out, lambda tmp: torch._inductor.aoti_compile_and_package(
        program, package_path=str(tmp),
        inductor_configs={"aot_inductor.metadata": {METADATA_KEY: info_to_json(info)}}),
        suffix=".pt2")
    return out
