"""`p2phd-infer serve`: the real server as a subprocess on a free loopback port, spoken to with
tritonclient.http and plain HTTP; a few in-process checks (Starlette's TestClient) for what needs
a special engine (an engine fault, a features model)."""
from __future__ import annotations

import io
import json
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
th = pytest.importorskip("tritonclient.http")

from p2phd_infer.api import Pix2PixHD  # noqa: E402
from p2phd_infer.checkpoint import Checkpoint, save_checkpoint  # noqa: E402
from p2phd_infer.cli import main  # noqa: E402
from p2phd_infer.config import ModelConfig  # noqa: E402
from p2phd_infer.engines import Engine, TorchEngine  # noqa: E402
from p2phd_infer.errors import InputError  # noqa: E402
from p2phd_infer.serve.kserve import decode_request, encode_response  # noqa: E402
from helpers import cli_server, random_checkpoint  # noqa: E402

TINY = ModelConfig(label_nc=8, ngf=4, n_downsample_global=1, n_blocks_global=1, n_blocks_local=1)
FEAT = ModelConfig(label_nc=30, feat_num=3, ngf=4, n_downsample_global=1, n_blocks_global=1,
                   n_blocks_local=1)
START_TIMEOUT_S = 90


def checkpoint(cfg: ModelConfig, seed: int = 0, features=None) -> Checkpoint:
    return random_checkpoint(cfg, seed, features, std=0.2)


def scene(seed: int, h: int = 32, w: int = 32, label_nc: int = 8):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, label_nc, (h, w)).astype(np.int32)
    inst = (rng.integers(0, 4, (h, w)) * 1000 + 26000).astype(np.int32)
    return label, inst


