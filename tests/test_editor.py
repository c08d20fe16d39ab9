"""The editor without a browser: per-instance style choices (styles.py, the API), the editor's
endpoints in process (Starlette's TestClient) and `p2phd-infer edit`'s command line. The page
itself is driven in tests/test_editor_browser.py."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from p2phd_infer.api import Pix2PixHD
from p2phd_infer.checkpoint import Checkpoint
from p2phd_infer.cli import main
from p2phd_infer.config import ModelConfig
from p2phd_infer.engines import EngineInfo, TorchEngine, describe_engine
from p2phd_infer.errors import OptionError
from p2phd_infer.image_io import read_id_png
from p2phd_infer.labels import CITYSCAPES_NAMES
from p2phd_infer.styles import StyleControl, instance_style, split_instance_style

pytest.importorskip("starlette")

FEAT = ModelConfig(label_nc=35, feat_num=3, ngf=4, n_downsample_global=1, n_blocks_global=1,
                   n_blocks_local=1)
H, W = 64, 96


def dictionary() -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {7: torch.randn(3, 3, generator=g) * 2, 23: torch.randn(2, 3, generator=g) * 2,
            26: torch.randn(4, 3, generator=g) * 2}


@pytest.fixture(scope="module")
def engine():
    from p2phd_infer.networks import build_generator
    torch.manual_seed(3)
    net = build_generator(FEAT)
    for p in net.parameters():
        p.data.normal_(0, 0.2)
    return TorchEngine(Checkpoint(FEAT, net.state_dict(), features=dictionary(),
                                  label_names=CITYSCAPES_NAMES), "cpu")


def street():
    """Sky over road, three cars (26001..26003)."""
    label = np.full((H, W), 7, np.int32)
    label[:16] = 23
    inst = label.copy()
    for n, (y, x) in enumerate([(30, 6), (34, 40), (28, 70)]):
        label[y:y + 14, x:x + 20] = 26
        inst[y:y + 14, x:x + 20] = 26001 + n
    return label, inst


def info() -> EngineInfo:
    return EngineInfo(FEAT, dictionary(), CITYSCAPES_NAMES)


# ---------------------------------------------------------------- StyleControl


def test_style_text_round_trip_and_hostile_entries():
    rest, inst, copies = split_instance_style(" car=1, #26002=#26001 ,#26001=3,*=0")
    assert rest == "car=1,*=0" and inst == {26001: 3} and copies == {26002: 26001}
    assert instance_style(inst, copies) == "#26001=3,#26002=#26001"
    assert split_instance_style(instance_style({5: 1, 26003: 0}, {26001: 5}))[1:] == \
        ({5: 1, 26003: 0}, {26001: 5})
    for bad in ("#car=1", "#26001", "#26001=x", "#26001=#", "#-1=2", "#26001=1,#26001=2",
                "#99999999999=1"):
        with pytest.raises(OptionError):
            split_instance_style(bad)
    with pytest.raises(OptionError, match="out of range for label 'car'"):
        StyleControl.from_options(info(), "#26001=4")               # car has 4 clusters: 0..3
    with pytest.raises(OptionError, match=r"'building' \(11\) has no feature clusters"):
        StyleControl.from_options(info(), None, instances={11001: 0})   # building: none
    with pytest.raises(OptionError, match="cycle"):
        StyleControl.from_options(info(), "#26001=#26002,#26002=#26003,#26003=#26001")
    with pytest.raises(OptionError, match="both"):
        StyleControl.from_options(info(), "#26001=1", copies={26001: 26002})
    with pytest.raises(OptionError, match="no instance features"):
        StyleControl.from_options(EngineInfo(ModelConfig(netG="global", ngf=4)), "#26001=0")


def test_instance_choice_and_copy_in_the_feature_map():
    label, inst = (torch.from_numpy(a)[None, None] for a in street())
    cars = {i: inst == i for i in (26001, 26002, 26003)}
    centres = dictionary()[26]
    base = StyleControl.from_options(info(), "road=2", seed=5)
    f0 = base.feature_map(label, inst)
    for k in range(4):
        sc = base.with_instances({26002: k})
        f = sc.feature_map(label, inst)
        m = cars[26002][0, 0]
        assert torch.equal(f[0, :, m], centres[k][:, None].expand(-1, int(m.sum())))
        assert torch.equal(f[:, :, ~m], f0[:, :, ~m])                # nothing else moved
    # A copy takes the source's feature, whatever decides it: its seeded hash ...
    f = base.with_instances(copies={26003: 26001}).feature_map(label, inst)
    src = f0[0, :, cars[26001][0, 0]][:, 0]
    assert torch.equal(f[0, :, cars[26003][0, 0]], src[:, None].expand(-1, 14 * 20))
    # ... or its own choice, through a chain; a label style stays under instance choices.
    sc = StyleControl.from_options(info(), "car=0,#26001=3,#26002=#26001", seed=5,
                                   copies={26003: 26002})
    f = sc.feature_map(label, inst)
    for i in cars:
        assert torch.equal(f[0, :, cars[i][0, 0]][:, 0], centres[3])
    # The style's entries and the options merge (options win).
    sc = StyleControl.from_options(info(), "#26001=3", instances={26001: 1})
    assert sc.instances == {26001: 1}


# ---------------------------------------------------------------- the API


@pytest.fixture(scope="module")
def demo():
    """The bundled demo model (trained: instance looks are local, unlike random weights')."""
    return Pix2PixHD(None, device="cpu", seed=1, mode="plain")     # PyTorch: no conversion


def test_api_instance_styles_change_that_instance_only(demo, engine):
    from p2phd_infer.serve.editor import demo_samples
    s = demo_samples()[0]
    label, inst = read_id_png(s.label), read_id_png(s.inst)
    a = demo(label, inst, instance_styles={26001: 0}).astype(int)
    b = demo(label, inst, instance_styles={26001: 5}).astype(int)
    diff = np.abs(a - b).mean(-1)
    inside = diff[inst == 26001].mean()
    assert inside > 40, inside
    others = [i for i in np.unique(inst) if i != 26001]
    for i in others:         # a global generator: a little leaks, most into small neighbours
        assert diff[inst == i].mean() < inside / 4, (i, diff[inst == i].mean(), inside)
    assert diff[inst != 26001].mean() < inside / 10
    # The constructor's choices are the default ones; a call's own replace them.
    assert np.array_equal(b, Pix2PixHD(demo.engine, seed=1,
                                       instance_styles={26001: 5})(label, inst))
    # Copying 26002's look onto 26001 is the same as choosing 26002's cluster for it.
    label, inst = street()
    p2p = Pix2PixHD(engine, seed=1)
    c = p2p(label, inst, instance_styles={26002: 3}, copy_styles={26001: 26002})
    d = p2p(label, inst, instance_styles={26002: 3, 26001: 3})
    assert np.array_equal(c, d) and not np.array_equal(c, p2p(label, inst))
    with pytest.raises(OptionError, match="out of range"):
        p2p(label, inst, instance_styles={26002: 4})


# ---------------------------------------------------------------- endpoints


def raw(*maps) -> bytes:
    return b"".join(np.ascontiguousarray(m, dtype="<i4").tobytes() for m in maps)


def page_token(client) -> str:
    """The token the editor page carries (its <meta name="p2phd-token">)."""
    import re
    r = client.get("/")
    assert r.headers["cache-control"] == "no-store"
    return re.search(r'<meta name="p2phd-token" content="([^"]+)">', r.text).group(1)


@pytest.fixture(scope="module")
def client(engine):
    """The editor's app over `engine`, its POSTs carrying the page's token."""
    from starlette.testclient import TestClient

    from p2phd_infer.serve.app import create_app
    from p2phd_infer.serve.editor import TOKEN_HEADER, demo_samples
    with TestClient(create_app(engine, max_batch_size=4, editor=True,
                               samples=demo_samples())) as c:
        c.headers[TOKEN_HEADER] = page_token(c)
        yield c


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_state_changing_calls_need_the_pages_token(client):
    from p2phd_infer.serve.editor import TOKEN_HEADER
    label, inst = street()
    token = client.headers[TOKEN_HEADER]
    assert len(token) >= 32 and token != "{{p2phd-token}}"
    assert page_token(client) == token                  # one per server start
    calls = [(f"/editor/render?width={W}&height={H}", {"content": raw(label, inst)}),
             (f"/editor/swatches?width={W}&height={H}&id=26001", {"content": raw(label, inst)}),
             (f"/editor/png?width={W}&height={H}&map=label", {"content": raw(label)}),
             ("/editor/decode", {"files": {"label": ("a.png", b"x")}})]
    for url, body in calls:
        for bad in (None, "", token[:-1] + ("A" if token[-1] != "A" else "B"), token + "x"):
            req = client.build_request("POST", url, **body)
            if bad is None:
                del req.headers[TOKEN_HEADER]
            else:
                req.headers[TOKEN_HEADER] = bad
            r = client.send(req)
            assert r.status_code == 403, (url, bad, r.text)
            msg = r.json()["error"]
            assert "X-P2PHD-Token" in msg and "\n" not in msg, msg
    # The same calls with the token are served (decode's junk PNG is the client's 400).
    assert [client.post(url, **body).status_code for url, body in calls] == [200, 200, 200, 400]
    # Reading needs no token: the page, its modules, info and samples.
    req = client.build_request("GET", "/editor/info")
    del req.headers[TOKEN_HEADER]
    assert client.send(req).status_code == 200


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_page_info_and_samples(client, engine):
    r = client.get("/")
    assert r.status_code == 200 and "editor.js" in r.text
    import re
    modules = re.findall(r'from "\./([a-z_]+\.js)"', client.get("/static/editor.js").text)
    assert len(set(modules)) >= 5                           # the page's ES modules, all served
    for m in set(modules):
        r = client.get(f"/static/{m}")
        assert r.status_code == 200 and "javascript" in r.headers["content-type"], m
    info = client.get("/editor/info").json()
    car = info["classes"][26]
    assert car == {"id": 26, "name": "car", "colour": [0, 0, 142], "clusters": 4, "thing": True}
    assert info["classes"][7]["thing"] is False and info["classes"][23]["clusters"] == 2
    # Thing classes are Cityscapes' person .. bicycle, each with room for 1000 object ids.
    assert [c["id"] for c in info["classes"] if c["thing"]] == list(range(24, 34))
    assert info["instances_per_class"] == 1000
    # Which engine renders, from the engine's own description; the one model, named.
    assert info["engine_label"] == describe_engine(engine) == "engine: PyTorch cpu fp32 plain"
    assert (info["model"], info["version"]) == ("p2phd", "1")
    assert info["samples"][0] == "street_01"
    r = client.get("/editor/samples/street_01")
    w, h = int(r.headers["x-width"]), int(r.headers["x-height"])
    maps = np.frombuffer(r.content, "<i4").reshape(2, h, w)
    from p2phd_infer.serve.editor import demo_samples
    s = demo_samples()[0]
    assert np.array_equal(maps[0], read_id_png(s.label))
    assert np.array_equal(maps[1], read_id_png(s.inst))
    r = client.get("/editor/samples/nope")
    assert r.status_code == 400 and "no such sample" in r.json()["error"]


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_render_is_the_api_with_the_same_choices(client, engine):
    label, inst = street()
    r = client.post("/editor/render", content=raw(label, inst),
                    params={"width": W, "height": H, "seed": 4,
                            "style": "#26002=3,#26003=#26001"})     # '#' travels as %23
    assert r.status_code == 200, r.text
    got = np.asarray(Image.open(io.BytesIO(r.content)))
    want = Pix2PixHD(engine, seed=4)(label, inst, instance_styles={26002: 3},
                                     copy_styles={26003: 26001})
    assert np.array_equal(got, want)
    # One-line errors the page shows.
    for url, body, text in [
        (f"/editor/render?width={W}&height={H}", raw(label), "bytes"),
        (f"/editor/render?width={W}", raw(label, inst), "width and height"),
        (f"/editor/render?width={W}&height={H}&style=%2326002=9", raw(label, inst),
         "out of range"),
        (f"/editor/render?width={W}&height={H}", raw(np.full_like(label, 40), inst),
         "label id 40 out of range"),
        ("/editor/render?width=6&height=4", raw(label[:4, :6], inst[:4, :6]), "minimum"),
    ]:
        r = client.post(url, content=body)
        assert r.status_code == 400 and text in r.json()["error"], (url, r.text)
        assert "\n" not in r.json()["error"]


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_swatches_are_the_instance_rendered_with_each_cluster(client, engine):
    label, inst = street()
    r = client.post(f"/editor/swatches?width={W}&height={H}&id=26002&seed=2&style=%2326001=1",
                    content=raw(label, inst))
    assert r.status_code == 200, r.text
    k = int(r.headers["x-clusters"])
    x, y, w, h = map(int, r.headers["x-box"].split(","))
    strip = np.asarray(Image.open(io.BytesIO(r.content)))
    assert k == 4 and strip.shape == (h, w * k, 3) and w % 16 == 0 and h % 16 == 0
    crop_l, crop_i = label[y:y + h, x:x + w], inst[y:y + h, x:x + w]
    assert (crop_i == 26002).sum() == (inst == 26002).sum()      # the whole car is in view
    p2p = Pix2PixHD(engine, seed=2)
    looks = []
    for j in range(k):
        want = p2p(crop_l, crop_i, instance_styles={26001: 1, 26002: j})
        got = strip[:, j * w:(j + 1) * w]
        assert np.abs(got.astype(int) - want).max() <= 1, j
        looks.append(got[crop_i == 26002].mean(0))
    assert min(np.abs(a - b).sum() for i, a in enumerate(looks) for b in looks[i + 1:]) > 1
    # Stuff (id < 1000, its label from the label map): the road's 3 clusters.
    r = client.post(f"/editor/swatches?width={W}&height={H}&id=7", content=raw(label, inst))
    strip = np.asarray(Image.open(io.BytesIO(r.content)))
    x, y, w, h = map(int, r.headers["x-box"].split(","))
    assert r.headers["x-clusters"] == "3" and strip.shape == (h, 3 * w, 3)
    for j in range(3):
        want = Pix2PixHD(engine)(label[y:y + h, x:x + w], inst[y:y + h, x:x + w],
                                 instance_styles={7: j})
        assert np.abs(strip[:, j * w:(j + 1) * w].astype(int) - want).max() <= 1, j
    r = client.post(f"/editor/swatches?width={W}&height={H}&id=11000", content=raw(label, inst))
    assert r.status_code == 400 and "not in the instance map" in r.json()["error"]


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_id_pngs_keep_ids_exact_and_decode_reads_them_back(client):
    label, inst = street()
    inst[0, :3] = [33001, 65535, 0]
    got = {}
    for which, m in (("label", label), ("inst", inst)):
        r = client.post(f"/editor/png?width={W}&height={H}&map={which}", content=raw(m))
        assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
        im = Image.open(io.BytesIO(r.content))
        assert im.mode == ("L" if which == "label" else "I;16"), im.mode
        got[which] = r.content
        assert np.array_equal(read_id_png(r.content), m)
    r = client.post("/editor/decode", files={"label": ("a.png", got["label"]),
                                             "inst": ("b.png", got["inst"])})
    maps = np.frombuffer(r.content, "<i4").reshape(2, H, W)
    assert np.array_equal(maps[0], label) and np.array_equal(maps[1], inst)
    r = client.post("/editor/decode", files={"label": ("a.png", got["label"])})
    maps = np.frombuffer(r.content, "<i4").reshape(2, H, W)
    # No instance map: derived as --instances auto derives it (thing regions become objects).
    from p2phd_infer.sim import instances_from_labels
    assert np.array_equal(maps[1], instances_from_labels(label))
    assert (maps[1] >= 1000).any() or not np.isin(label, list(range(24, 34))).any()
    r = client.post("/editor/decode", files={"label": ("a.png", b"\xff\xd8\xff junk")})
    assert r.status_code == 400 and r.json()["error"].startswith("a.png: a JPEG file")
    r = client.post(f"/editor/png?width=2&height=1&map=inst", content=raw(np.array([[1, 70000]])))
    assert r.status_code == 400 and "16-bit" in r.json()["error"]


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_the_editor_renders_through_the_model_it_names(engine):
    """Two models served at once (a model repository): info, render and swatches go to the one
    the call names; the repository index lists both (what the page's model picker shows)."""
    from starlette.testclient import TestClient

    from p2phd_infer.serve.app import create_app
    from p2phd_infer.serve.dataplane import DataPlane, ModelSettings, ServedModel
    from p2phd_infer.serve.editor import TOKEN_HEADER
    other_cfg = ModelConfig(label_nc=12, netG="global", ngf=4, n_downsample_global=1,
                            n_blocks_global=1)
    from helpers import random_checkpoint
    other = TorchEngine(random_checkpoint(other_cfg, seed=5, std=0.2), "cpu")
    settings = ModelSettings(max_batch_size=4)
    dp = DataPlane([ServedModel("street", "1", engine, settings),
                    ServedModel("tiny", "2", other, settings)])
    with TestClient(create_app(dataplane=dp, editor=True)) as c:
        c.headers[TOKEN_HEADER] = page_token(c)
        index = c.post("/v2/repository/index", json={"ready": True}).json()
        assert [(m["name"], m["version"], m["state"]) for m in index] == \
            [("street", "1", "READY"), ("tiny", "2", "READY")]
        first = c.get("/editor/info").json()
        assert (first["model"], first["label_nc"]) == ("street", 35)    # no name: the first
        tiny = c.get("/editor/info", params={"model": "tiny", "version": "2"}).json()
        assert (tiny["model"], tiny["version"], tiny["label_nc"]) == ("tiny", "2", 12)
        assert len(tiny["classes"]) == 12 and not any(k["clusters"] for k in tiny["classes"])
        label, inst = street()
        label = label % 12
        q = {"width": W, "height": H}
        got = {}
        for name in ("street", "tiny"):
            r = c.post("/editor/render", params={**q, "model": name}, content=raw(label, inst))
            assert r.status_code == 200, r.text
            got[name] = np.asarray(Image.open(io.BytesIO(r.content)))
        assert np.array_equal(got["tiny"], Pix2PixHD(other)(label, inst))
        assert np.array_equal(got["street"], Pix2PixHD(engine)(label, inst))
        # The model's own clusters: tiny has none for the road.
        r = c.post("/editor/swatches", params={**q, "model": "tiny", "id": 7},
                   content=raw(label, inst))
        assert r.status_code == 400 and "no feature clusters" in r.json()["error"]
        for params, status, text in [({"model": "nope"}, 404, "unknown model 'nope'"),
                                     ({"model": "tiny", "version": "1"}, 404, "no version")]:
            r = c.get("/editor/info", params=params)
            assert r.status_code == status and text in r.json()["error"], r.text
            r = c.post("/editor/render", params={**q, **params}, content=raw(label, inst))
            assert r.status_code == status and text in r.json()["error"], r.text


# ---------------------------------------------------------------- the command


def test_edit_command_line(tmp_path):
    r = CliRunner().invoke(main, ["edit", "--help"])
    assert r.exit_code == 0 and "--instances" in r.output and "--engine" in r.output
    (tmp_path / "bad.png").write_bytes(b"not a png")
    r = CliRunner().invoke(main, ["edit", str(tmp_path / "bad.png")])
    assert r.exit_code == 2 and "bad.png: not a PNG" in r.output
    r = CliRunner().invoke(main, ["edit", "--instances", str(tmp_path / "bad.png")])
    assert r.exit_code == 2 and "needs a LABEL" in r.output
    # serve --editor: the page beside the API; a page cannot send an API key, so not with one.
    r = CliRunner().invoke(main, ["serve", "--help"])
    assert r.exit_code == 0 and "--editor" in r.output
    r = CliRunner().invoke(main, ["serve", "--editor", "--api-key", "k" * 20])
    assert r.exit_code == 2 and "--editor: a browser page cannot send the API key" in r.output
