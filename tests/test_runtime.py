"""Runtime: batching, ordering, failure isolation, backpressure, shutdown; on the CPU with a fake
engine that writes each request's ids into its image, so every output can be traced back."""
from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import numpy as np
import pytest
import torch
from PIL import Image

from p2phd_infer.checkpoint import Checkpoint
from p2phd_infer.config import ModelConfig
from p2phd_infer.engines import Engine, EngineInfo, TorchEngine
from p2phd_infer.errors import InputError
from p2phd_infer.networks import build_generator
from p2phd_infer.errors import EngineFault, QueueFull, RuntimeClosed
from p2phd_infer.runtime import Runtime
from p2phd_infer.synthesizer import to_uint8

# stride 2, ids up to 255, instance maps used: small frames, ids readable from the output
FAKE_CFG = ModelConfig(label_nc=256, netG="global", ngf=4, n_downsample_global=1, n_blocks_global=1)


class FakeEngine(Engine):
    """Image channels = (label, inst & 255, inst >> 8 & 255) exactly after to_uint8; records every
    call; can be slowed, gated, or made to fail on batches whose frame holds a marker."""

    def __init__(self, cfg=FAKE_CFG, delay=0.0, gate=None, fail_marker=None):
        self.info = EngineInfo(cfg)
        self.device = torch.device("cpu")
        self.delay, self.gate, self.fail_marker = delay, gate, fail_marker
        self.calls: list[dict] = []
        self._lock = threading.Lock()

    def __call__(self, label, inst, feat=None):
        assert label.dtype == torch.int32 and inst.dtype == torch.int32 and label.dim() == 4
        with self._lock:
            self.calls.append({"t": time.monotonic(), "B": label.shape[0],
                               "size": tuple(label.shape[2:]),
                               "ids": [frame_id(label[b, 0], inst[b, 0])
                                       for b in range(label.shape[0])],
                               "feat": None if feat is None else feat.clone()})
        if self.gate is not None:
            assert self.gate.wait(30)
        if self.delay:
            time.sleep(self.delay)
        if self.fail_marker is not None and (label[:, 0, 0, 0] == self.fail_marker).any():
            raise RuntimeError("injected engine fault")
        planes = torch.cat([label, inst & 255, (inst >> 8) & 255], 1).float()
        return planes / 127.5 - 1.0


def make_frame(i: int, h: int = 4, w: int = 4, marker: int | None = None):
    """Frame i: label[0,1], label[0,2] hold i in base 200; inst holds 1000 + i everywhere."""
    label = np.full((h, w), 7, np.int32)
    label[0, 0] = marker if marker is not None else 1
    label[0, 1], label[0, 2] = i % 200, i // 200
    inst = np.full((h, w), 1000 + i, np.int32)
    return label, inst


def frame_id(label, inst) -> int:
    label = np.asarray(label)
    return int(label[0, 1]) + 200 * int(label[0, 2])


def image_id(rgb: np.ndarray) -> int:
    assert rgb.dtype == np.uint8 and rgb.shape[2] == 3
    i = int(rgb[0, 1, 0]) + 200 * int(rgb[0, 2, 0])
    inst = int(rgb[0, 0, 1]) + 256 * int(rgb[0, 0, 2])
    assert inst == 1000 + i, (i, inst)          # the instance map travelled with its label map
    return i


def write_pair(folder, name, label, inst):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label.astype(np.uint8)).save(folder / f"{name}_label.png")
    Image.fromarray(inst.astype(np.uint16)).save(folder / f"{name}_inst.png")
    return folder / f"{name}_label.png", folder / f"{name}_inst.png"


# ---------------------------------------------------------------- order and batching

