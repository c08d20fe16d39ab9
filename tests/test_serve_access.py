"""Who may drive `p2phd-infer serve` (Host, Origin, API key) and what a client's mistake gets
(always a 4xx with a one-line body, never a 500 or a traceback in the log). One real server for
the module, with an API key; a few in-process checks (the editor's decode, the fault table)."""
from __future__ import annotations

import io
import json
import re
import socket
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
th = pytest.importorskip("tritonclient.http")

from p2phd_infer.cli import main  # noqa: E402
from p2phd_infer.config import ModelConfig  # noqa: E402
from p2phd_infer.errors import (AccessDenied, Cancelled, EngineFault, InputError,  # noqa: E402
                                NotFound, QueueFull, RuntimeClosed, TooLarge)
from p2phd_infer.serve.dataplane import fault_of  # noqa: E402
from helpers import cli_server, random_checkpoint, save_random_model  # noqa: E402

TINY = ModelConfig(label_nc=8, ngf=4, n_downsample_global=1, n_blocks_global=1, n_blocks_local=1)
KEY = "k-" + "0123456789abcdef" * 2
# tritonclient adds its own headers to the dict it is given: it gets a copy each time.
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("access")
    save_random_model(root / "m.pt", TINY, 1, std=0.2)
    (root / "keys").write_text(f"# the test's key\n{KEY}\n")
    log = root / f"serve-{uuid.uuid4().hex[:8]}.log"
    args = ["serve", "--engine", root / "m.pt", "--device", "cpu", "--mode", "plain",
            "--api-key-file",
            root / "keys", "--allow-origin", "https://ok.example", "--allow-host", "myname.test",
            "--log-level", "info"]
    with cli_server(args, log, timeout_s=90) as (proc, url):
        yield Http(url.removeprefix("http://")), log


