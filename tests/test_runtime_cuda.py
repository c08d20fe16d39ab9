"""The Runtime's CUDA path (runtime.py: pinned host staging, upload / compute / download on three
streams joined by events, a completer that waits on the download event): a tiny random-weight
model run plainly (TorchEngine mode="plain", so this tests the runtime, not the fast path), a
stream of frames of mixed sizes given as host numpy arrays and as CUDA tensors, every result in
submission order and equal to the same engine called frame by frame."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from p2phd_infer.checkpoint import Checkpoint
from p2phd_infer.config import ModelConfig
from p2phd_infer.engines import TorchEngine
from p2phd_infer.networks import build_generator
from p2phd_infer.runtime import Runtime
from p2phd_infer.synthesizer import to_uint8

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="the Runtime's three-stream path needs a CUDA device; "
                                       "tests/test_runtime.py covers the CPU path")

# Local enhancer, stride 4: frame sides are multiples of 4; label ids travel as uint8 (<= 256).
TINY = ModelConfig(label_nc=8, ngf=4, n_downsample_global=1, n_blocks_global=1, n_blocks_local=1)
SIZES = [(16, 24), (32, 16), (16, 24), (24, 24), (32, 16), (16, 24)]


def cuda_engine(seed: int = 0) -> TorchEngine:
    torch.manual_seed(seed)
    net = build_generator(TINY)
    for p in net.parameters():
        p.data.normal_(0, 0.2)
    return TorchEngine(Checkpoint(TINY, net.state_dict()), "cuda", mode="plain")


def frames(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        out.append((rng.integers(0, TINY.label_nc, (h, w)).astype(np.int32),
                    rng.integers(0, 4, (h, w)).astype(np.int32) * 1000 + 26000))
    return out


def direct(engine, label: np.ndarray, inst: np.ndarray) -> np.ndarray:
    """The engine on one frame, on the caller's stream: the reference image."""
    lab = torch.from_numpy(label)[None, None].cuda()
    ins = torch.from_numpy(inst)[None, None].cuda()
    return to_uint8(engine(lab, ins))[0].cpu().numpy()


def late_cuda_copy(x: np.ndarray, stream: torch.cuda.Stream) -> torch.Tensor:
    """x on the device, written on `stream` only after a spin of the GPU: a runtime that did not
    wait for the submitter's stream would read the zeros."""
    src = torch.from_numpy(x).pin_memory()
    with torch.cuda.stream(stream):
        t = torch.zeros(x.shape, dtype=torch.int32, device="cuda")
        torch.cuda._sleep(20_000_000)                       # some milliseconds of GPU time
        t.copy_(src, non_blocking=True)
    return t


class Spy:
    """Records, for every engine call, the stream it ran on and the batch shape."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []
        self.info, self.device, self.config = engine.info, engine.device, engine.config

    def __call__(self, label, inst, feat=None):
        self.calls.append((torch.cuda.current_stream(label.device), tuple(label.shape)))
        return self.engine(label, inst, feat)


def test_three_stream_runtime_matches_frame_by_frame_calls(monkeypatch):
    engine = cuda_engine()
    data = frames(24)
    want = [direct(engine, *f) for f in data]
    torch.cuda.synchronize()

    staged = []
    stage = Runtime._stage

    def recording_stage(t, dtype):
        out = stage(t, dtype)
        staged.append((out.is_cuda, out.is_pinned() if not out.is_cuda else None, out.dtype))
        return out
    monkeypatch.setattr(Runtime, "_stage", staticmethod(recording_stage))

    side = torch.cuda.Stream()
    items = []
    for i, (label, inst) in enumerate(data):
        if i % 2:       # device inputs, still being written on the submitter's stream
            items.append((late_cuda_copy(label, side), late_cuda_copy(inst, side)))
        else:           # host inputs: staged in pinned memory, uploaded on the H2D stream
            items.append((label, inst))
    spy = Spy(engine)
    with torch.cuda.stream(side):       # submit() records its event on the current stream
        with Runtime(spy, max_batch_size=4, max_queue_delay_us=200_000, max_queue_size=64,
                     decode_workers=3, encode_workers=2) as rt:
            got = list(rt.map(items))
            streams = (rt._h2d, rt._compute, rt._d2h)

    assert len(got) == len(data)
    for i, (rgb, ref) in enumerate(zip(got, want)):
        assert isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8
        assert rgb.shape == ref.shape == (*data[i][0].shape, 3), i
        # Per-sample InstanceNorm: a batch changes only the order of float sums (and cuDNN may
        # choose another algorithm per batch size), so one uint8 step of rounding is allowed.
        assert np.abs(rgb.astype(int) - ref.astype(int)).max() <= 1, i
    # The comparison tells frames apart (so a mix-up of results or of maps would show).
    assert np.abs(want[0].astype(int) - want[2].astype(int)).max() > 1

    # Host maps were staged pinned (labels as uint8, instances int32); device maps as given.
    host = [s for s in staged if not s[0]]
    assert len(host) == 2 * len(data[::2]) and all(s[1] for s in host)
    assert {s[2] for s in host} == {torch.uint8, torch.int32}
    assert sum(1 for s in staged if s[0]) == 2 * len(data[1::2])
    # Three distinct side streams; every engine call ran on the compute stream.
    h2d, compute, d2h = streams
    assert len({h2d, compute, d2h, torch.cuda.default_stream()}) == 4
    assert spy.calls and all(s == compute for s, _ in spy.calls)
    # Batches formed, only of one size each, and every frame went through once.
    assert any(shape[0] > 1 for _, shape in spy.calls)
    assert sum(shape[0] for _, shape in spy.calls) == len(data)
    assert rt.stats.frames == len(data) and rt.stats.failed_batches == 0


def test_batch_of_one_is_bit_identical_and_writes_files(tmp_path):
    engine = cuda_engine(seed=3)
    data = frames(6, seed=5)
    want = [direct(engine, *f) for f in data]
    with Runtime(engine, max_batch_size=1) as rt:
        arrays = list(rt.map([(torch.from_numpy(label).cuda(), torch.from_numpy(inst).cuda())
                              for label, inst in data]))
        paths = list(rt.map([(label, inst, tmp_path / f"{i}.png")
                             for i, (label, inst) in enumerate(data)]))
    # The same kernels on the same single frame: the three-stream path changes no bit.
    for rgb, ref in zip(arrays, want):
        assert np.array_equal(rgb, ref)
    from PIL import Image
    for i, (p, ref) in enumerate(zip(paths, want)):
        assert p == tmp_path / f"{i}.png"
        assert np.array_equal(np.asarray(Image.open(p).convert("RGB")), ref)