def test_map_keeps_submission_order_with_mixed_sizes_and_workers():
    rng = np.random.default_rng(0)
    sizes = [(4, 4), (8, 4), (4, 6)]
    frames = [make_frame(i, *sizes[rng.integers(0, 3)]) for i in range(90)]
    engine = FakeEngine(delay=0.002)
    with Runtime(engine, max_batch_size=4, max_queue_delay_us=3000, decode_workers=4,
                 encode_workers=3, max_queue_size=16) as rt:
        got = [image_id(rgb) for rgb in rt.map(frames)]
    assert got == list(range(90))
    assert all(1 <= c["B"] <= 4 for c in engine.calls)
    assert sum(c["B"] for c in engine.calls) == 90
    assert max(c["B"] for c in engine.calls) > 1          # batching happened
    # every frame went through exactly once, in a batch of its own size
    seen = sorted(i for c in engine.calls for i in c["ids"])
    assert seen == list(range(90))
    for c in engine.calls:
        assert all(frames[i][0].shape == c["size"] for i in c["ids"])


def test_batches_fill_to_the_limit_without_waiting_for_the_delay():
    engine = FakeEngine()
    with Runtime(engine, max_batch_size=4, max_queue_delay_us=60_000_000, decode_workers=2) as rt:
        futs = [rt.submit(*make_frame(i)) for i in range(8)]
        # A 60 s delay: only full batches can have gone out within the wait.
        got = [image_id(f.result(timeout=30)) for f in futs]
    assert got == list(range(8))
    assert [c["B"] for c in engine.calls] == [4, 4]


def test_partial_batch_flushes_after_the_delay():
    engine = FakeEngine()
    delay_s = 0.3
    with Runtime(engine, max_batch_size=8, max_queue_delay_us=int(delay_s * 1e6)) as rt:
        t0 = time.monotonic()
        futs = [rt.submit(*make_frame(i)) for i in range(3)]
        assert [image_id(f.result(timeout=30)) for f in futs] == [0, 1, 2]
    assert [c["B"] for c in engine.calls] == [3]
    assert engine.calls[0]["t"] - t0 >= delay_s             # it waited for more, then flushed


def test_close_flushes_a_partial_batch_at_once():
    engine = FakeEngine()
    rt = Runtime(engine, max_batch_size=8, max_queue_delay_us=60_000_000)   # a minute
    futs = [rt.submit(*make_frame(i)) for i in range(3)]
    rt.close()                                              # no more input can come: no waiting
    assert [image_id(f.result(timeout=0)) for f in futs] == [0, 1, 2]
    assert [c["B"] for c in engine.calls] == [3]


# ---------------------------------------------------------------- failures stay local

def test_corrupt_and_bad_inputs_fail_alone(tmp_path):
    engine = FakeEngine()
    paths = [write_pair(tmp_path / "in", f"f{i}", *make_frame(i)) for i in range(4)]
    corrupt = tmp_path / "in" / "corrupt_label.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with Runtime(engine, max_batch_size=3, max_queue_delay_us=1000) as rt:
        good = [rt.submit(lab, ins, out=tmp_path / "out" / f"f{i}.png")
                for i, (lab, ins) in enumerate(paths)]
        bad_file = rt.submit(corrupt, paths[0][1], out=tmp_path / "out" / "corrupt.png")
        bad_dtype = rt.submit(np.zeros((4, 4), np.float32), np.zeros((4, 4), np.int32),
                              name="float-frame")
        bad_size = rt.submit(*make_frame(9, 3, 4), name="small-frame")
        bad_range = rt.submit(np.full((4, 4), 256), np.zeros((4, 4), np.int32), name="ids")
        no_inst = rt.submit(make_frame(10)[0], name="lonely")
        with pytest.raises(InputError, match=r"corrupt_label\.png: not a readable PNG"):
            bad_file.result(timeout=30)
        with pytest.raises(InputError, match="float-frame: label map has dtype float32"):
            bad_dtype.result(timeout=30)
        with pytest.raises(InputError, match="small-frame: size 4x3 is below this model's "
                                             "minimum 4x4"):
            bad_size.result(timeout=30)
        with pytest.raises(InputError, match="ids: label id 256 out of range"):
            bad_range.result(timeout=30)
        with pytest.raises(InputError, match="lonely: no instance map given"):
            no_inst.result(timeout=30)
        for i, f in enumerate(good):
            out = f.result(timeout=30)
            assert out == tmp_path / "out" / f"f{i}.png"
            assert image_id(np.asarray(Image.open(out))) == i
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"f{i}.png" for i in range(4)]


