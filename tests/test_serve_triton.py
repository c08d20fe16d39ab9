"""`p2phd-infer serve --model-repository` driven as a Triton user drives a server, with
tritonclient.http: model configuration, metadata, infer (binary, JSON, batch 2), statistics that
count the requests just made, repository index / load / unload across two models, per-model
batching from config.pbtxt, Triton's metric names; images bit-identical to `run --mode plain`
on the same model file. One server for the module (tiny models, 32x32 frames)."""
from __future__ import annotations

import io
import re
import socket
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
th = pytest.importorskip("tritonclient.http")

from p2phd_infer.cli import main  # noqa: E402
from p2phd_infer.config import ModelConfig  # noqa: E402
from p2phd_infer.errors import InputError  # noqa: E402
from p2phd_infer.serve.repository import parse_pbtxt  # noqa: E402
from helpers import cli_server, save_random_model  # noqa: E402

TINY = ModelConfig(label_nc=8, ngf=4, n_downsample_global=1, n_blocks_global=1, n_blocks_local=1)
SLOW_DELAY_US = 2_000_000     # model "held": its frames wait this long for batch-mates


def ids(seed: int, h: int = 32, w: int = 32):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 8, (h, w)).astype(np.int32)
    inst = (rng.integers(0, 4, (h, w)) * 1000 + 26000).astype(np.int32)
    return label, inst


