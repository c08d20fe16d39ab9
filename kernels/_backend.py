"""Which implementation runs: the Triton kernel or the plain-torch reference.

Every public kernel takes `backend="auto" | "triton" | "torch"`:
  auto   - Triton when every tensor is on CUDA and triton imports, else the reference;
  triton - the Triton kernel: on CUDA, or on CPU tensors in Triton's interpreter (slow; tests);
  torch  - the reference.

The interpreter needs TRITON_INTERPRET=1 in the environment before triton is first imported
(triton decorates its own library functions at import), so CPU runs of the Triton path are only
possible in a process started that way; tests/conftest.py does it on machines without CUDA.
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only install without triton still has every reference
    triton = None
    tl = None

BACKENDS = ("auto", "triton", "torch")


def jit(fn):
    """triton.jit when triton imports; otherwise the plain function, which is never launched."""
    return triton.jit(fn) if triton is not None else fn


def use_triton(backend: str, *tensors: torch.Tensor) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    devices = {t.device.type for t in tensors}
    if backend == "auto":
        return triton is not None and devices == {"cuda"}
    if triton is None:
        raise RuntimeError("backend='triton' needs the triton package (pip install triton)")
    if len(devices) > 1:
        raise ValueError(f"tensors are on several devices: {sorted(devices)}")
    if devices != {"cuda"} and not interpreting():
        raise RuntimeError(f"the Triton kernels run on CUDA tensors, or on CPU tensors when "
                           f"TRITON_INTERPRET=1 is set before triton is imported; got {devices}")
    return True


def interpreting() -> bool:
    """True when triton was imported under TRITON_INTERPRET=1, so kernels accept CPU tensors."""
    if triton is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    # Triton decorated its own library under the mode that was on when it was imported.
    return isinstance(tl.standard.zeros_like, InterpretedFunction)


def triton_device() -> tuple[str | None, str]:
    """Where the Triton kernels can run in this process: ("cuda", ""), ("cpu", "") under the
    interpreter, or (None, why not)."""
    if triton is None:
        return None, "triton is not installed"
    if torch.cuda.is_available():
        return "cuda", ""
    if interpreting():
        return "cpu", ""
    return None, "no CUDA, and TRITON_INTERPRET=1 was not set before triton was imported"


INDEX_LIMIT = 2**31   # int32 indices: the kernels keep pixel indices int32, addresses int64


def check_index_range(what: str, count: int) -> None:
    """Raise before a launch whose int32 index (a pixel count, say) would reach 2^31."""
    if count >= INDEX_LIMIT:
        raise ValueError(f"{what}: {count} is past the kernels' int32 index range "
                         f"(< 2^31); split the batch or the frame")


@jit
def index64(i, stride):
    """An element offset i * stride in int64 (an int32 product wraps past 2^31 elements)."""
    return i.to(tl.int64) * stride


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())