def test_engine_fault_fails_only_its_batch_and_the_runtime_goes_on():
    engine = FakeEngine(fail_marker=99)
    frames = [make_frame(i, marker=99 if i == 5 else None) for i in range(12)]
    with Runtime(engine, max_batch_size=3, max_queue_delay_us=50_000, decode_workers=1) as rt:
        results = list(rt.map(frames, return_exceptions=True))
        bad_batch = next(c for c in engine.calls if 5 in c["ids"])
        for i, r in enumerate(results):
            if i in bad_batch["ids"]:
                assert isinstance(r, EngineFault), (i, r)
                assert "engine failed" in str(r) and "injected engine fault" in str(r)
                assert isinstance(r.__cause__, RuntimeError)
            else:
                assert image_id(r) == i
        assert len(bad_batch["ids"]) > 1                     # the whole batch, not just frame 5
        # Still serving after the fault.
        assert image_id(rt.submit(*make_frame(40)).result(timeout=30)) == 40
    assert rt.stats.failed_batches == 1


def test_map_raises_the_first_failure_in_order():
    engine = FakeEngine()
    with Runtime(engine) as rt:
        it = rt.map([make_frame(0), (np.zeros((3, 4), np.int32), np.zeros((3, 4), np.int32)),
                     make_frame(2)])
        assert image_id(next(it)) == 0
        with pytest.raises(InputError, match="below this model's minimum"):
            next(it)


# ---------------------------------------------------------------- backpressure

def test_queue_full_raises_when_not_blocking_and_blocks_otherwise():
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    with Runtime(engine, max_batch_size=1, max_queue_size=3, block_when_full=False) as rt:
        futs = [rt.submit(*make_frame(i)) for i in range(3)]
        with pytest.raises(QueueFull):
            rt.submit(*make_frame(3))
        with pytest.raises(QueueFull):
            rt.submit(*make_frame(3), block=True, timeout=0.05)
        # A blocked submitter goes on once a slot frees.
        late = []
        t = threading.Thread(target=lambda: late.append(rt.submit(*make_frame(3), block=True)))
        t.start()
        time.sleep(0.05)
        assert not late                                      # still waiting for room
        gate.set()
        t.join(30)
        assert [image_id(f.result(timeout=30)) for f in futs + late] == [0, 1, 2, 3]
        assert image_id(rt.submit(*make_frame(4)).result(timeout=30)) == 4
    with pytest.raises(RuntimeClosed):
        rt.submit(*make_frame(5))


# ---------------------------------------------------------------- shutdown

def _our_threads(before):
    return [t for t in threading.enumerate() if t not in before and t.is_alive()]


def test_close_joins_every_thread(tmp_path):
    before = set(threading.enumerate())
    lab, ins = write_pair(tmp_path, "a", *make_frame(1))
    with Runtime(FakeEngine(), max_batch_size=2, decode_workers=3, encode_workers=3) as rt:
        assert _our_threads(before)                          # it does run threads
        futs = [rt.submit(lab, ins, out=tmp_path / "o" / f"{i}.png") for i in range(6)]
        futs += [rt.submit(*make_frame(i)) for i in range(6)]
    assert all(f.done() and f.exception() is None for f in futs)
    assert _our_threads(before) == []


def test_close_cancel_cancels_queued_work_finishes_the_running_batch():
    before = set(threading.enumerate())
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    rt = Runtime(engine, max_batch_size=2, max_queue_delay_us=0, decode_workers=1)
    futs = [rt.submit(*make_frame(i)) for i in range(8)]
    deadline = time.monotonic() + 30
    while not engine.calls and time.monotonic() < deadline:
        time.sleep(0.005)                                    # the first batch is in the engine
    closer = threading.Thread(target=rt.close, kwargs={"cancel": True})
    closer.start()
    time.sleep(0.05)
    gate.set()
    closer.join(30)
    assert not closer.is_alive()
    running = set(engine.calls[0]["ids"])
    for i, f in enumerate(futs):
        assert f.done()
        if i in running:
            assert image_id(f.result()) == i
        else:
            assert f.cancelled()
            with pytest.raises(CancelledError):
                f.result()
    assert len(engine.calls) == 1
    assert _our_threads(before) == []