def png(a: np.ndarray, dtype) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a.astype(dtype)).save(buf, format="PNG")
    return buf.getvalue()


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc, self.port, self.log = proc, port, log
        self.url = f"127.0.0.1:{port}"

    def get(self, path: str):
        try:
            with urllib.request.urlopen(f"http://{self.url}{path}", timeout=30) as r:
                return r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers

    def post(self, path: str, body: bytes, headers: dict):
        req = urllib.request.Request(f"http://{self.url}{path}", data=body, headers=headers,
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers

    def metric(self, name: str, labels: str = "") -> float:
        _, text, _ = self.get("/metrics")
        pat = re.escape(name + (("{" + labels + "}") if labels else "")) + r" ([0-9.e+-]+)"
        m = re.search(pat, text.decode())
        return float(m.group(1)) if m else 0.0


@contextmanager
def serve(engine: Path, *args, log_dir: Path):
    log = log_dir / f"serve-{uuid.uuid4().hex[:8]}.log"
    # --mode plain: PyTorch, as the `work` run and the reference are; the server's protocol,
    # batching and queue are tested here, its engine choice in tests/test_engine_choice.py (and
    # a server converting the model to OpenVINO at start-up costs seconds of CPU).
    with cli_server(["serve", "--engine", engine, "--mode", "plain", "--log-level", "warning",
                     *args], log,
                    timeout_s=START_TIMEOUT_S) as (proc, url):
        yield Server(proc, int(url.rsplit(":", 1)[1]), log)


def multipart(fields: dict) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        if isinstance(value, bytes):
            head = (f'Content-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
                    f"Content-Type: image/png\r\n\r\n").encode()
            parts.append(b"--" + boundary.encode() + b"\r\n" + head + value + b"\r\n")
        else:
            head = f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            parts.append(b"--" + boundary.encode() + b"\r\n" + head + str(value).encode() +
                         b"\r\n")
    body = b"".join(parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def triton_inputs(label: np.ndarray, inst: np.ndarray, binary: bool = True):
    label = label.reshape(-1, 1, *label.shape[-2:]).astype(np.int32)
    inst = inst.reshape(-1, 1, *inst.shape[-2:]).astype(np.int32)
    a = th.InferInput("label", list(label.shape), "INT32")
    a.set_data_from_numpy(label, binary_data=binary)
    b = th.InferInput("inst", list(inst.shape), "INT32")
    b.set_data_from_numpy(inst, binary_data=binary)
    return [a, b]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    save_checkpoint(checkpoint(TINY, seed=1), root / "m.pt")
    (root / "d" / "test_label").mkdir(parents=True)
    (root / "d" / "test_inst").mkdir(parents=True)
    for i in range(2):
        label, inst = scene(100 + i)
        (root / "d" / "test_label" / f"f{i}.png").write_bytes(png(label, np.uint8))
        (root / "d" / "test_inst" / f"f{i}.png").write_bytes(png(inst, np.uint16))
    res = CliRunner().invoke(main, ["run", str(root / "d" / "test_label"), "--engine",
                                    str(root / "m.pt"), "--out", str(root / "ref"), "--device",
                                    "cpu", "--mode", "plain", "--no-progress"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return root


@pytest.fixture(scope="module")
def reference(work):
    """Per-request expected images from the same weights and engine (PyTorch plain) in this
    process: on the CPU a frame never depends on its batch-mates. (`run` and the servers are given
    --mode plain for the same reason: on a CPU the default may be another backend, which agrees
    to a level.)"""
    p2p = Pix2PixHD(work / "m.pt", device="cpu", mode="plain")
    return lambda label, inst: p2p(label, inst)


@pytest.fixture(scope="module")
def server(work):
    with serve(work / "m.pt", "--max-batch-size", 4, "--max-queue-delay-us", 20000, "--max-queue",
               256, "--max-body-mb", 1, "--device", "cpu", log_dir=work) as s:
        yield s


def frame(work, i):
    label = np.array(Image.open(work / "d" / "test_label" / f"f{i}.png")).astype(np.int32)
    inst = np.array(Image.open(work / "d" / "test_inst" / f"f{i}.png")).astype(np.int32)
    ran = np.asarray(Image.open(work / "ref" / f"f{i}.png"))
    return label, inst, ran


# ---------------------------------------------------------------- protocol


def test_metadata_and_health(server):
    client = th.InferenceServerClient(server.url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("p2phd") and client.is_model_ready("p2phd", "1")
    meta = client.get_model_metadata("p2phd")
    assert meta["name"] == "p2phd"
    assert meta["inputs"] == [{"name": "label", "datatype": "INT32", "shape": [-1, 1, -1, -1]},
                              {"name": "inst", "datatype": "INT32", "shape": [-1, 1, -1, -1]}]
    assert meta["outputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    status, body, _ = server.get("/v2/models/other")
    assert status == 404 and "unknown model 'other'" in json.loads(body)["error"]
    assert server.get("/nowhere")[0] == 404


def test_tritonclient_gets_the_bytes_run_wrote(server, work):
    client = th.InferenceServerClient(server.url)
    label, inst, ran = frame(work, 0)
    for binary in (True, False):          # the binary extension and plain JSON tensors
        out = [th.InferRequestedOutput("image", binary_data=binary)]
        res = client.infer("p2phd", triton_inputs(label, inst, binary), outputs=out)
        img = res.as_numpy("image")
        assert img.dtype == np.uint8 and img.shape == (1, 32, 32, 3)
        assert np.array_equal(img[0], ran)
    # No outputs named: binary_data_output for all; a batch of 2 comes back in order.
    label1, inst1, ran1 = frame(work, 1)
    res = client.infer("p2phd", triton_inputs(np.stack([label, label1]), np.stack([inst, inst1])),
                       model_version="1", request_id="two", request_compression_algorithm="gzip")
    img = res.as_numpy("image")
    assert img.shape == (2, 32, 32, 3) and res.get_response()["id"] == "two"
    assert np.array_equal(img[0], ran) and np.array_equal(img[1], ran1)


def test_synthesize_endpoint_gets_the_pixels_run_wrote(server, work):
    label, inst, ran = frame(work, 1)
    body, headers = multipart({"label": png(label, np.uint8), "inst": png(inst, np.uint16)})
    status, data, h = server.post("/v1/synthesize", body, headers)
    assert status == 200 and h["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), ran)
    body, headers = multipart({"label": png(label, np.uint8), "inst": png(inst, np.uint16),
                               "format": "jpg"})
    status, data, h = server.post("/v1/synthesize", body, headers)
    assert status == 200 and h["content-type"] == "image/jpeg" and data[:3] == b"\xff\xd8\xff"
    body, headers = multipart({"inst": png(inst, np.uint16)})
    status, data, _ = server.post("/v1/synthesize", body, headers)
    assert status == 400 and "'label'" in json.loads(data)["error"]


def test_bad_requests_are_400_with_the_fault(server, work):
    client = th.InferenceServerClient(server.url)
    label, inst, _ = frame(work, 0)
    with pytest.raises(Exception, match="label id 9 out of range") as e:
        client.infer("p2phd", triton_inputs(np.full_like(label, 9), inst))
    assert e.value.status() == "400"
    with pytest.raises(Exception, match="differs from the label map|differs from label"):
        client.infer("p2phd", triton_inputs(label, inst[:16]))
    with pytest.raises(Exception, match="below this model's minimum"):
        client.infer("p2phd", triton_inputs(label[:6], inst[:6]))
    bad = th.InferInput("label", [1, 1, 32, 32], "FP32")
    bad.set_data_from_numpy(label[None, None].astype(np.float32))
    with pytest.raises(Exception, match="must be an integer type"):
        client.infer("p2phd", [bad, triton_inputs(label, inst)[1]])
    status, body, _ = server.post("/v2/models/p2phd/infer", b"{not json", {})
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]
    # Over --max-body-mb 1: refused from the Content-Length, before the body is sent.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v2/models/p2phd/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Length: 2000000\r\n\r\n")
        reply = b""
        while b"}" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413") and b"over the limit" in reply, reply


def test_200_requests_from_8_threads_all_answered_and_batched(server, reference):
    n = 200
    scenes = [scene(1000 + i) for i in range(n)]
    local = threading.local()

    def ask(i):
        if not hasattr(local, "client"):
            local.client = th.InferenceServerClient(server.url)
        label, inst = scenes[i]
        res = local.client.infer("p2phd", triton_inputs(label, inst), request_id=str(i))
        return res.get_response()["id"], res.as_numpy("image")[0]

    before = server.metric("p2phd_requests_total", 'endpoint="infer",status="200"')
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(n)))
    assert [rid for rid, _ in answers] == [str(i) for i in range(n)]
    for i, (_, img) in enumerate(answers):
        assert np.array_equal(img, reference(*scenes[i])), f"request {i} got another's image"
    after = server.metric("p2phd_requests_total", 'endpoint="infer",status="200"')
    assert after - before == n
    singles = server.metric("p2phd_batch_size_bucket", 'le="1.0"')
    batches = server.metric("p2phd_batch_size_count")
    assert batches > singles, "no batch of more than one frame was formed"
    assert server.metric("nv_inference_count", 'model="p2phd",version="1"') >= n


def test_a_corrupt_png_fails_alone(server, work):
    label, inst, ran = frame(work, 0)
    good, headers = multipart({"label": png(label, np.uint8), "inst": png(inst, np.uint16)})
    broken = png(label, np.uint8)
    broken = broken[: len(broken) // 2]               # a truncated PNG
    bad, bad_headers = multipart({"label": broken, "inst": png(inst, np.uint16)})

    def ask(i):
        return server.post("/v1/synthesize", bad if i == 5 else good,
                           bad_headers if i == 5 else headers)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(12)))
    for i, (status, data, _) in enumerate(answers):
        if i == 5:
            assert status == 400
            assert re.match(r"label: not a readable PNG", json.loads(data)["error"])
        else:
            assert status == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(data))), ran)