def inputs(label, inst, binary=True):
    label = label.reshape(-1, 1, *label.shape[-2:]).astype(np.int32)
    inst = inst.reshape(-1, 1, *inst.shape[-2:]).astype(np.int32)
    out = []
    for name, a in (("label", label), ("inst", inst)):
        t = th.InferInput(name, list(a.shape), "INT32")
        t.set_data_from_numpy(a, binary_data=binary)
        out.append(t)
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """DIR/a/1, DIR/a/2 (other weights), DIR/b/1, DIR/held/1 (a long batching delay from its
    config.pbtxt); `run --mode plain` images of frames 0 and 1 with a/1 and b/1."""
    root = tmp_path_factory.mktemp("repo")
    repo = root / "models"
    for name, version, seed in (("a", 1, 1), ("a", 2, 2), ("b", 1, 3), ("held", 1, 4)):
        (repo / name / str(version)).mkdir(parents=True)
        save_random_model(repo / name / str(version) / "model.pt", TINY, seed, std=0.2)
    (repo / "held" / "config.pbtxt").write_text(
        "# per-model batching\nmax_batch_size: 8\ndynamic_batching {\n"
        f"  max_queue_delay_microseconds: {SLOW_DELAY_US}\n"
        "  default_queue_policy { max_queue_size: 32 }\n}\n")
    (repo / "notes.txt").write_text("not a model")
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.pt").write_bytes(b"not a checkpoint")
    (repo / "empty" / "1").mkdir(parents=True)            # no model file: not a model
    frames = root / "frames"
    (frames / "test_label").mkdir(parents=True)
    (frames / "test_inst").mkdir(parents=True)
    for i in range(2):
        label, inst = ids(100 + i)
        Image.fromarray(label.astype(np.uint8)).save(frames / "test_label" / f"f{i}.png")
        Image.fromarray(inst.astype(np.uint16)).save(frames / "test_inst" / f"f{i}.png")
    for name in ("a", "b"):
        res = CliRunner().invoke(main, ["run", str(frames / "test_label"), "--engine",
                                        str(repo / name / "1" / "model.pt"), "--out",
                                        str(root / f"ran-{name}"), "--device", "cpu", "--mode",
                                        "plain", "--no-progress"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
    return root


def ran(repo: Path, name: str, i: int) -> np.ndarray:
    return np.asarray(Image.open(repo / f"ran-{name}" / f"f{i}.png"))


@pytest.fixture(scope="module")
def server(repo):
    log = repo / f"serve-{uuid.uuid4().hex[:8]}.log"
    args = ["serve", "--model-repository", repo / "models", "--model-control-mode", "explicit",
            "--load-model", "a", "--load-model", "held", "--max-batch-size", "4",
            "--max-queue-delay-us", "5000", "--device", "cpu", "--mode", "plain",
            "--log-level", "info"]
    with cli_server(args, log, timeout_s=90) as (proc, url):
        yield url.removeprefix("http://"), log


def metric(url: str, name: str, labels: str) -> float:
    import urllib.request
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=30) as r:
        text = r.read().decode()
    key = f"{name}{{{labels}}}" if labels else name
    m = re.search("^" + re.escape(key) + r" ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


# ---------------------------------------------------------------------------- protocol


def test_config_and_metadata_agree(server):
    client = th.InferenceServerClient(server[0])
    meta = client.get_model_metadata("a")
    cfg = client.get_model_config("a")
    assert meta["versions"] == ["1", "2"]
    assert cfg["name"] == "a" and cfg["backend"] == "pytorch" and cfg["max_batch_size"] == 4
    assert [i["name"] for i in cfg["input"]] == [i["name"] for i in meta["inputs"]] == \
        ["label", "inst"]
    for c, m in zip(cfg["input"] + cfg["output"], meta["inputs"] + meta["outputs"]):
        assert c["data_type"] == "TYPE_" + m["datatype"]
        assert [-1] + c["dims"] == m["shape"]            # config leaves out the batch dim
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 5000
    assert cfg["instance_group"][0]["kind"] == "KIND_CPU"
    # Per-model batching from config.pbtxt.
    held = client.get_model_config("held")
    assert held["max_batch_size"] == 8
    assert held["dynamic_batching"]["max_queue_delay_microseconds"] == SLOW_DELAY_US
    assert held["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 32
    assert client.get_model_config("a", "2")["name"] == "a"
    ext = client.get_server_metadata()["extensions"]
    assert {"statistics", "model_configuration", "model_repository"} <= set(ext)
    with pytest.raises(Exception, match="no version '7'"):
        client.get_model_config("a", "7")


def test_infer_binary_json_and_batch_are_runs_bytes_and_stats_count_them(server, repo):
    client = th.InferenceServerClient(server[0])
    before = client.get_inference_statistics("a", "1")["model_stats"][0]
    (l0, i0), (l1, i1) = ids(100), ids(101)
    for binary in (True, False):
        out = [th.InferRequestedOutput("image", binary_data=binary)]
        img = client.infer("a", inputs(l0, i0, binary), outputs=out,
                           model_version="1").as_numpy("image")
        assert img.shape == (1, 32, 32, 3) and np.array_equal(img[0], ran(repo, "a", 0))
    res = client.infer("a", inputs(np.stack([l0, l1]), np.stack([i0, i1])), model_version="1")
    img = res.as_numpy("image")
    assert np.array_equal(img[0], ran(repo, "a", 0)) and np.array_equal(img[1],
                                                                         ran(repo, "a", 1))
    # Version 2 holds other weights; no version given is the latest.
    v2 = client.infer("a", inputs(l0, i0)).as_numpy("image")
    assert res.get_response()["model_version"] == "1"
    assert not np.array_equal(v2[0], ran(repo, "a", 0))
    with pytest.raises(Exception, match="out of range"):
        client.infer("a", inputs(np.full_like(l0, 9), i0), model_version="1")

    after = client.get_inference_statistics("a", "1")["model_stats"][0]
    st, bt = after["inference_stats"], before["inference_stats"]
    assert st["success"]["count"] - bt["success"]["count"] == 3
    assert st["fail"]["count"] - bt["fail"]["count"] == 1
    assert after["inference_count"] - before["inference_count"] == 4      # 1 + 1 + 2 frames
    # Engine calls: the batch of 2 is one or (frames decoded far apart) two.
    assert 3 <= after["execution_count"] - before["execution_count"] <= 4
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert st[phase]["count"] - bt[phase]["count"] == 3
        assert st[phase]["ns"] > bt[phase]["ns"]
    # The engine calls' time is part of the requests' time.
    assert st["compute_infer"]["ns"] < st["success"]["ns"]
    # Every frame inferred was in exactly one engine call of its batch size.
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in after["batch_stats"]) == \
        after["inference_count"]
    assert sum(b["compute_infer"]["count"] for b in after["batch_stats"]) == \
        after["execution_count"]
    every = client.get_inference_statistics()["model_stats"]
    assert {(m["name"], m["version"]) for m in every} == {("a", "1"), ("a", "2"),
                                                          ("held", "1")}
    # The same numbers under Triton's metric names, typed as Triton types them.
    url = server[0]
    import urllib.request
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=30) as r:
        text = r.read().decode()
    assert "# TYPE nv_inference_count counter\n" in text
    assert "# TYPE nv_inference_pending_request_count gauge\n" in text
    assert not [line for line in text.splitlines() if line.startswith("nv_inference") and
                "_total" in line]
    assert metric(url, "nv_inference_count", 'model="a",version="1"') == \
        after["inference_count"]
    assert metric(url, "nv_inference_request_success", 'model="a",version="1"') == \
        st["success"]["count"]
    assert metric(url, "nv_inference_request_failure",
                  'model="a",reason="OTHER",version="1"') >= 1
    assert metric(url, "nv_inference_exec_count", 'model="a",version="1"') == \
        after["execution_count"]
    assert metric(url, "nv_inference_compute_infer_duration_us", 'model="a",version="1"') == \
        pytest.approx(st["compute_infer"]["ns"] / 1e3)


def test_repository_index_load_unload_across_two_models(server, repo):
    client = th.InferenceServerClient(server[0])
    index = {(m["name"], m["version"]): m["state"]
             for m in client.get_model_repository_index()}
    assert index == {("a", "1"): "READY", ("a", "2"): "READY", ("b", "1"): "UNAVAILABLE",
                     ("held", "1"): "READY", ("broken", "1"): "UNAVAILABLE"}
    # A model that cannot load says why, once asked and in the index; the others serve on.
    with pytest.raises(Exception, match="model.pt") as e:
        client.load_model("broken")
    assert e.value.status() == "400"
    reason = {m["name"]: m.get("reason") for m in client.get_model_repository_index()}
    assert "model.pt" in reason["broken"] and reason["b"] == "unloaded"
    assert not client.is_model_ready("b")
    with pytest.raises(Exception, match="not loaded"):
        client.infer("b", inputs(*ids(100)))
    client.load_model("b")
    assert client.is_model_ready("b")
    img = client.infer("b", inputs(*ids(100))).as_numpy("image")
    assert np.array_equal(img[0], ran(repo, "b", 0))
    # The multipart endpoint picks a model by name too.
    import urllib.request
    boundary = "b0undary"
    png = (repo / "frames" / "test_label" / "f1.png").read_bytes()
    inst = (repo / "frames" / "test_inst" / "f1.png").read_bytes()
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"'
                    f'{"; filename=" + chr(34) + n + chr(34) if isinstance(v, bytes) else ""}'
                    f"\r\n\r\n".encode() + (v if isinstance(v, bytes) else v.encode()) +
                    b"\r\n" for n, v in (("label", png), ("inst", inst), ("model", "b")))
    body += f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"http://{server[0]}/v1/synthesize", data=body, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.read()))), ran(repo, "b", 1))
    calls = metric(server[0], "p2phd_batch_size_count", "")
    client.unload_model("a")
    assert not client.is_model_ready("a") and client.is_model_ready("b")
    # An unloaded model's engine calls stay counted (a counter never goes down).
    assert metric(server[0], "p2phd_batch_size_count", "") == calls
    with pytest.raises(Exception, match="not loaded"):
        client.infer("a", inputs(*ids(100)))
    client.load_model("a")                          # back, with the same bytes
    img = client.infer("a", inputs(*ids(101)), model_version="1").as_numpy("image")
    assert np.array_equal(img[0], ran(repo, "a", 1))
    with pytest.raises(Exception, match="no such model"):
        client.load_model("nothing")
    with pytest.raises(Exception, match="not supported"):
        client.load_model("b", config='{"max_batch_size": 2}')
    ready = client.get_model_repository_index()
    assert {m["name"] for m in ready if m["state"] == "READY"} == {"a", "b", "held"}
    assert not client.is_model_ready("broken") and client.is_server_ready()


