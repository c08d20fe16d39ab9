"""`p2phd-infer serve` over gRPC (Triton's GRPCInferenceService) and Triton's shared-memory
extensions: the real server as a subprocess (HTTP and gRPC on free loopback ports), driven with
tritonclient.grpc and tritonclient.http; every image compared bit for bit with what
`run --mode plain` wrote for the same frame and weights (on the CPU a frame never depends on its
batch-mates, so batches compare exactly too)."""
from __future__ import annotations

import base64
import json
import os
import re
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

tg = pytest.importorskip("tritonclient.grpc")
th = pytest.importorskip("tritonclient.http")
grpc = pytest.importorskip("grpc")
tshm = pytest.importorskip("tritonclient.utils.shared_memory")

from google.protobuf.json_format import MessageToDict  # noqa: E402

from p2phd_infer.checkpoint import save_checkpoint  # noqa: E402
from p2phd_infer.cli import main  # noqa: E402
from p2phd_infer.config import ModelConfig  # noqa: E402
from p2phd_infer.errors import InputError, NotFound  # noqa: E402
from p2phd_infer.serve.shared_memory import SharedMemory  # noqa: E402
from helpers import cli_server, random_checkpoint  # noqa: E402

TINY = ModelConfig(label_nc=8, ngf=4, n_downsample_global=1, n_blocks_global=1, n_blocks_local=1)
H, W = 32, 64
FRAME_BYTES = H * W * 4                 # one INT32 map
IMAGE_BYTES = H * W * 3                 # one uint8 RGB image


