"""FastEngine: the FastGenerator behind the Engine interface, replayed as CUDA graphs.

A forward of the 2048x1024 generator is ~100 kernel launches; on the GPU the launch gaps add up,
so the whole forward is captured once per input signature (batch, H, W, features or not) and
replayed: the caller's ids are copied into the graph's static input buffers, the graph runs, the
static output is copied out (so a result stays valid after the next call). Capturing needs a
sync-free forward with fixed shapes, which the FastGenerator is. On the CPU there are no graphs
and the FastGenerator runs its references.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import Checkpoint, load_checkpoint
from .engines import Engine, EngineError, EngineInfo, resolve_device
from .fast_generator import DTYPES, FastGenerator, compile_fast


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    label: torch.Tensor
    inst: torch.Tensor | None
    feat: torch.Tensor | None
    out: torch.Tensor


class FastEngine(Engine):
    """precision: fp16 (default), bf16 or fp32. cuda_graphs: capture and replay per input
    signature (CUDA only). compile: None, "default" or "max-autotune" (torch.compile over the
    FastGenerator, its kernels as custom ops; max-autotune compiles for minutes).
    lookup_full / lookup_pooled / fused_norm / channels_last: the levers, for measuring.
    generator: an already built generator module to use (and convert) in place of building one
    from the checkpoint, so an engine can share weights with a Synthesizer."""

    def __init__(self, ckpt: Checkpoint | str | Path, device: str | torch.device | None = None,
                 precision: str = "fp16", cuda_graphs: bool = True, compile: str | None = None,
                 channels_last: bool = True, lookup_full: bool = True,
                 lookup_pooled: bool = False, fused_norm: bool = True,
                 generator: torch.nn.Module | None = None, copy_output: bool = True,
                 backend: str = "auto"):
        if not isinstance(ckpt, Checkpoint):
            ckpt = load_checkpoint(ckpt)
        if precision not in DTYPES:
            raise EngineError(f"precision must be one of {sorted(DTYPES)}, not {precision!r}")
        if compile not in (None, "default", "max-autotune"):
            raise EngineError(f"compile must be None, 'default' or 'max-autotune', not {compile!r}")
        self.checkpoint = ckpt
        self.device = resolve_device(device)
        self.info = EngineInfo(ckpt.config, ckpt.features, ckpt.label_names, precision=precision,
                               extra={"engine": "fast", "cuda_graphs": cuda_graphs,
                                      "compile": compile})
        self.model = FastGenerator(ckpt.config, generator if generator is not None else ckpt,
                                   self.device, DTYPES[precision], channels_last=channels_last,
                                   backend=backend, lookup_full=lookup_full,
                                   lookup_pooled=lookup_pooled, fused_norm=fused_norm)
        self._forward = compile_fast(self.model, compile) if compile else self.model
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.copy_output = copy_output
        self._graphs: dict[tuple, _Graph] = {}
        self._pool = None

    @torch.inference_mode()
    def __call__(self, label: torch.Tensor, inst: torch.Tensor | None,
                 feat: torch.Tensor | None = None) -> torch.Tensor:
        self.check_shape(label)
        if not self.cuda_graphs:
            return self._forward(label.to(self.device), _to(inst, self.device),
                                 _to(feat, self.device))
        B, _, H, W = label.shape
        key = (B, H, W, inst is not None, feat is not None)
        g = self._graphs.get(key)
        if g is None:
            g = self._graphs[key] = self._capture(label, inst, feat)
        g.label.copy_(label, non_blocking=True)
        if inst is not None:
            g.inst.copy_(inst, non_blocking=True)
        if feat is not None:
            g.feat.copy_(feat, non_blocking=True)
        g.graph.replay()
        return g.out.clone() if self.copy_output else g.out

    def _capture(self, label, inst, feat) -> _Graph:
        dev = self.device
        s_label = torch.empty(label.shape, dtype=torch.int32, device=dev).copy_(label)
        s_inst = None if inst is None else torch.empty(inst.shape, dtype=torch.int32,
                                                       device=dev).copy_(inst)
        s_feat = None if feat is None else torch.empty(feat.shape, dtype=self.model.dtype,
                                                       device=dev).copy_(feat)
        # Warm up on a side stream (Triton compiles, cuDNN picks algorithms, the allocator
        # settles), then capture one forward into a graph sharing this engine's memory pool.
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._forward(s_label, s_inst, s_feat)
        torch.cuda.current_stream(dev).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads of the runtime (pinned-memory decode workers) may touch
        # CUDA while this one captures.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            out = self._forward(s_label, s_inst, s_feat)
        return _Graph(graph, s_label, s_inst, s_feat, out)


def _to(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(device)
