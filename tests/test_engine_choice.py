"""One engine choice everywhere: run, serve, edit, the embedding API and the Ray executor open a
model.pt through engines.open_engine and say which engine they run."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

pytest.importorskip("openvino")

from p2phd_infer.api import Pix2PixHD  # noqa: E402
from p2phd_infer.cli import main  # noqa: E402
from p2phd_infer.local_run import open_run_engine  # noqa: E402
from p2phd_infer.plan import RunOptions  # noqa: E402


def served_engine(monkeypatch, command, *args):
    """The engine and app `serve`/`edit` would serve, without starting a server."""
    import p2phd_infer.cli.edit as edit_cli
    import p2phd_infer.cli.serve as serve_cli
    seen = {}

    def run_server(app, sock, *args, **kwargs):
        seen["app"] = app
        sock.close()

    monkeypatch.setattr(serve_cli, "run_server", run_server)
    monkeypatch.setattr(edit_cli, "run_server", run_server)
    import p2phd_infer.engines as engines
    real = engines.open_engine

    def spy(*a, **kw):
        seen["engine"] = real(*a, **kw)
        return seen["engine"]

    monkeypatch.setattr(engines, "open_engine", spy)
    res = CliRunner().invoke(main, [command, "--port", "0", "--device", "cpu", *args],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return seen["engine"], seen["app"]


@pytest.mark.parametrize("extra", [[], ["--mode", "plain"]])
def test_serve_edit_and_the_api_choose_runs_engine(monkeypatch, extra):
    kw = dict(mode=extra[1]) if extra else {}
    ran = open_run_engine(RunOptions(device="cpu", progress=False, **kw)).info.extra["engine"]
    assert ran.startswith("engine: OpenVINO" if not extra else "engine: PyTorch")
    api = Pix2PixHD(None, device="cpu", **kw)
    assert api.engine_info.extra["engine"] == ran
    for command in ("serve", "edit"):
        engine, app = served_engine(monkeypatch, command, *extra)
        assert engine.info.extra["engine"] == ran, command
    from starlette.testclient import TestClient
    from p2phd_infer.serve.dataplane import TRITON_NAMES
    with TestClient(app, base_url="http://127.0.0.1") as client:
        meta = client.get("/v2/models/p2phd").json()
    platform, backend = TRITON_NAMES[engine.info.backend]
    assert meta["platform"] == (platform or backend), meta