def test_a_full_queue_answers_503_and_the_rest_are_right(work, reference):
    scenes = [scene(2000 + i, 64, 64) for i in range(24)]
    with serve(work / "m.pt", "--max-queue", 1, "--max-batch-size", 1, "--max-queue-delay-us", 0,
               "--device", "cpu", log_dir=work) as s:
        local = threading.local()

        def ask(i):
            if not hasattr(local, "client"):
                local.client = th.InferenceServerClient(s.url)
            label, inst = scenes[i]
            try:
                return i, local.client.infer("p2phd", triton_inputs(label, inst)) \
                    .as_numpy("image")[0]
            except Exception as e:  # noqa: BLE001 - the test looks at what came back
                return i, e

        full = 0
        for _ in range(5):                     # a burst against a queue of 1 frame
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(ask, range(len(scenes))))
            for i, got in answers:
                if isinstance(got, Exception):
                    assert got.status() == "503" and "already queued" in str(got), got
                    full += 1
                else:
                    assert np.array_equal(got, reference(*scenes[i]))
            if full:
                break
        assert full >= 1
        assert s.metric("p2phd_failures_total", 'kind="queue_full"') == full
        # Retry-After comes with the 503 (plain HTTP, to see the header).
        label, inst = scenes[0]
        body, hdrs = multipart({"label": png(label, np.uint8), "inst": png(inst, np.uint16)})
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: s.post("/v1/synthesize", body, hdrs), range(24)))
        for st, _, h in answers:
            assert st in (200, 503)
            if st == 503:
                assert h.get("Retry-After") == "1"


