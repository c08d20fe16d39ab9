"""serve/dataplane.py without a transport: what the HTTP routes and the gRPC service both call.
A request given as Python objects (kserve.Tensor over raw bytes or values) gets the engine's own
pixels; lookups, statistics and a client that goes away behave as the module says."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")

from p2phd_infer.config import ModelConfig  # noqa: E402
from p2phd_infer.engines import TorchEngine  # noqa: E402
from p2phd_infer.errors import Cancelled, InputError, NotFound, RuntimeClosed  # noqa: E402
from p2phd_infer.serve.dataplane import DataPlane, ModelSettings, ServedModel  # noqa: E402
from p2phd_infer.serve.kserve import InferRequest, tensor_from_raw, \
    tensor_from_values  # noqa: E402
from p2phd_infer.synthesizer import to_uint8  # noqa: E402
from helpers import random_checkpoint  # noqa: E402

TINY = ModelConfig(label_nc=8, ngf=4, n_downsample_global=1, n_blocks_global=1, n_blocks_local=1)
LIMIT = 1 << 20


@pytest.fixture(scope="module")
def engine():
    return TorchEngine(random_checkpoint(TINY, 5, std=0.2), "cpu")


def plane(engine, **settings) -> DataPlane:
    dp = DataPlane([ServedModel("m", "1", engine, ModelSettings(**settings))])
    dp.start()
    return dp


def request(label: np.ndarray, raw: bool = True) -> InferRequest:
    a = label.astype(np.int32)[:, None]
    make = (lambda n: tensor_from_raw(n, "INT32", a.shape, a.tobytes(), LIMIT)) if raw else \
        (lambda n: tensor_from_values(n, "INT32", a.shape, a.tolist(), LIMIT))
    return InferRequest("r1", {"label": make("label"), "inst": make("inst")})


def direct(engine, label: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(label.astype(np.int32))[:, None]
    with torch.inference_mode():
        return to_uint8(engine(t, t)).numpy()              # uint8 [B,H,W,3]


def test_infer_from_python_objects_gives_the_engines_pixels_and_counts_them(engine):
    dp = plane(engine, max_batch_size=2, max_queue_delay_us=20_000)
    try:
        label = np.random.default_rng(1).integers(0, 8, (2, 32, 32))
        for raw in (True, False):
            result = asyncio.run(dp.infer("m", None, request(label, raw)))
            assert (result.model_name, result.model_version, result.id) == ("m", "1", "r1")
            (name, image, binary), = result.outputs
            assert name == "image" and image.dtype == np.uint8 and image.shape == (2, 32, 32, 3)
            assert np.array_equal(image, direct(engine, label))
        stats = dp.statistics("m")["model_stats"][0]
        assert stats["inference_count"] == 4 and stats["inference_stats"]["success"]["count"] == 2
        with pytest.raises(InputError, match="out of range"):
            asyncio.run(dp.infer("m", "1", request(np.full((1, 32, 32), 9))))
        assert dp.statistics("m", "1")["model_stats"][0]["inference_stats"]["fail"]["count"] == 1
        with pytest.raises(NotFound, match="unknown model 'x'"):
            dp.model("x")
        with pytest.raises(NotFound, match="no version '2'"):
            dp.model_config("m", "2")
        with pytest.raises(InputError, match="not an input"):
            asyncio.run(dp.infer("m", None, InferRequest(None, {
                **request(label).inputs, "extra": request(label).inputs["label"]})))
        with pytest.raises(InputError, match="10 bytes of data; .* needs 16384"):
            tensor_from_raw("label", "INT32", [1, 1, 64, 64], b"\0" * 10, LIMIT)
    finally:
        dp.close()
    with pytest.raises(RuntimeClosed):
        asyncio.run(dp.infer("m", None, request(np.zeros((1, 32, 32)))))


def test_a_client_gone_before_the_batch_is_due_never_reaches_the_engine(engine):
    dp = plane(engine, max_batch_size=8, max_queue_delay_us=2_000_000)
    try:
        async def gone():
            await asyncio.sleep(0.05)

        with pytest.raises(Cancelled, match="1 of 1 frames dropped"):
            asyncio.run(dp.infer("m", None, request(np.zeros((1, 32, 32))), disconnected=gone))
        stats = dp.statistics()["model_stats"][0]
        assert stats["execution_count"] == 0 and stats["inference_stats"]["fail"]["count"] == 1
        assert dp.model("m").stats.failures["CANCELED"] == 1
        assert dp.model("m").pool.queue_depth() == 0           # its queue slot was given back
    finally:
        dp.close()