class Http:
    def __init__(self, url):
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])

    def call(self, method, path, body=None, headers=None):
        req = urllib.request.Request(f"http://{self.url}{path}", data=body,
                                     headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers

    def raw(self, data: bytes) -> bytes:
        """Bytes on a socket -> the reply's bytes (one request; the server closes or we stop
        at the end of a JSON body)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(data)
            reply = b""
            while not reply.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        return reply


def one_line_error(body: bytes) -> str:
    msg = json.loads(body)["error"]
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def png(a, dtype) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a.astype(dtype)).save(buf, format="PNG")
    return buf.getvalue()


def multipart(parts: list[tuple[str, bytes | str]], boundary: str = "b0undary"):
    out = []
    for name, value in parts:
        if isinstance(value, bytes):
            head = f'Content-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n' \
                   f"Content-Type: image/png\r\n\r\n"
        else:
            head, value = f'Content-Disposition: form-data; name="{name}"\r\n\r\n', \
                value.encode()
        out.append(f"--{boundary}\r\n".encode() + head.encode() + value + b"\r\n")
    return b"".join(out) + f"--{boundary}--\r\n".encode()


def json_infer(label) -> bytes:
    return json.dumps({"inputs": [
        {"name": "label", "datatype": "INT32", "shape": [1, 1, *label.shape],
         "data": label.ravel().tolist()},
        {"name": "inst", "datatype": "INT32", "shape": [1, 1, *label.shape],
         "data": label.ravel().tolist()}]}).encode()


LABEL = np.random.default_rng(0).integers(0, 8, (32, 32)).astype(np.int32)


# ---------------------------------------------------------------------------- who may call


def test_api_key_is_required_except_for_health_probes(server):
    s, _ = server
    assert s.call("GET", "/v2/health/ready")[0] == 200            # probes stay open
    status, body, headers = s.call("GET", "/v2/models/p2phd")
    assert status == 401 and "API key" in one_line_error(body)
    assert headers["WWW-Authenticate"].startswith("Bearer")
    status, body, _ = s.call("GET", "/v2/models/p2phd", headers={"Authorization": "Bearer " +
                                                                  "x" * 32})
    assert status == 401 and "not valid" in one_line_error(body)
    client = th.InferenceServerClient(s.url)
    assert client.get_model_config("p2phd", headers=dict(AUTH))["name"] == "p2phd"
    t = th.InferInput("label", [1, 1, 32, 32], "INT32")
    t.set_data_from_numpy(LABEL[None, None])
    u = th.InferInput("inst", [1, 1, 32, 32], "INT32")
    u.set_data_from_numpy(LABEL[None, None])
    image = client.infer("p2phd", [t, u], headers=dict(AUTH)).as_numpy("image")
    assert image.shape == (1, 32, 32, 3)
    with pytest.raises(Exception, match="API key"):
        client.infer("p2phd", [t, u])


def test_cross_origin_requests_are_refused_unless_allowed(server):
    s, _ = server
    # The "simple" requests any web page can send without a preflight.
    status, body, _ = s.call("POST", "/v2/models/p2phd/infer", json_infer(LABEL),
                             {"Content-Type": "text/plain", "Origin": "http://evil.example",
                              **AUTH})
    assert status == 403 and "evil.example" in one_line_error(body)
    form = multipart([("label", png(LABEL, np.uint8))])
    status, body, _ = s.call("POST", "/v1/synthesize", form,
                             {"Content-Type": "multipart/form-data; boundary=b0undary",
                              "Origin": "http://evil.example", **AUTH})
    assert status == 403
    status, _, _ = s.call("GET", "/metrics", headers={"Sec-Fetch-Site": "cross-site", **AUTH})
    assert status == 403
    status, _, _ = s.call("GET", "/v2", headers={"Origin": "null", **AUTH})
    assert status == 403
    # The server's own origin, and an allowed one (with CORS headers and a preflight answer).
    status, _, _ = s.call("GET", "/v2", headers={"Origin": f"http://{s.url}", **AUTH})
    assert status == 200
    status, body, headers = s.call("POST", "/v2/models/p2phd/infer", json_infer(LABEL),
                                   {"Origin": "https://ok.example", **AUTH})
    assert status == 200, body
    assert headers["Access-Control-Allow-Origin"] == "https://ok.example"
    status, _, headers = s.call("OPTIONS", "/v2/models/p2phd/infer", headers={
        "Origin": "https://ok.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert status == 204 and "POST" in headers["Access-Control-Allow-Methods"]


def test_a_foreign_host_header_is_refused(server):
    s, _ = server
    for host, want in ((b"evil.example:%d" % s.port, b"403"), (b"myname.test", b"200"),
                       (b"localhost:%d" % s.port, b"200"), (b"127.0.0.1", b"200")):
        reply = s.raw(b"GET /v2 HTTP/1.1\r\nHost: " + host + b"\r\nAuthorization: Bearer " +
                      KEY.encode() + b"\r\nConnection: close\r\n\r\n")
        assert reply.split(b" ", 2)[1] == want, (host, reply)
    reply = s.raw(b"GET /v2/health/live HTTP/1.1\r\nHost: rebind.example\r\n"
                  b"Connection: close\r\n\r\n")
    assert reply.split(b" ", 2)[1] == b"403" and b"--allow-host" in reply


def test_a_non_loopback_bind_needs_a_key(tmp_path):
    res = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--port", "0"])
    assert res.exit_code == 2
    assert "--api-key" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["serve", "--api-key", "short"])
    assert res.exit_code == 2 and "16 printable characters" in res.output


# ---------------------------------------------------------------------------- client faults


def test_client_mistakes_are_4xx_with_one_line_and_no_traceback(server):
    s, log = server
    h = {"Content-Type": "application/json", **AUTH}
    cases = [
        ("POST", "/v2/models/p2phd/infer", b'{"inputs":' + b"[" * 100_000 + b"]" * 100_000 +
         b"}", h, 400, "nested too deeply"),
        ("POST", "/v2/models/p2phd/infer", json_infer(LABEL)[:-1] +
         b',"parameters":{"seed":Infinity}}', h, 400, "Infinity"),
        ("POST", "/v2/models/p2phd/infer", json_infer(LABEL)[:-1] +
         b',"parameters":{"seed":1e999}}', h, 400, "outside the range"),
        ("POST", "/v2/models/p2phd/infer", json_infer(LABEL)[:-1] +
         b',"parameters":{"seed":1.5}}', h, 400, "seed"),
        ("POST", "/v1/synthesize", b"--x\r\n", {"Content-Type": "multipart/form-data", **AUTH},
         400, "boundary"),
        ("POST", "/v1/synthesize", multipart([("label", b"1"), ("inst", b"2"), ("x", b"3")]),
         {"Content-Type": "multipart/form-data; boundary=b0undary", **AUTH}, 400,
         "Too many files"),
        ("POST", "/v1/synthesize", multipart([(f"f{i}", "v") for i in range(17)]),
         {"Content-Type": "multipart/form-data; boundary=b0undary", **AUTH}, 400,
         "Too many fields"),
        ("POST", "/v1/synthesize", b"label=abc&seed=1",
         {"Content-Type": "application/x-www-form-urlencoded", **AUTH}, 400, "'label'"),
        ("POST", "/v1/synthesize", b"garbage",
         {"Content-Type": "multipart/form-data; boundary=b0undary", **AUTH}, 400,
         "bad multipart body"),
        ("GET", "/v2/models/p2phd/infer", None, AUTH, 405, "Method Not Allowed"),
        ("GET", "/v2/nothing/here", None, AUTH, 404, "Not Found"),
        ("POST", "/v2/repository/models/p2phd/load", b"{}", h, 404, "no model repository"),
    ]
    for method, path, body, headers, want, fault in cases:
        status, reply, _ = s.call(method, path, body, headers)
        assert status == want, (path, fault, reply[:300])
        assert fault in one_line_error(reply), (fault, reply[:300])
    text = log.read_text()
    assert "Traceback" not in text and "internal error" not in text, text[-3000:]


def test_a_client_leaving_mid_body_is_cancelled_and_the_server_goes_on(server):
    s, log = server

    def cancelled():
        _, text, _ = s.call("GET", "/metrics", headers=dict(AUTH))
        m = re.search(r'p2phd_failures_total\{kind="cancelled"\} ([0-9.]+)', text.decode())
        return float(m.group(1)) if m else 0.0

    before = cancelled()
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
        sock.sendall(b"POST /v2/models/p2phd/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Authorization: Bearer " + KEY.encode() + b"\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b'{"inputs": [')
        time.sleep(0.2)
    deadline = time.monotonic() + 20
    while cancelled() < before + 1:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    status, _, _ = s.call("POST", "/v2/models/p2phd/infer", json_infer(LABEL), AUTH)
    assert status == 200
    text = log.read_text()
    assert "Traceback" not in text
    assert len([line for line in text.splitlines() if "mid-body" in line]) == 1


# ---------------------------------------------------------------------------- in process


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_editor_decode_without_a_boundary_is_400():
    from starlette.testclient import TestClient

    from p2phd_infer.engines import TorchEngine
    from p2phd_infer.serve.app import create_app
    from p2phd_infer.serve.editor import TOKEN_HEADER
    engine = TorchEngine(random_checkpoint(TINY, 1), "cpu")
    with TestClient(create_app(engine, editor=True)) as client:
        token = re.search(r'<meta name="p2phd-token" content="([^"]+)">',
                          client.get("/").text).group(1)
        r = client.post("/editor/decode", content=b"--x\r\n",
                        headers={"Content-Type": "multipart/form-data", TOKEN_HEADER: token})
        assert r.status_code == 400 and "boundary" in r.json()["error"]


def test_a_wildcard_bind_answers_to_the_address_a_connection_came_in_on():
    from p2phd_infer.serve.access import AccessPolicy
    p = AccessPolicy.for_bind("0.0.0.0", keys=[KEY])
    assert p.check_host("10.1.2.3:8000", "10.1.2.3") == "10.1.2.3"
    assert p.check_host("[::1]:8000", None) == "::1"
    for host, local in (("evil.example:8000", "10.1.2.3"), ("10.9.9.9", "10.1.2.3"), ("", None)):
        with pytest.raises(AccessDenied):
            p.check_host(host, local)
    with pytest.raises(AccessDenied, match="not valid"):
        p.check_key("Bearer " + KEY[:-1] + "x")
    p.check_key("bearer " + KEY)


def test_every_fault_has_an_http_and_a_grpc_status():
    table = [(InputError("x", "bad"), 400, "INVALID_ARGUMENT"),
             (NotFound("m", "unknown"), 404, "NOT_FOUND"),
             (TooLarge("request", "big"), 413, "RESOURCE_EXHAUSTED"),
             (QueueFull(), 503, "UNAVAILABLE"), (RuntimeClosed(), 503, "UNAVAILABLE"),
             (AccessDenied("Origin", "other site"), 403, "PERMISSION_DENIED"),
             (AccessDenied("Authorization", "no key", unauthenticated=True), 401,
              "UNAUTHENTICATED"),
             (Cancelled("request", "gone"), 499, "CANCELLED"),
             (EngineFault("f", RuntimeError("device"), 2), 500, "INTERNAL"),
             (ZeroDivisionError("bug"), 500, "INTERNAL")]
    for error, http, grpc in table:
        f = fault_of(error)
        assert (f.http, f.grpc) == (http, grpc), error
        assert "\n" not in f.message
    assert fault_of(QueueFull()).retry and not fault_of(InputError("x", "y")).retry