def test_sigterm_answers_admitted_requests_then_exits_0(work, reference):
    scenes = [scene(3000 + i) for i in range(6)]
    # A long batching delay holds every request inside the server when the signal comes.
    with serve(work / "m.pt", "--max-batch-size", 16, "--max-queue-delay-us", 1_500_000,
               "--device", "cpu", log_dir=work) as s:
        def ask(i):
            label, inst = scenes[i]
            body, hdrs = multipart({"label": png(label, np.uint8), "inst": png(inst, np.uint16)})
            return s.post("/v1/synthesize", body, hdrs)

        pool = ThreadPoolExecutor(6)
        futures = [pool.submit(ask, i) for i in range(6)]
        deadline = time.monotonic() + 20
        while s.metric("p2phd_queue_depth") < 6:
            assert time.monotonic() < deadline, "requests never reached the runtime"
            time.sleep(0.02)
        s.proc.send_signal(signal.SIGTERM)
        answers = [f.result(timeout=60) for f in futures]
        pool.shutdown()
        assert s.proc.wait(timeout=30) == 0, s.log.read_text()
    for i, (status, data, _) in enumerate(answers):
        assert status == 200
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), reference(*scenes[i]))


# ---------------------------------------------------------------- in process


class Poisoned(Engine):
    """Raises on any batch holding a frame whose label map is all 7s."""

    def __init__(self, inner):
        self.inner, self.info, self.device = inner, inner.info, inner.device

    def __call__(self, label, inst, feat=None):
        if any(bool((label[b] == 7).all()) for b in range(label.shape[0])):
            raise RuntimeError("simulated device fault")
        return self.inner(label, inst, feat)


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_an_engine_fault_is_500_and_the_server_goes_on(work):
    from starlette.testclient import TestClient

    from p2phd_infer.serve.app import create_app
    engine = Poisoned(TorchEngine(checkpoint(TINY, seed=1), "cpu"))
    label, inst, ran = frame(work, 0)
    with TestClient(create_app(engine, max_batch_size=1)) as client:
        files = {"label": png(np.full_like(label, 7), np.uint8), "inst": png(inst, np.uint16)}
        r = client.post("/v1/synthesize", files=files)
        assert r.status_code == 500 and "simulated device fault" in r.json()["error"]
        r = client.post("/v1/synthesize", files={"label": png(label, np.uint8),
                                                 "inst": png(inst, np.uint16)})
        assert r.status_code == 200
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), ran)
        assert 'p2phd_failures_total{kind="engine"} 1.0' in client.get("/metrics").text


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_features_model_styles_per_request_and_feature_maps(tmp_path):
    from starlette.testclient import TestClient

    from p2phd_infer.serve.app import create_app
    g = torch.Generator().manual_seed(0)
    ckpt = checkpoint(FEAT, features={26: torch.randn(3, 3, generator=g),
                                      7: torch.randn(2, 3, generator=g)})
    save_checkpoint(ckpt, tmp_path / "feat.pt")
    engine = TorchEngine(tmp_path / "feat.pt", "cpu")
    label = np.full((16, 24), 7, np.int32)
    label[4:12, 4:12] = 26
    inst = np.where(label == 26, 26001, 7).astype(np.int32)
    files = {"label": png(label, np.uint8), "inst": png(inst, np.uint16)}
    with TestClient(create_app(engine, max_batch_size=2, style_cache=1)) as client:
        meta = client.get("/v2/models/p2phd").json()
        assert meta["inputs"][2] == {"name": "feat", "datatype": "FP32",
                                     "shape": [-1, 3, -1, -1]}
        got = {}
        for style in ("car=1,road=0", "car=2,road=1", "car=0,road=0"):   # more than the cache
            r = client.post("/v1/synthesize", files=files, data={"style": style, "seed": "3"})
            assert r.status_code == 200, r.text
            got[style] = np.asarray(Image.open(io.BytesIO(r.content)))
            want = Pix2PixHD(engine, style=style, seed=3)(label, inst)
            assert np.array_equal(got[style], want)
        assert not np.array_equal(got["car=1,road=0"], got["car=2,road=1"])
        r = client.post("/v1/synthesize", files=files, data={"style": "car=9"})
        assert r.status_code == 400 and "out of range" in r.json()["error"]
        # An explicit feature map through KServe JSON tensors: one engine call with it.
        feat = np.random.default_rng(0).standard_normal((1, 3, 16, 24)).astype(np.float32)
        req = {"inputs": [
            {"name": "label", "datatype": "INT32", "shape": [1, 1, 16, 24],
             "data": label.ravel().tolist()},
            {"name": "inst", "datatype": "INT32", "shape": [1, 1, 16, 24],
             "data": inst.tolist()},                       # nested lists are row-major too
            {"name": "feat", "datatype": "FP32", "shape": [1, 3, 16, 24],
             "data": feat.ravel().tolist()}]}
        r = client.post("/v2/models/p2phd/infer", json=req)
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert out["shape"] == [1, 16, 24, 3] and out["datatype"] == "UINT8"
        from p2phd_infer.synthesizer import to_uint8
        with torch.inference_mode():
            want = to_uint8(engine(torch.from_numpy(label)[None, None],
                                   torch.from_numpy(inst)[None, None],
                                   torch.from_numpy(feat)))[0].numpy()
        assert np.array_equal(np.array(out["data"], np.uint8).reshape(16, 24, 3), want)