def test_a_client_that_goes_away_is_cancelled_and_its_frames_never_run(server):
    """A request to `held` waits 3 s for batch-mates; its client leaves after 0.3 s."""
    url, log = server
    client = th.InferenceServerClient(url)
    before = client.get_inference_statistics("held")["model_stats"][0]
    label, inst = ids(7)
    body = (b'{"inputs":[{"name":"label","datatype":"INT32","shape":[1,1,32,32],"data":'
            + str(label.ravel().tolist()).replace(" ", "").encode() +
            b'},{"name":"inst","datatype":"INT32","shape":[1,1,32,32],"data":'
            + str(inst.ravel().tolist()).replace(" ", "").encode() + b'}]}')
    host, port = url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v2/models/held/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.3)
    deadline = time.monotonic() + 20
    while metric(url, "nv_inference_request_failure",
                 'model="held",reason="CANCELED",version="1"') < 1:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    time.sleep(SLOW_DELAY_US / 1e6)                     # past its batch's deadline
    after = client.get_inference_statistics("held")["model_stats"][0]
    assert after["execution_count"] == before["execution_count"], "the frame reached the engine"
    assert after["inference_stats"]["fail"]["count"] == \
        before["inference_stats"]["fail"]["count"] + 1
    assert metric(url, "p2phd_failures_total", 'kind="cancelled"') >= 1
    assert client.is_server_ready()
    text = log.read_text()
    assert "Traceback" not in text
    assert len([line for line in text.splitlines() if "cancelled:" in line]) == 1


