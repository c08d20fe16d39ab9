"""The fast mode of the PyTorch engine: the Synthesizer's function (ids in, image out) built for
speed on CUDA (FastGenerator), replayed as CUDA graphs (CudaGraphs).

Same weights (the official module tree, shared, not copied), same function as
synthesizer.Synthesizer; what changes is how each layer runs:

- label-aware first layers (kernels/label_conv.py): the 7x7 convolutions on the one-hot input
  are a table lookup-and-sum over the window, G1's on the 2x pooled one-hot too (exact);
- fused InstanceNorm + ReLU (+ residual add) (kernels/instance_norm.py), which also writes the
  reflection padding the next convolution needs, so no separate pad pass and no layout change:
  activations stay channels_last from the first layer to the last;
- fp16 / bf16 / fp32 and channels_last convolutions (cuDNN);
- sync-free and fixed-shape (no .item(), no host reads), so a whole forward is capturable as one
  CUDA graph (CudaGraphs below replays one per (batch, H, W)), and the kernels are
  registered as torch custom ops so torch.compile can take the rest (`compile_fast`).

On the CPU, or with backend="torch", every layer runs its plain-torch reference through the same
walk of the network, which is how the equivalence to the Synthesizer is tested without a GPU.
Each lever can be switched off separately (lookup_full, lookup_pooled, fused_norm) to measure it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import Checkpoint
from ..config import ModelConfig
from ..errors import EngineError
from ..kernels._backend import use_triton
from ..kernels.instance_norm import instance_norm_act, memory_format_of
from ..kernels.label_conv import (LabelConv, encode_codes, label_codes, label_conv_triton,
                                  pooled_size)
from ..labels import edge_map, encode_labels
from ..networks import ResnetBlock, downsample_2x

# --- custom ops: the Triton kernels as opaque nodes torch.compile can trace around -------------


@torch.library.custom_op("p2phd_infer::instance_norm_act", mutates_args=())
def _in_op(x: torch.Tensor, relu: bool, residual: torch.Tensor | None, pad: int) -> torch.Tensor:
    return instance_norm_act(x, relu, residual, pad, backend="triton")


@_in_op.register_fake
def _(x, relu, residual, pad):
    B, C, H, W = x.shape
    return x.new_empty(B, C, H + 2 * pad, W + 2 * pad).contiguous(memory_format=memory_format_of(x))


@torch.library.custom_op("p2phd_infer::label_conv", mutates_args=())
def _label_conv_op(code: torch.Tensor, table: torch.Tensor, bias: torch.Tensor,
                   out_channels: int, pool: bool, add: torch.Tensor | None,
                   out_dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    return label_conv_triton(code, table, bias, out_channels, pool, add, out_dtype,
                             channels_last)


@_label_conv_op.register_fake
def _(code, table, bias, out_channels, pool, add, out_dtype, channels_last):
    B, _, H, W = code.shape
    OH, OW = (pooled_size(H), pooled_size(W)) if pool else (H, W)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return code.new_empty(B, out_channels, OH, OW, dtype=out_dtype).contiguous(memory_format=fmt)


@torch.library.custom_op("p2phd_infer::encode_codes", mutates_args=())
def _encode_codes_op(code: torch.Tensor, label_nc: int, has_edge: bool, channels: int,
                     pool: bool, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    return encode_codes(code, label_nc, has_edge, channels, pool, dtype, channels_last)


@_encode_codes_op.register_fake
def _(code, label_nc, has_edge, channels, pool, dtype, channels_last):
    B, _, H, W = code.shape
    OH, OW = (pooled_size(H), pooled_size(W)) if pool else (H, W)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return code.new_empty(B, channels, OH, OW, dtype=dtype).contiguous(memory_format=fmt)


# --- the generator ---------------------------------------------------------------------------

BACKENDS = ("auto", "triton", "torch")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _pad_of(module: nn.Module) -> int:
    """Reflection padding the consumer applies first (so its producer can write it)."""
    if isinstance(module, nn.ReflectionPad2d):
        return int(module.padding[0])
    if isinstance(module, ResnetBlock):
        return 1
    return 0


def _interior(t: torch.Tensor, p: int) -> torch.Tensor:
    return t[:, :, p:-p, p:-p] if p else t


class FastGenerator(nn.Module):
    """G (global or local enhancer) from a config and a generator module (used in place: cast
    and made channels_last), a generator state dict or a Checkpoint.

    dtype: compute dtype of the convolutions (fp32, fp16, bf16); statistics and lookups sum in
    fp32. device: where it runs (fixed at construction; the lookup tables are built there).
    lookup_full: the full-resolution first layer (G2's front, or G1 of a global model) as a table
    lookup; lookup_pooled: G1's first layer on the pooled one-hot too. Off by default: its 441
    gathers per pixel (49 taps x a 3x3 window) are predicted to lose to one Triton pass writing
    the pooled one-hot (36 -> 40 channels) plus a cuDNN convolution; benchmarks/fast_bench.py
    measures both.
    backend: "auto" (Triton kernels on CUDA, references elsewhere), "triton" (also on the CPU
    under TRITON_INTERPRET=1, for tests) or "torch" (references only).
    """

    def __init__(self, cfg: ModelConfig, generator: nn.Module | dict | Checkpoint,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float16,
                 channels_last: bool = True, backend: str = "auto", lookup_full: bool = True,
                 lookup_pooled: bool = False, fused_norm: bool = True):
        super().__init__()
        if backend not in BACKENDS:
            raise EngineError("", f"backend must be one of {BACKENDS}, got {backend!r}")
        if isinstance(generator, Checkpoint):
            generator = generator.build_generator()
        elif isinstance(generator, dict):
            generator = Checkpoint(cfg, generator).build_generator()
        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = dtype
        self.channels_last = channels_last
        self.backend = backend
        self.fused_norm = fused_norm
        self.use_custom_ops = False      # compile_fast turns it on
        self.lookup_full = lookup_full
        self.lookup_pooled = lookup_pooled
        # Tables come from the fp32 weights, before the cast to the compute dtype.
        table_dtype = torch.float32 if dtype == torch.float32 else torch.float16
        n = cfg.enhancers
        self._first: dict[str, LabelConv | None] = {"model": self._label_conv(
            generator.model[1], n, table_dtype)}
        for k in range(1, n + 1):
            front = getattr(generator, f"model{k}_1")
            self._first[f"model{k}_1"] = self._label_conv(front[1], n - k, table_dtype)
        self.net = generator.to(self.device, dtype).eval()
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def _label_conv(self, conv: nn.Conv2d, level: int, table_dtype) -> LabelConv | None:
        """The prepared first layer at pyramid level 0 (full res) or 1 (pooled 2x); deeper
        levels (pooled twice or more) run the dense reference."""
        if level > 1:
            return None
        lookup = self.lookup_full if level == 0 else self.lookup_pooled
        lc = LabelConv(conv.weight.detach().to(torch.float32),
                       None if conv.bias is None else conv.bias.detach().to(torch.float32),
                       self.cfg.label_nc, self.cfg.use_instance, pool=level == 1, lookup=lookup,
                       table_dtype=table_dtype)
        return lc.to(self.device, self.dtype, self.channels_last)

    # --- layers ---------------------------------------------------------------------------

    def _layout(self, t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last else t

    def _norm(self, x, relu, residual, pad, triton_ok):
        fused = triton_ok and self.fused_norm
        if fused and self.use_custom_ops:
            return torch.ops.p2phd_infer.instance_norm_act(x, relu, residual, pad)
        return instance_norm_act(x, relu, residual, pad, backend="triton" if fused else "torch")

    def _padded(self, t: torch.Tensor, p: int, need: int) -> torch.Tensor:
        if p == need:
            return t
        return self._layout(F.pad(_interior(t, p), (need,) * 4, mode="reflect"))

    def _first_layer(self, name, conv, level, label, inst, edge, code, feat, triton_ok):
        lc = self._first[name]
        if triton_ok and lc is not None:
            if not self.use_custom_ops:
                return lc.from_codes(code, feat, self.dtype, self.channels_last)
            # The same two paths as LabelConv.from_codes, through the custom ops (compile).
            add = lc.feature_part(feat, self.channels_last) if feat is not None else None
            if lc.lookup:
                return torch.ops.p2phd_infer.label_conv(
                    code, lc.table, lc.bias, lc.out_channels, lc.pool, add, self.dtype,
                    self.channels_last)
            x = torch.ops.p2phd_infer.encode_codes(code, lc.label_nc, lc.use_instance,
                                                   lc.channels, lc.pool, self.dtype,
                                                   self.channels_last)
            out = lc.dense_conv(x, self.channels_last)
            return out if add is None else out + add
        # Reference: the Synthesizer's own encoding and pyramid, then pad + conv.
        x = encode_labels(label, inst, self.cfg.label_nc, self.cfg.use_instance, feat,
                          dtype=self.dtype)
        for _ in range(level):
            x = downsample_2x(x)
        return conv(self._layout(F.pad(x, (3, 3, 3, 3), mode="reflect")))

    def _run(self, seq: nn.Sequential, t, p, out_pad, triton_ok, add_last=None):
        """Walk one official Sequential; (t, p) is the activation held in a buffer padded by p
        with reflected borders. Returns (t, p) with p == out_pad where a norm ends the walk."""
        layers = list(seq)
        if add_last is not None and not isinstance(layers[-1], (nn.InstanceNorm2d, nn.ReLU)):
            raise TypeError("the add after a stage must follow its last InstanceNorm (+ ReLU)")
        i = 0
        while i < len(layers):
            m = layers[i]
            if isinstance(m, nn.ReflectionPad2d):
                t, p = layers[i + 1](self._padded(t, p, _pad_of(m))), 0
                i += 2
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                t, p = m(_interior(t, p)), 0
                i += 1
            elif isinstance(m, nn.InstanceNorm2d):
                relu = i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU)
                j = i + 1 + int(relu)
                last = j == len(layers)
                want = out_pad if last else _pad_of(layers[j])
                t, p = self._norm(t, relu, add_last if last else None, want, triton_ok), want
                i = j
            elif isinstance(m, ResnetBlock):
                last = i + 1 == len(layers)
                want = out_pad if last else _pad_of(layers[i + 1])
                t, p = self._block(m, t, p, want, triton_ok), want
                i += 1
            elif isinstance(m, nn.Tanh):
                t, p = torch.tanh(_interior(t, p)), 0
                i += 1
            else:
                raise TypeError(f"FastGenerator does not know layer {type(m).__name__}")
        return t, p

    def _block(self, block: ResnetBlock, t, p, want, triton_ok):
        cb = block.conv_block  # pad1, conv, IN, ReLU, pad1, conv, IN
        h = cb[1](self._padded(t, p, 1))
        h = self._norm(h, True, None, 1, triton_ok)
        h = cb[5](h)
        return self._norm(h, False, _interior(t, p), want, triton_ok)

    # --- forward --------------------------------------------------------------------------

    def forward(self, label: torch.Tensor, inst: torch.Tensor | None,
                feat: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        if label.device.type != self.device.type:
            raise EngineError("", f"input is on {label.device}, this FastGenerator on "
                                  f"{self.device}")
        triton_ok = use_triton(self.backend, label)
        if cfg.feat_num > 0 and feat is None:
            B, _, H, W = label.shape
            feat = torch.zeros(B, cfg.feat_num, H, W, dtype=self.dtype, device=label.device)
        feat = feat if cfg.feat_num > 0 else None
        if cfg.use_instance and inst is None:
            raise EngineError("", "this model needs an instance map")
        edge = edge_map(inst) if cfg.use_instance else None
        code = label_codes(label, edge, cfg.label_nc) if triton_ok else None
        n = cfg.enhancers

        def first(name, conv, level):
            return self._first_layer(name, conv, level, label, inst, edge, code, feat, triton_ok)

        g1 = self.net.model
        t = first("model", g1[1], n)
        if n == 0:
            t, _ = self._run(g1[2:], t, 0, 0, triton_ok)
            return t
        out, _ = self._run(g1[2:], t, 0, 0, triton_ok)
        for k in range(1, n + 1):
            front = getattr(self.net, f"model{k}_1")
            back = getattr(self.net, f"model{k}_2")
            t = first(f"model{k}_1", front[1], n - k)
            t, p = self._run(front[2:], t, 0, _pad_of(back[0]), triton_ok, add_last=out)
            out, _ = self._run(back, t, p, 0, triton_ok)
        return out


def compile_fast(gen: FastGenerator, mode: str = "default"):
    """torch.compile of a FastGenerator, its Triton kernels kept as custom ops. With mode
    max-autotune, inductor's own CUDA graphs are left off (CudaGraphs captures its own)."""
    gen.use_custom_ops = True
    if mode == "max-autotune":
        mode = "max-autotune-no-cudagraphs"
    return torch.compile(gen, mode=mode, dynamic=False)


# --- CUDA graphs ------------------------------------------------------------------------------


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    label: torch.Tensor
    inst: torch.Tensor | None
    feat: torch.Tensor | None
    out: torch.Tensor


class CudaGraphs:
    """A sync-free, fixed-shape forward replayed as CUDA graphs, one per input signature.

    A forward of the 2048x1024 generator is ~100 kernel launches; on the GPU the launch gaps add
    up, so the whole forward is captured once per (batch, H, W, inst?, feat?) and replayed: the
    caller's ids are copied into the graph's static input buffers, the graph runs, and the static
    output is copied out (so a result stays valid after the next call)."""

    def __init__(self, forward, device: torch.device, feat_dtype: torch.dtype,
                 copy_output: bool = True):
        self.forward = forward
        self.device = device
        self.feat_dtype = feat_dtype
        self.copy_output = copy_output
        self._graphs: dict[tuple, _Graph] = {}
        self._pool = None

    def __call__(self, label: torch.Tensor, inst: torch.Tensor | None,
                 feat: torch.Tensor | None = None) -> torch.Tensor:
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
        s_feat = None if feat is None else torch.empty(feat.shape, dtype=self.feat_dtype,
                                                       device=dev).copy_(feat)
        # Warm up on a side stream (Triton compiles, cuDNN picks algorithms, the allocator
        # settles), then capture one forward into a graph sharing this object's memory pool.
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.forward(s_label, s_inst, s_feat)
        torch.cuda.current_stream(dev).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads of the runtime (pinned-memory decode workers) may touch
        # CUDA while this one captures.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            out = self.forward(s_label, s_inst, s_feat)
        return _Graph(graph, s_label, s_inst, s_feat, out)