def scene(seed: int):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, TINY.label_nc, (H, W)).astype(np.int32)
    inst = (rng.integers(0, 4, (H, W)) * 1000 + 26000).astype(np.int32)
    return label, inst


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpc")
    save_checkpoint(random_checkpoint(TINY, 3, std=0.2), root / "m.pt")
    (root / "labels").mkdir()
    (root / "insts").mkdir()
    for i in range(2):
        label, inst = scene(200 + i)
        Image.fromarray(label.astype(np.uint8)).save(root / "labels" / f"f{i}.png")
        Image.fromarray(inst.astype(np.uint16)).save(root / "insts" / f"f{i}.png")
    res = CliRunner().invoke(main, ["run", str(root / "labels"), "--instances",
                                    str(root / "insts"), "--engine", str(root / "m.pt"),
                                    "--out", str(root / "ref"), "--device", "cpu", "--mode",
                                    "plain", "--no-progress"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return root


def frame(work: Path, i: int):
    label, inst = scene(200 + i)
    return label, inst, np.asarray(Image.open(work / "ref" / f"f{i}.png"))


class Servers:
    def __init__(self, http_url: str, grpc_url: str, log: Path):
        self.http_url, self.grpc_url, self.log = http_url, grpc_url, log


@pytest.fixture(scope="module")
def server(work):
    log = work / "serve.log"
    with cli_server(["serve", "--engine", work / "m.pt", "--device", "cpu", "--mode", "plain",
                     "--max-batch-size", 4, "--max-queue-delay-us", 5000, "--log-level", "warning",
                     "--grpc-port", 0], log) as (proc, url):
        m = re.search(r"gRPC on (\S+)", log.read_text())
        assert m, log.read_text()
        yield Servers(url.removeprefix("http://"), m.group(1), log)


@pytest.fixture(scope="module")
def client(server):
    return tg.InferenceServerClient(server.grpc_url)


def grpc_inputs(label: np.ndarray, inst: np.ndarray):
    label = label.reshape(-1, 1, H, W).astype(np.int32)
    inst = inst.reshape(-1, 1, H, W).astype(np.int32)
    a = tg.InferInput("label", list(label.shape), "INT32")
    a.set_data_from_numpy(label)
    b = tg.InferInput("inst", list(inst.shape), "INT32")
    b.set_data_from_numpy(inst)
    return [a, b]


def fault(call) -> "tg.InferenceServerException":
    with pytest.raises(tg.InferenceServerException) as e:
        call()
    return e.value


# ---------------------------------------------------------------- protocol


def test_health_metadata_and_config_match_http(server, client):
    http = th.InferenceServerClient(server.http_url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("p2phd") and client.is_model_ready("p2phd", "1")
    exts = list(client.get_server_metadata().extensions)
    assert {"statistics", "model_configuration", "system_shared_memory"} <= set(exts)
    meta = client.get_model_metadata("p2phd", as_json=True)
    want = http.get_model_metadata("p2phd")
    for t in meta["inputs"] + meta["outputs"]:      # MessageToDict writes int64 as strings
        t["shape"] = [int(d) for d in t["shape"]]
    assert meta == want
    config = client.get_model_config("p2phd").config
    http_config = http.get_model_config("p2phd")
    assert config.name == "p2phd" and config.max_batch_size == http_config["max_batch_size"] == 4
    assert [(i.name, i.data_type, list(i.dims), i.optional) for i in config.input] == \
        [(i["name"], tg.model_config_pb2.DataType.Value(i["data_type"]), i["dims"],
          i.get("optional", False)) for i in http_config["input"]]
    assert config.output[0].data_type == tg.model_config_pb2.TYPE_UINT8
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    assert config.instance_group[0].kind == tg.model_config_pb2.ModelInstanceGroup.KIND_CPU
    e = fault(lambda: client.get_model_metadata("other"))
    assert e.status() == "StatusCode.NOT_FOUND" and "unknown model 'other'" in e.message()
    e = fault(lambda: client.get_model_config("p2phd", "7"))
    assert e.status() == "StatusCode.NOT_FOUND" and "no version '7'" in e.message()


def test_infer_batch_of_2_and_a_stream_give_the_pixels_run_wrote(client, work):
    (l0, i0, ran0), (l1, i1, ran1) = frame(work, 0), frame(work, 1)
    res = client.infer("p2phd", grpc_inputs(l0, i0), request_id="one")
    assert res.get_response().id == "one"
    assert np.array_equal(res.as_numpy("image")[0], ran0)
    res = client.infer("p2phd", grpc_inputs(np.stack([l0, l1]), np.stack([i0, i1])),
                       model_version="1", outputs=[tg.InferRequestedOutput("image")])
    img = res.as_numpy("image")
    assert img.shape == (2, H, W, 3) and img.dtype == np.uint8
    assert np.array_equal(img[0], ran0) and np.array_equal(img[1], ran1)
    # ModelStreamInfer: several requests in flight on one stream, each answered by id.
    answers = {}
    client.start_stream(lambda result, error: answers.update({
        (error is None and result.get_response().id) or "error": result or error}))
    try:
        for k in range(3):
            client.async_stream_infer("p2phd", grpc_inputs(*frame(work, k % 2)[:2]),
                                      request_id=f"s{k}")
        client.async_stream_infer("p2phd", grpc_inputs(l0, i0)[:1], request_id="bad")
    finally:
        client.stop_stream()
    for k in range(3):
        assert np.array_equal(answers[f"s{k}"].as_numpy("image")[0], frame(work, k % 2)[2])
    assert "this model needs an instance map" in str(answers["error"])


def test_typed_contents_and_malformed_requests(server, work):
    """Requests tritonclient never sends (typed contents, raw entries that do not match) built
    with its generated messages on a plain channel."""
    pb, stub_cls = tg.service_pb2, tg.service_pb2_grpc.GRPCInferenceServiceStub
    label, inst, ran = frame(work, 0)
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = stub_cls(channel)

        def request(**kw):
            req = pb.ModelInferRequest(model_name="p2phd")
            for name, a in (("label", label), ("inst", inst)):
                t = req.inputs.add(name=name, datatype="INT32", shape=[1, 1, H, W])
                if kw.get("typed"):
                    t.contents.int_contents.extend(a.reshape(-1).tolist())
            if not kw.get("typed"):
                req.raw_input_contents.extend([label.tobytes(), inst.tobytes()]
                                              [:kw.get("raw", 2)])
            return req

        out = stub.ModelInfer(request(typed=True))
        img = np.frombuffer(out.raw_output_contents[0], np.uint8).reshape(1, H, W, 3)
        assert np.array_equal(img[0], ran)
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(request(raw=1))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details() == "inst: raw_input_contents has 1 entries; input 'inst' has none"
        bad = request()
        bad.raw_input_contents[0] = label.tobytes()[:-4]
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "label: 8188 bytes of data; shape [1, 1, 32, 64] of INT32 needs 8192" in \
            e.value.details()
        assert "\n" not in e.value.details()
        bad = request()
        bad.raw_input_contents[0] = np.full((H, W), 99, np.int32).tobytes()
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "label" in \
            e.value.details()
    assert "Traceback" not in server.log.read_text()


def test_statistics_count_the_requests_just_made(client, work):
    def stats():
        s = client.get_inference_statistics("p2phd", "1").model_stats[0]
        return s.inference_count, s.inference_stats.success.count, s.inference_stats.fail.count
    before = stats()
    label, inst, _ = frame(work, 0)
    client.infer("p2phd", grpc_inputs(np.stack([label, label]), np.stack([inst, inst])))
    client.infer("p2phd", grpc_inputs(label, inst))
    fault(lambda: client.infer("p2phd", grpc_inputs(label, inst)[:1]))
    after = stats()
    assert after[0] - before[0] == 3            # frames
    assert after[1] - before[1] == 2            # successful requests
    assert after[2] - before[2] == 1
    s = client.get_inference_statistics("p2phd").model_stats[0]
    assert s.execution_count >= 2 and s.inference_stats.compute_infer.ns > 0
    assert sum(b.compute_infer.count for b in s.batch_stats) == s.execution_count


# ---------------------------------------------------------------- shared memory


@pytest.fixture
def regions():
    """Two system shared-memory regions (inputs: label + inst of two frames; the output images)
    made the way a Triton client makes them; destroyed afterwards."""
    key = uuid.uuid4().hex[:12]
    made = [tshm.create_shared_memory_region(f"in{key}", f"/p2p_in_{key}", 4 * FRAME_BYTES),
            tshm.create_shared_memory_region(f"out{key}", f"/p2p_out_{key}", 2 * IMAGE_BYTES)]
    yield key, made
    for h in made:
        tshm.destroy_shared_memory_region(h)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_system_shared_memory_in_and_out(server, work, regions, protocol):
    key, (hin, hout) = regions
    mod = tg if protocol == "grpc" else th
    c = mod.InferenceServerClient(server.grpc_url if protocol == "grpc" else server.http_url)
    (l0, i0, ran0), (l1, i1, ran1) = frame(work, 0), frame(work, 1)
    labels = np.stack([l0, l1])[:, None]
    insts = np.stack([i0, i1])[:, None]
    tshm.set_shared_memory_region(hin, [labels, insts])      # labels, then insts
    c.register_system_shared_memory(f"in{key}", f"/p2p_in_{key}", 4 * FRAME_BYTES)
    c.register_system_shared_memory(f"out{key}", f"/p2p_out_{key}", 2 * IMAGE_BYTES)
    try:
        status = c.get_system_shared_memory_status(f"in{key}")
        if protocol == "grpc":
            assert status.regions[f"in{key}"].byte_size == 4 * FRAME_BYTES
        else:
            assert status == [{"name": f"in{key}", "key": f"/p2p_in_{key}", "offset": 0,
                               "byte_size": 4 * FRAME_BYTES}]
        a = mod.InferInput("label", [2, 1, H, W], "INT32")
        a.set_shared_memory(f"in{key}", 2 * FRAME_BYTES)
        b = mod.InferInput("inst", [2, 1, H, W], "INT32")
        b.set_shared_memory(f"in{key}", 2 * FRAME_BYTES, offset=2 * FRAME_BYTES)
        o = mod.InferRequestedOutput("image")
        o.set_shared_memory(f"out{key}", 2 * IMAGE_BYTES)
        res = c.infer("p2phd", [a, b], outputs=[o])
        out = res.get_output("image")
        # What Triton's C++ client (perf_analyzer) reads without checking: one raw entry per
        # output over gRPC, binary_data_size in an HTTP output's parameters.
        if protocol == "grpc":
            assert list(res.get_response().raw_output_contents) == [b""]
        else:
            assert out["parameters"]["binary_data_size"] == 0
        params = out.parameters if protocol == "grpc" else out["parameters"]
        region = params["shared_memory_region"]
        assert (region.string_param if protocol == "grpc" else region) == f"out{key}"
        img = tshm.get_contents_as_numpy(hout, np.uint8, [2, H, W, 3])
        assert np.array_equal(img[0], ran0) and np.array_equal(img[1], ran1)
        # One frame, its output at an offset inside the region; the rest left as it was.
        a = mod.InferInput("label", [1, 1, H, W], "INT32")
        a.set_shared_memory(f"in{key}", FRAME_BYTES, offset=FRAME_BYTES)
        b = mod.InferInput("inst", [1, 1, H, W], "INT32")
        b.set_shared_memory(f"in{key}", FRAME_BYTES, offset=3 * FRAME_BYTES)
        tshm.set_shared_memory_region(hout, [np.zeros((2, H, W, 3), np.uint8)])
        o = mod.InferRequestedOutput("image")
        o.set_shared_memory(f"out{key}", IMAGE_BYTES, offset=IMAGE_BYTES)
        c.infer("p2phd", [a, b], outputs=[o])
        img = tshm.get_contents_as_numpy(hout, np.uint8, [2, H, W, 3])
        assert not img[0].any() and np.array_equal(img[1], ran1)

        # Region faults: one line each, the request fails alone.
        def refused(inputs, outputs=None):
            with pytest.raises(mod.InferenceServerException) as e:
                c.infer("p2phd", inputs, outputs=outputs)
            return e.value.message()
        o = mod.InferRequestedOutput("image")
        o.set_shared_memory(f"out{key}", IMAGE_BYTES - 1)
        assert refused([a, b], [o]) == (f"image: shared_memory_byte_size {IMAGE_BYTES - 1} is "
                                        f"too small for the output ({IMAGE_BYTES} bytes)")
        b2 = mod.InferInput("inst", [1, 1, H, W], "INT32")
        b2.set_shared_memory(f"in{key}", FRAME_BYTES, offset=3 * FRAME_BYTES + 4)
        assert "is past the end of region" in refused([a, b2])
        b3 = mod.InferInput("inst", [1, 1, H, W], "INT32")
        b3.set_shared_memory("nowhere", FRAME_BYTES)
        assert refused([a, b3]) == "inst: shared memory region 'nowhere' is not registered"
        b4 = mod.InferInput("inst", [1, 1, H, W], "INT32")
        b4.set_shared_memory(f"in{key}", FRAME_BYTES - 4)
        assert "does not match its shape and datatype" in refused([a, b4])
        with pytest.raises(mod.InferenceServerException) as e:
            c.register_system_shared_memory(f"in{key}", f"/p2p_in_{key}", 8)
        assert "already registered" in e.value.message()
        with pytest.raises(mod.InferenceServerException) as e:
            c.register_system_shared_memory("big", f"/p2p_in_{key}", 4 * FRAME_BYTES + 1)
        assert "is past the end of key" in e.value.message()
    finally:
        c.unregister_system_shared_memory(f"in{key}")
    with pytest.raises(mod.InferenceServerException) as e:
        c.unregister_system_shared_memory(f"in{key}")
    assert "no system shared memory region" in e.value.message()
    c.unregister_system_shared_memory()          # every region (perf_analyzer starts so)
    regions = c.get_system_shared_memory_status()
    assert not (regions.regions if protocol == "grpc" else regions)
    with pytest.raises(mod.InferenceServerException) as e:
        c.get_system_shared_memory_status(f"in{key}")
    assert "no system shared memory region" in e.value.message()
    assert "Traceback" not in server.log.read_text()


def test_cuda_shared_memory_without_cuda_is_one_line(client):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: test_cuda_shared_memory_in_and_out covers it")
    e = fault(lambda: client.register_cuda_shared_memory("c", base64.b64encode(bytes(64)), 0,
                                                         1024))
    assert e.status() == "StatusCode.INVALID_ARGUMENT"
    assert e.message() == "cuda shared memory: needs a CUDA device; this server has none"
    assert not client.get_cuda_shared_memory_status().regions
    client.unregister_cuda_shared_memory()       # none to drop: fine (perf_analyzer starts so)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA shared memory needs a CUDA "
                                                          "device (none here)")
def test_cuda_shared_memory_in_and_out(tmp_path, work):
    cudashm = pytest.importorskip("tritonclient.utils.cuda_shared_memory")
    log = tmp_path / "serve.log"
    with cli_server(["serve", "--engine", work / "m.pt", "--device", "cuda", "--mode", "plain",
                     "--log-level", "warning", "--grpc-port", 0], log):
        grpc_url = re.search(r"gRPC on (\S+)", log.read_text()).group(1)
        c = tg.InferenceServerClient(grpc_url)
        label, inst, _ = frame(work, 0)
        hin = cudashm.create_shared_memory_region("cin", 2 * FRAME_BYTES, 0)
        hout = cudashm.create_shared_memory_region("cout", IMAGE_BYTES, 0)
        try:
            cudashm.set_shared_memory_region(hin, [label[None, None], inst[None, None]])
            c.register_cuda_shared_memory("cin", cudashm.get_raw_handle(hin), 0, 2 * FRAME_BYTES)
            c.register_cuda_shared_memory("cout", cudashm.get_raw_handle(hout), 0, IMAGE_BYTES)
            a = tg.InferInput("label", [1, 1, H, W], "INT32")
            a.set_shared_memory("cin", FRAME_BYTES)
            b = tg.InferInput("inst", [1, 1, H, W], "INT32")
            b.set_shared_memory("cin", FRAME_BYTES, offset=FRAME_BYTES)
            o = tg.InferRequestedOutput("image")
            o.set_shared_memory("cout", IMAGE_BYTES)
            c.infer("p2phd", [a, b], outputs=[o])
            got = cudashm.get_contents_as_numpy(hout, np.uint8, [1, H, W, 3])
            want = c.infer("p2phd", grpc_inputs(label, inst)).as_numpy("image")
            assert np.array_equal(got, want)
        finally:
            c.unregister_cuda_shared_memory()
            cudashm.destroy_shared_memory_region(hin)
            cudashm.destroy_shared_memory_region(hout)


def test_region_checks_without_a_server(tmp_path):
    """SharedMemory's checks on their own: keys that leave /dev/shm, bad counts, bounds."""
    shm = SharedMemory()
    key = f"/p2p_unit_{uuid.uuid4().hex[:8]}"
    h = tshm.create_shared_memory_region("u", key, 10000)
    try:
        for bad in ("../etc/passwd", "/a/b", "", "/"):
            with pytest.raises(InputError, match="is not a shared memory key"):
                shm.register_system("r", bad, 0, 16)
        with pytest.raises(InputError, match="offset -1 is not a non-negative integer"):
            shm.register_system("r", key, -1, 16)
        with pytest.raises(InputError, match="byte_size 0"):
            shm.register_system("r", key, 0, 0)
        with pytest.raises(InputError, match="region name"):
            shm.register_system("bad\nname", key, 0, 16)
        # A region at an offset that is not page-aligned reads from where it says.
        tshm.set_shared_memory_region(h, [np.arange(2500, dtype=np.int32)])
        shm.register_system("r", key, 4 * 1001, 400)
        got = np.frombuffer(shm.read({"shared_memory_region": "r",
                                      "shared_memory_byte_size": 40,
                                      "shared_memory_offset": 8}, "x", 40), np.int32)
        assert got.tolist() == list(range(1003, 1013))
        for params, msg in (({"shared_memory_region": "r"}, "without shared_memory_byte_size"),
                            ({"shared_memory_region": "r", "shared_memory_byte_size": True},
                             "is not a non-negative integer"),
                            ({"shared_memory_region": "r", "shared_memory_byte_size": 40,
                              "shared_memory_offset": 361}, "past the end of region 'r'")):
            with pytest.raises(InputError, match=msg):
                shm.read(params, "x", 40)
        n = shm.write({"shared_memory_region": "r", "shared_memory_byte_size": 8},
                      "y", np.array([7, 8], np.int32))
        assert n == 8 and tshm.get_contents_as_numpy(h, np.int32, [2], offset=4004).tolist() \
            == [7, 8]
        # A client that shrinks the object after registering: one line, not SIGBUS.
        os.truncate("/dev/shm/" + key.lstrip("/"), 4000)
        with pytest.raises(InputError, match="shrank below its registered size"):
            shm.read({"shared_memory_region": "r", "shared_memory_byte_size": 40}, "x", 40)
        with pytest.raises(NotFound):
            shm.unregister("system", "nope")
        with pytest.raises(NotFound):
            shm.status("cuda", "r")
        shm.unregister("system")
        assert shm.status("system") == []
    finally:
        shm.close()
        tshm.destroy_shared_memory_region(h)


# ---------------------------------------------------------------- tools


def test_committed_protos_are_what_grpcio_tools_generates(tmp_path):
    pytest.importorskip("grpc_tools")
    from p2phd_infer.serve.protos import generate
    made = generate.generate(tmp_path)
    assert sorted(p.name for p in made) == ["grpc_service_pb2.py",
                                            "inference_service_pb2_grpc.py",
                                            "model_config_pb2.py"]
    for p in made:
        assert p.read_bytes() == (generate.HERE / p.name).read_bytes(), \
            f"{p.name} is stale: python -m p2phd_infer.serve.protos.generate"


def test_perf_inputs_writes_the_frames_as_perf_analyzer_reads_them(work, tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "perf_inputs", Path(__file__).parents[1] / "benchmarks" / "perf_inputs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "data.json"
    res = CliRunner().invoke(mod.main, [str(work / "labels"), "--instances", str(work / "insts"),
                                        "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert len(doc["data"]) == 2
    for i, entry in enumerate(doc["data"]):
        label, inst, _ = frame(work, i)
        for name, want in (("label", label), ("inst", inst)):
            assert entry[name]["shape"] == [1, H, W]
            got = np.frombuffer(base64.b64decode(entry[name]["content"]["b64"]), "<i4")
            assert np.array_equal(got.reshape(H, W), want)
    (tmp_path / "mixed").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "mixed" / "a.png")
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(tmp_path / "mixed" / "b.png")
    res = CliRunner().invoke(mod.main, [str(tmp_path / "mixed"), "--out", str(out)])
    assert res.exit_code != 0 and "perf_analyzer sends one shape per input" in res.output


def test_repository_and_api_key_over_grpc(work, tmp_path):
    """Two models in a repository, explicit model control, an API key, all over gRPC: index,
    load, unload; the loaded model answers with the pixels run wrote for its weights; every call
    but the health probes needs the key."""
    import shutil
    for name in ("a", "b"):
        (tmp_path / "models" / name / "1").mkdir(parents=True)
        shutil.copy(work / "m.pt", tmp_path / "models" / name / "1" / "model.pt")
    key = "k" * 24
    auth = {"authorization": f"Bearer {key}"}
    log = tmp_path / "serve.log"
    with cli_server(["serve", "--model-repository", tmp_path / "models", "--model-control-mode",
                     "explicit", "--load-model", "a", "--device", "cpu", "--mode", "plain",
                     "--max-queue-delay-us", 1_000_000, "--log-level", "info", "--grpc-port", 0,
                     "--api-key", key], log):
        c = tg.InferenceServerClient(re.search(r"gRPC on (\S+)", log.read_text()).group(1))
        label, inst, ran = frame(work, 0)
        assert c.is_server_live() and c.is_server_ready()          # the probes stay open
        e = fault(lambda: c.infer("a", grpc_inputs(label, inst)))
        assert e.status() == "StatusCode.UNAUTHENTICATED" and "needs an API key" in e.message()
        e = fault(lambda: c.get_model_config("a", headers={"authorization": "Bearer no"}))
        assert e.status() == "StatusCode.UNAUTHENTICATED" and "not valid" in e.message()

        def index():
            return {m.name: m.state for m in c.get_model_repository_index(headers=auth).models}
        assert index() == {"a": "READY", "b": "UNAVAILABLE"}
        assert not c.is_model_ready("b", headers=auth)
        c.load_model("b", headers=auth)
        assert index() == {"a": "READY", "b": "READY"} and c.is_model_ready("b", headers=auth)
        res = c.infer("b", grpc_inputs(label, inst), headers=auth)
        assert np.array_equal(res.as_numpy("image")[0], ran)
        # A client that gives up (its deadline passes while the frame waits out the 1 s batching
        # window): the call is cancelled, its frame dropped before the engine, and counted.
        before = c.get_inference_statistics("b", headers=auth).model_stats[0]
        e = fault(lambda: c.infer("b", grpc_inputs(label, inst), headers=auth,
                                  client_timeout=0.2))
        assert e.status() == "StatusCode.DEADLINE_EXCEEDED"
        for _ in range(50):
            after = c.get_inference_statistics("b", headers=auth).model_stats[0]
            if after.inference_stats.fail.count > before.inference_stats.fail.count:
                break
            time.sleep(0.05)
        assert after.inference_stats.fail.count == before.inference_stats.fail.count + 1
        assert after.execution_count == before.execution_count      # never reached the engine
        c.unload_model("a", headers=auth)
        assert index()["a"] == "UNAVAILABLE"
        e = fault(lambda: c.infer("a", grpc_inputs(label, inst), headers=auth))
        assert e.status() == "StatusCode.UNAVAILABLE" and "not loaded" in e.message()
        e = fault(lambda: c.load_model("nope", headers=auth))
        assert e.status() == "StatusCode.NOT_FOUND"
        e = fault(lambda: c.load_model("b", config='{"max_batch_size": 2}', headers=auth))
        assert e.status() == "StatusCode.INVALID_ARGUMENT" and "config" in e.message()
    text = log.read_text()
    assert "cancelled" in text and "Traceback" not in text, text