def test_leaving_map_early_cancels_the_rest():
    engine = FakeEngine(delay=0.01)
    with Runtime(engine, max_queue_size=8) as rt:
        for rgb in rt.map(make_frame(i) for i in range(100)):
            assert image_id(rgb) == 0
            break
    assert sum(c["B"] for c in engine.calls) < 100


# ---------------------------------------------------------------- concurrency

def test_200_requests_from_8_threads_none_lost_or_duplicated(tmp_path):
    engine = FakeEngine(delay=0.001)
    results: dict[int, object] = {}
    lock = threading.Lock()
    errors = []

    def client(k):
        try:
            mine = []
            for j in range(25):
                i = k * 25 + j
                out = tmp_path / f"{i}.png" if i % 2 else None
                mine.append((i, rt.submit(*make_frame(i, *((4, 4) if i % 3 else (6, 4))),
                                          out=out)))
            for i, f in mine:
                r = f.result(timeout=60)
                with lock:
                    assert i not in results
                    results[i] = r
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    with Runtime(engine, max_batch_size=8, max_queue_delay_us=1000, max_queue_size=16,
                 decode_workers=3, encode_workers=3) as rt:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors, errors
    assert sorted(results) == list(range(200))
    for i, r in results.items():
        rgb = np.asarray(Image.open(r)) if i % 2 else r
        assert image_id(rgb) == i
    assert sorted(i for c in engine.calls for i in c["ids"]) == list(range(200))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{i}.png" for i in range(1, 200, 2))
    assert rt.stats.frames == 200


# ---------------------------------------------------------------- a real (tiny) network

def tiny_engine(cfg: ModelConfig, seed: int = 0) -> TorchEngine:
    torch.manual_seed(seed)
    net = build_generator(cfg)
    for p in net.parameters():
        p.data.normal_(0, 0.2)
    return TorchEngine(Checkpoint(cfg, net.state_dict()), "cpu")


TINY = ModelConfig(label_nc=8, ngf=4, n_downsample_global=1, n_blocks_global=1, n_blocks_local=1)


def test_real_engine_batched_runtime_equals_direct_calls():
    engine = tiny_engine(TINY)
    rng = np.random.default_rng(1)
    frames = [(rng.integers(0, 8, (16, 24)).astype(np.int32),
               rng.integers(0, 4, (16, 24)).astype(np.int32) * 1000 + 26000) for _ in range(7)]
    with Runtime(engine, max_batch_size=3, max_queue_delay_us=20_000) as rt:
        got = list(rt.map(frames))
    for (label, inst), rgb in zip(frames, got):
        want = to_uint8(engine(torch.from_numpy(label)[None, None],
                               torch.from_numpy(inst)[None, None]))[0].numpy()
        # InstanceNorm is per sample, so batching changes nothing but float summation order:
        # allow one uint8 step from rounding.
        assert np.abs(rgb.astype(int) - want.astype(int)).max() <= 1
    assert rt.stats.batch_sizes[3] >= 1


def test_features_model_gets_the_style_feature_map():
    cfg = ModelConfig(label_nc=8, feat_num=3, ngf=4, n_downsample_global=1, n_blocks_global=1,
                      netG="global")

    class Style:
        def __init__(self):
            self.calls = 0

        def feature_map(self, label, inst):
            self.calls += 1
            return (inst % 7).float().expand(-1, 3, -1, -1) / 7

    style = Style()
    engine = FakeEngine(cfg)
    with Runtime(engine, style=style, max_batch_size=2, max_queue_delay_us=10_000) as rt:
        label = np.zeros((4, 4), np.int32)
        list(rt.map([(label, np.full((4, 4), k, np.int32)) for k in range(4)]))
    assert style.calls == len(engine.calls)
    for c in engine.calls:
        assert c["feat"] is not None and c["feat"].shape[1] == 3
    # Without a style object a features model is called with feat=None (the Synthesizer's zeros).
    engine2 = FakeEngine(cfg)
    with Runtime(engine2) as rt:
        rt.submit(np.zeros((4, 4), np.int32), np.zeros((4, 4), np.int32)).result(timeout=30)
    assert engine2.calls[0]["feat"] is None
