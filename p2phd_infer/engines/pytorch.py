"""The PyTorch engine: a model.pt run by PyTorch, in one of two modes.

- plain: the Synthesizer (the official module tree) eager, or through torch.compile;
- fast (CUDA): the same weights through FastGenerator (label lookups for the first layers, fused
  InstanceNorm, channels_last), replayed as CUDA graphs (engines/fast.py).

mode "auto" (the default) is plain on a CPU and fast on CUDA, where the fast path is first
checked once against the plain network on a small random input; if it cannot be built, captured
or run, or its result differs, the engine warns once, saying why, and stays plain. So a user never
gets a crash or a wrong image from the unverified path.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch

from ..checkpoint import Checkpoint, load_checkpoint
from ..errors import EngineError, OptionError
from ..synthesizer import Synthesizer, psnr
from .base import Engine, EngineInfo, resolve_device

MODES = ("auto", "fast", "plain")
COMPILE_MODES = (None, "default", "max-autotune")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The fast path is accepted when its image on the check input is this close to the plain
# network's in the same precision: 40 dB on the [0,1] scale is about 1/100 of the range RMS,
# far above fp16 rounding noise (the official shape measures > 60 dB) and far below any wiring
# fault (a wrong layer or table gives < 20 dB).
FAST_CHECK_PSNR_DB = 40.0


class FastPathWarning(UserWarning):
    """The fast CUDA path was not used; the message says why."""


def _wants_fast(mode: str, device: torch.device) -> bool:
    return mode == "fast" or (mode == "auto" and device.type == "cuda")


class TorchEngine(Engine):
    """model.pt (or a Checkpoint) on `device` in `precision` (fp32, fp16, bf16).

    compile: None, "default" or "max-autotune" (True means "default"): torch.compile, over the
    plain Synthesizer or the FastGenerator. mode: auto, fast or plain (see the module doc).
    fast_options: FastGenerator levers (lookup_full, lookup_pooled, fused_norm, channels_last,
    cuda_graphs), for measuring them one by one."""

    def __init__(self, ckpt: Checkpoint | str | Path, device: str | torch.device | None = None,
                 *, precision: str = "fp32", compile: bool | str | None = None,
                 mode: str = "auto", fast_options: dict | None = None):
        if precision not in DTYPES:
            why = " (int8 runs on the OpenVINO CPU engine)" if precision == "int8" else ""
            raise OptionError("--precision", f"{precision!r} for the PyTorch engine: one of "
                                             f"{', '.join(DTYPES)}{why}")
        if mode not in MODES:
            raise OptionError("--mode", f"{mode!r}: one of {', '.join(MODES)}")
        compile = "default" if compile is True else (None if compile is False else compile)
        if compile not in COMPILE_MODES:
            raise OptionError("compile", f"{compile!r}: None, 'default' or 'max-autotune'")
        if isinstance(ckpt, (str, Path)):
            self.path = Path(ckpt)
            ckpt = load_checkpoint(ckpt)
        self.checkpoint = ckpt
        self.device = resolve_device(device)
        if self.device.type == "cpu" and precision == "fp16":
            raise OptionError("--precision", "fp16 on a CPU runs without vector units (about "
                                             "190x slower than fp32); use fp32 or bf16")
        if mode == "fast" and self.device.type != "cuda":
            raise OptionError("--mode", "fast is the CUDA path (Triton kernels, CUDA graphs); on "
                                        f"{self.device.type} use plain or auto")
        self.dtype = DTYPES[precision]
        self.compile = compile
        self.info = EngineInfo(ckpt.config, ckpt.features, ckpt.label_names,
                               precision=precision, backend="torch")
        self.model = Synthesizer(ckpt.config, ckpt.build_generator()).to(self.device).eval()
        self.encoder = ckpt.build_encoder()
        if self.encoder is not None:
            self.encoder = self.encoder.to(self.device).eval()
        self._fast = None
        self.mode = "plain"
        self.fallback_reason: str | None = None
        if ckpt.config.label_nc == 0 and mode == "fast":
            raise OptionError("--mode", "fast takes label ids (its first layers are label "
                                        "tables); a label_nc 0 model (RGB input) runs plain")
        # label_nc 0 (an RGB input image, no classes): the fast path's label tables do not
        # apply, so such a model always runs the plain network.
        if _wants_fast(mode, self.device) and ckpt.config.label_nc > 0:
            self._try_fast(fast_options or {}, strict=mode == "fast")
        if self.mode == "plain":
            self._plain_ready()
        self.info.extra.update(mode=self.mode, compile=compile)

    # --- building ---------------------------------------------------------------------------

    def _plain_ready(self) -> None:
        self.model = self.model.to(self.dtype)
        self._forward = torch.compile(self.model) if self.compile else self.model

    def _try_fast(self, options: dict, strict: bool) -> None:
        from .fast import CudaGraphs, FastGenerator, compile_fast
        levers = dict(options)
        graphs = levers.pop("cuda_graphs", True)
        try:
            # FastGenerator converts the generator it is given in place: give it its own copy,
            # so the plain network stays intact for the check and for a fallback.
            gen = FastGenerator(self.checkpoint.config, self.checkpoint, self.device, self.dtype,
                                **levers)
            forward = compile_fast(gen, self.compile) if self.compile else gen
            if graphs:
                forward = CudaGraphs(forward, self.device, self.dtype)
            self._fast = forward
            self._check_fast()
        except Exception as e:  # noqa: BLE001 - any build, capture or mismatch: stay plain
            self._fast = None
            reason = f"{e.__class__.__name__}: {e}".splitlines()[0]
            if strict:
                raise EngineError(self.name, f"the fast path failed ({reason})") from e
            self._fall_back(reason)
            return
        self.mode = "fast"
        # Only the fast path runs from now on: the plain copy needs no device memory.
        self.model = self.model.to("cpu")

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        self.mode = "plain"
        warnings.warn(f"{self.name}: the fast CUDA path is off, running the plain network "
                      f"({reason})", FastPathWarning, stacklevel=3)

    @torch.inference_mode()
    def _check_fast(self) -> None:
        cfg = self.config
        g = torch.Generator().manual_seed(0)
        H, W = 2 * cfg.stride, 2 * cfg.stride
        label = torch.randint(0, cfg.label_nc, (1, 1, H, W), generator=g, dtype=torch.int32)
        inst = torch.randint(0, 4, (1, 1, H, W), generator=g, dtype=torch.int32) * 1000 + 7
        feat = (torch.rand(1, cfg.feat_num, H, W, generator=g) * 2 - 1) if cfg.feat_num else None
        label, inst = label.to(self.device), inst.to(self.device)
        feat = None if feat is None else feat.to(self.device, self.dtype)
        plain = self.model.to(self.dtype)
        expected = plain(label, inst, feat).float()
        got = self._fast(label, inst, feat).float()
        self.model = self.model.float()
        score = psnr(got, expected)
        if not math.isfinite(float(got.abs().max())) or score < FAST_CHECK_PSNR_DB:
            raise EngineError(self.name, f"its check image differs from the plain network "
                                         f"(PSNR {score:.1f} dB < {FAST_CHECK_PSNR_DB:g})")

    # --- running ----------------------------------------------------------------------------

    @torch.inference_mode()
    def __call__(self, label, inst, feat=None):
        if feat is not None and feat.dtype != self.dtype:
            feat = feat.to(self.dtype)
        if self._fast is not None:
            try:
                return self._fast(label, inst, feat)
            except Exception as e:  # noqa: BLE001 - e.g. a capture failing at a new size
                self._fast = None
                self.model = self.model.to(self.device)
                self._plain_ready()
                self.info.extra["mode"] = "plain"
                self._fall_back(f"{e.__class__.__name__}: {e}".splitlines()[0])
        if self.device.type == "cpu" and label.shape[0] > 1:
            # Batch-invariant on the CPU: oneDNN picks conv kernels by batch size, so a whole-batch
            # conv can change a frame's last bits (and a pixel by one level). One frame at a time
            # keeps every image independent of its batch-mates.
            return torch.cat([self._forward(label[i:i + 1], inst[i:i + 1],
                                            None if feat is None else feat[i:i + 1])
                              for i in range(label.shape[0])])
        return self._forward(label, inst, feat)