# ---------------------------------------------------------------- the codec


def test_codec_refuses_malformed_requests_naming_the_fault():
    def req(inputs, blob=b"", **extra):
        head = json.dumps({"inputs": inputs, **extra}).encode()
        return head + blob, str(len(head)) if blob else None

    ok = {"name": "label", "datatype": "UINT8", "shape": [1, 1, 2, 2],
          "parameters": {"binary_data_size": 4}}
    body, n = req([ok], b"\x01\x02\x03\x04")
    r = decode_request(body, n, 1 << 20)
    assert r.inputs["label"].array.tolist() == [[[[1, 2], [3, 4]]]]
    cases = [
        (req([ok], b"\x01\x02\x03"), "ends at byte 4"),
        (req([ok], b"\x01\x02\x03\x04\x05"), "1 bytes of binary data after the header"),
        (req([{**ok, "parameters": {"binary_data_size": 8}}], b"\0" * 8), "does not match"),
        (req([{**ok, "datatype": "INT7"}], b"\0" * 4), "datatype 'INT7'"),
        (req([{"name": "label", "datatype": "INT32", "shape": [2], "data": [1.5, 2]}]),
         "not a list of INT32"),
        (req([{"name": "label", "datatype": "UINT8", "shape": [2], "data": [1, 300]}]),
         "do not fit UINT8"),
        (req([{"name": "label", "datatype": "INT32", "shape": [3], "data": [1, 2]}]),
         "has 2 elements"),
        (req([{"name": "label", "datatype": "INT32", "shape": [1 << 30], "data": []}]),
         "above the limit"),
        ((b'{"inputs": []}', None), "non-empty list"),
        ((b'{"inputs": [1]}', "99"), "not a length within"),
    ]
    for (body, n), fault in cases:
        with pytest.raises(InputError, match=re.escape(fault)):
            decode_request(body, n, 1 << 20)
    body, headers = encode_response("m", "1", "x", [("image", np.arange(6, dtype=np.uint8)
                                                     .reshape(1, 1, 2, 3), True)])
    head = json.loads(body[: int(headers["inference-header-content-length"])])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 6 and head["id"] == "x"
    assert body.endswith(bytes(range(6)))
