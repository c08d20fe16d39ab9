"""The input kind (step.py): label ids, or a label_nc 0 model's RGB input image, decided once per
engine and taken alike by the embedding API, the Runtime, the server and `run --ray`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import random_checkpoint, save_random_model
from p2phd_infer.api import Pix2PixHD
from p2phd_infer.config import ModelConfig
from p2phd_infer.engines import TorchEngine
from p2phd_infer.engines.base import reflect_pad
from p2phd_infer.errors import EngineError, InputError
from p2phd_infer.runtime import Runtime
from p2phd_infer.step import SynthesisStep, input_kind, label_input
from p2phd_infer.synthesizer import Synthesizer, to_uint8

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(ngf=4, n_downsample_global=2, n_blocks_global=1, n_blocks_local=1)   # stride 8
RGB_IN = ModelConfig(label_nc=0, use_instance=False, **SMALL)
RGB_INST = ModelConfig(label_nc=0, use_instance=True, **SMALL)
IDS_IN = ModelConfig(label_nc=6, use_instance=False, **SMALL)
H, W = 20, 36                  # not a multiple of the stride: padded and cropped back


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory):
    return save_random_model(tmp_path_factory.mktemp("rgb") / "rgb.pt", RGB_IN, seed=3, std=0.2)


@pytest.fixture(scope="module")
def rgb_engine(rgb_model):
    return TorchEngine(rgb_model, "cpu", mode="plain")


def images(seed=0, n=1, size=(H, W)):
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


def reference(engine, rgb: np.ndarray, inst=None) -> np.ndarray:
    """The plain generator on x/127.5 - 1, reflect-padded to the stride and cropped back (the
    same float ops the engine runs, so the test asks for equal bytes)."""
    cfg = engine.config
    synth = Synthesizer(cfg, engine.checkpoint.build_generator()).eval()
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    Hp, Wp = cfg.padded_size(*rgb.shape[:2])
    inst_t = None if inst is None else reflect_pad(torch.from_numpy(inst)[None, None].int(),
                                                   Hp, Wp)
    with torch.no_grad():
        out = synth(reflect_pad(x, Hp, Wp), inst_t)[..., :rgb.shape[0], :rgb.shape[1]]
    return to_uint8(out)[0].numpy()


def test_the_input_kind_is_decided_once_from_the_model_and_the_engine(rgb_engine, tmp_path):
    assert RGB_IN.input_kind == "rgb" and IDS_IN.input_kind == "ids"
    assert input_kind(rgb_engine) == "rgb" and SynthesisStep(rgb_engine).kind == "rgb"
    assert label_input("rgb", H, W) == ("UINT8", [H, W, 3])
    assert label_input("ids", -1, -1) == ("INT32", [1, -1, -1])
    # Only the PyTorch engine takes RGB input images: another engine is refused by name, by the
    # Runtime, the API and the server alike.
    other = TorchEngine(save_random_model(tmp_path / "o.pt", RGB_IN), "cpu", mode="plain")
    other.info.backend = "onnx"
    for make in (input_kind, Runtime, Pix2PixHD):
        with pytest.raises(EngineError, match="label_nc 0 model .* the onnx engine takes label "
                                              "ids only"):
            make(other)


def test_the_api_runs_an_rgb_input_model(rgb_engine):
    """The bug: [3,H,W] became [3,1,H,W] and was refused asking for [3,H,W]. The API takes
    the input image as images come out, uint8 [H,W,3] or [B,H,W,3]."""
    p2p = Pix2PixHD(rgb_engine)
    a, b = images(1, 2)
    got = p2p(a)
    assert got.shape == (H, W, 3) and got.dtype == np.uint8
    assert np.array_equal(got, reference(rgb_engine, a))
    both = p2p(np.stack([a, b]))
    assert both.shape == (2, H, W, 3)
    # A batch of two runs the same convolutions per sample: at most 1 level off from one frame
    # at a time (fp32 accumulation order of the batched kernels).
    assert np.abs(both[1].astype(int) - reference(rgb_engine, b).astype(int)).max() <= 1
    assert np.array_equal(p2p(torch.from_numpy(a), output="torch").numpy(), got)
    for bad, why in ((a.transpose(2, 0, 1), r"uint8 \[H,W,3\] or \[B,H,W,3\] \(channels last\), "
                                            r"not torch.uint8 \[3, 20, 36\]"),
                     (a.astype(np.float32), "not torch.float32"),
                     (a[..., 0], r"not torch.uint8 \[20, 36\]")):
        with pytest.raises(InputError, match=why):
            p2p(bad)


def test_the_runtime_and_the_api_give_the_same_image(rgb_engine):
    a = images(5)[0]
    with Runtime(rgb_engine) as rt:
        got = rt.submit(a).result()
        with pytest.raises(InputError, match="takes RGB input images"):
            rt.submit(a[..., 0]).result()
    assert np.array_equal(got, Pix2PixHD(rgb_engine)(a))


def test_an_rgb_model_with_instance_maps(tmp_path):
    """The instance edge map goes in beside the RGB image; an instance map is required."""
    engine = TorchEngine(save_random_model(tmp_path / "ri.pt", RGB_INST, seed=1, std=0.2), "cpu",
                         mode="plain")
    a = images(2)[0]
    inst = np.zeros((H, W), np.int32)
    inst[:, W // 2:] = 26001
    p2p = Pix2PixHD(engine)
    assert np.array_equal(p2p(a, inst), reference(engine, a, inst))
    with pytest.raises(InputError, match="no instance map given"):
        p2p(a)


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_serve_advertises_and_takes_what_the_step_takes(rgb_engine):
    """The bug: the server started, advertised INT32 ids and failed every frame."""
    from starlette.testclient import TestClient

    from p2phd_infer.serve.app import create_app
    a = images(9)[0]
    with TestClient(create_app(rgb_engine)) as client:
        meta = client.get("/v2/models/p2phd").json()
        assert meta["inputs"] == [{"name": "label", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}]
        config = client.get("/v2/models/p2phd/config").json()
        assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == \
            [("label", "TYPE_UINT8", [-1, -1, 3])]
        body = {"inputs": [{"name": "label", "datatype": "UINT8", "shape": [1, H, W, 3],
                            "data": a.reshape(-1).tolist()}]}
        r = client.post("/v2/models/p2phd/infer", json=body)
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert out["shape"] == [1, H, W, 3]
        got = np.array(out["data"], np.uint8).reshape(H, W, 3)
        assert np.array_equal(got, Pix2PixHD(rgb_engine)(a))
        ids = {"inputs": [{"name": "label", "datatype": "INT32", "shape": [1, 1, H, W],
                           "data": [0] * (H * W)}]}
        r = client.post("/v2/models/p2phd/infer", json=ids)
        assert r.status_code == 400
        assert "datatype INT32: this model takes RGB input images" in r.json()["error"]


class _FakeRayData:
    """Just enough of Ray Data for run_on_ray in this process: rows in, the worker class over
    batches of batch_size rows, rows out."""

    class ActorPoolStrategy:
        def __init__(self, size):
            self.size = size

    def __init__(self, rows=None, worker=None, kwargs=None, batch_size=1):
        self.rows, self.worker, self.kwargs, self.batch_size = rows, worker, kwargs, batch_size

    def from_items(self, rows):
        return _FakeRayData(rows)

    def map_batches(self, worker, *, fn_constructor_kwargs, batch_size, **_):
        return _FakeRayData(self.rows, worker, fn_constructor_kwargs, batch_size)

    def iter_rows(self):
        w = self.worker(**self.kwargs)
        for i in range(0, len(self.rows), self.batch_size):
            rows = self.rows[i:i + self.batch_size]
            out = w({k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]})
            for j in range(len(rows)):
                yield {k: v[j] for k, v in out.items()}


class _FakeRay:
    data = _FakeRayData()

    @staticmethod
    def is_initialized():
        return True

    @staticmethod
    def cluster_resources():
        return {"CPU": 1.0}


def _run_both(opts):
    """(local run's output bytes, Ray executor's output bytes, the Ray summary)."""
    import dataclasses
    from pathlib import Path

    from p2phd_infer.local_run import run_local
    from p2phd_infer.ray_run import run_on_ray
    local = run_local(dataclasses.replace(opts, out=opts.out + "/local"))
    ray_opts = dataclasses.replace(opts, out=opts.out + "/ray", ray="")
    import p2phd_infer.ray_run as ray_run
    original = ray_run.import_ray
    ray_run.import_ray = lambda: _FakeRay
    try:
        summary = run_on_ray(ray_opts)
    finally:
        ray_run.import_ray = original
    read = {p.relative_to(opts.out + "/local"): p.read_bytes()
            for p in sorted(Path(opts.out + "/local").rglob("*.png"))}
    got = {p.relative_to(opts.out + "/ray"): p.read_bytes()
           for p in sorted(Path(opts.out + "/ray").rglob("*.png"))}
    return local, read, summary, got


def test_run_ray_reads_colour_maps_like_a_local_run(tmp_path):
    """The bug: Ray's Runtime had no label format or palette, so colour maps failed with a hint
    to use --label-format auto, which was given (the default). The model's label_colors read
    them, or --palette FILE."""
    from p2phd_infer.checkpoint import save_checkpoint
    from p2phd_infer.plan import RunOptions
    colours = np.array([[0, 0, 0], [128, 64, 128], [70, 70, 70], [220, 20, 60], [0, 0, 142],
                        [107, 142, 35]], np.uint8)
    ckpt = random_checkpoint(IDS_IN, seed=2, std=0.2)
    ckpt.extra["label_colors"] = {i: [int(v) for v in c] for i, c in enumerate(colours)}
    model = tmp_path / "m.pt"
    save_checkpoint(ckpt, model)
    palette = tmp_path / "palette.json"           # the same colours, one id further on
    palette.write_text("{" + ", ".join(f'"{(i + 1) % 6}": {{"name": "c{i}", "color": '
                                       f'{list(map(int, c))}}}' for i, c in enumerate(colours))
                       + "}")
    (tmp_path / "in").mkdir()
    rng = np.random.default_rng(4)
    for name in ("a", "b"):
        Image.fromarray(colours[rng.integers(0, 6, (H, W))]).save(tmp_path / "in" / f"{name}.png")
    results = []
    for i, extra in enumerate(({}, {"palette": str(palette)})):
        opts = RunOptions(labels=str(tmp_path / "in"), out=str(tmp_path / f"out{i}"),
                          engine=str(model), device="cpu", backend="torch", progress=False,
                          batch_size=2, **extra)
        assert opts.label_format == "auto"
        local, want, summary, got = _run_both(opts)
        assert local.written == 2 and summary.written == 2, summary.failures
        assert got == want and len(got) == 2
        results.append(got)
    assert results[0] != results[1]             # the palette was used, not the model's colours


def test_run_ray_takes_jpeg_inputs_of_an_rgb_model(rgb_model, tmp_path):
    """The bug: Ray's driver planned without the model's input kind and skipped JPEG inputs."""
    from p2phd_infer.plan import RunOptions
    from p2phd_infer.ray_run import run_input_kind
    (tmp_path / "in").mkdir()
    a, b = images(11, 2)
    Image.fromarray(a).save(tmp_path / "in" / "a.png")
    Image.fromarray(b).save(tmp_path / "in" / "b.jpg", quality=95)
    opts = RunOptions(labels=str(tmp_path / "in"), out=str(tmp_path / "out"),
                      engine=str(rgb_model), device="cpu", backend="torch", progress=False)
    assert run_input_kind(opts) == "rgb"
    local, want, summary, got = _run_both(opts)
    assert summary.frames == 2 and summary.written == 2, summary.failures
    assert got == want and sorted(map(str, got)) == ["a.png", "b.png"]