# ---------------------------------------------------------------------------- config.pbtxt


def test_pbtxt_reader():
    doc = parse_pbtxt('name: "m"  # a comment\nmax_batch_size: 8\n'
                      'input [ { name: "label" dims: [1, -1, -1] }, { name: "inst" } ]\n'
                      'instance_group { kind: KIND_CPU } instance_group { kind: KIND_GPU }\n'
                      'dynamic_batching { preferred_batch_size: [4, 8] }')
    assert doc == {"name": "m", "max_batch_size": 8,
                   "input": [{"name": "label", "dims": [1, -1, -1]}, {"name": "inst"}],
                   "instance_group": [{"kind": "KIND_CPU"}, {"kind": "KIND_GPU"}],
                   "dynamic_batching": {"preferred_batch_size": [4, 8]}}
    for bad, fault in (("a: {", "missing '}'"), ("a: ]", "unexpected ']'"),
                       ('a: "x', "unclosed string"), ("{" * 100, "expected a field name"),
                       ("a " + "{ a " * 40 + "}" * 40, "nested too deeply")):
        with pytest.raises(InputError, match=re.escape(fault)):
            parse_pbtxt(bad)


# ---------------------------------------------------------------------------- NVML


def test_gpu_metrics_read_through_nvml(monkeypatch):
    """The nv_gpu_* mapping against a stand-in for NVML's Python module (this machine has no
    GPU; on one, the same calls reach the driver)."""
    import sys
    import types

    from prometheus_client import CollectorRegistry

    from p2phd_infer.serve import metrics

    class NVMLError(Exception):
        pass

    def no_power_limit(h):
        raise NVMLError("not supported")

    fake = types.SimpleNamespace(
        NVMLError=NVMLError, nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: i, nvmlDeviceGetUUID=lambda h: b"GPU-1234",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=80 << 30, used=1 << 30),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=37),
        nvmlDeviceGetPowerUsage=lambda h: 123_456, nvmlDeviceGetPowerManagementLimit=no_power_limit,
        nvmlDeviceGetTotalEnergyConsumption=lambda h: 9_000_000)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    registry = CollectorRegistry()
    registry.register(metrics._HostCollector())
    text = metrics._triton_text(registry).decode()
    for line in ('nv_gpu_utilization{gpu_uuid="GPU-1234"} 0.37',
                 'nv_gpu_memory_total_bytes{gpu_uuid="GPU-1234"} 8.589934592e+10',
                 'nv_gpu_memory_used_bytes{gpu_uuid="GPU-1234"} 1.073741824e+09',
                 'nv_gpu_power_usage{gpu_uuid="GPU-1234"} 123.456',
                 'nv_energy_consumption{gpu_uuid="GPU-1234"} 9000.0'):
        assert line in text, text
    assert 'nv_gpu_power_limit{' not in text          # a figure the GPU does not report
    # Triton's own spelling: the TYPE line names the family as its samples do (no _total).
    assert "# TYPE nv_energy_consumption counter\n" in text
    assert "nv_cpu_utilization " in text and "nv_cpu_memory_total_bytes " in text
