"""The editor end to end in headless Chromium (Debian's `chromium`, driven by Playwright for
Python): the real `p2phd-infer edit` server as a subprocess on a free loopback port, the bundled
demo model on the CPU.

Needs `pip install playwright` and `apt-get install chromium` (.ci/run installs both; Playwright's
own browser download is not used). Set P2PHD_CHROMIUM to another Chromium binary,
P2PHD_EDITOR_SCREENSHOT=docs/editor.png to write the README's screenshot, and
P2PHD_EDITOR_SHOTS=DIR for screenshots of the layout checks (at 1280x900)."""
from __future__ import annotations

import base64
import io
import os
import shutil
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from helpers import cli_server, random_checkpoint

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="Playwright for Python is not installed "
                                      "(pip install playwright)")


def chromium() -> str | None:
    for c in (os.environ.get("P2PHD_CHROMIUM"), "/usr/lib/chromium/chromium",
              "/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if c and os.access(c, os.X_OK):
            return c
    return None


CHROMIUM = chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary (apt-get install "
                                                         "chromium, or set P2PHD_CHROMIUM)")
START_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("editor") / "edit.log"
    with cli_server(["edit", "--device", "cpu", "--mode", "plain"], log, threads=2,
                    timeout_s=START_TIMEOUT_S) as (proc, url):
        assert f"open {url}/" in log.read_text()          # it prints the URL it serves
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@contextmanager
def opened(browser, url: str):
    """A page of the editor at `url`, once it has rendered; no script error while it is open."""
    # The size the editor is laid out for: label map and photo side by side.
    pg = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    try:
        pg.goto(url + "/")
        pg.wait_for_function("window.editor && editor.state.renders > 0 && editor.settled()",
                             timeout=60_000)
        yield pg
        assert not errors, errors
    finally:
        pg.close()


@pytest.fixture(scope="module")
def page(server, browser):
    with opened(browser, server) as pg:
        yield pg


def settle(pg, timeout_ms: int = 60_000) -> None:
    pg.wait_for_function("editor.settled()", timeout=timeout_ms)


def image(pg) -> np.ndarray:
    data = base64.b64decode(pg.evaluate("editor.imageBase64()"))
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def maps(pg) -> tuple[np.ndarray, np.ndarray]:
    W, H = pg.evaluate("[editor.state.W, editor.state.H]")
    label, inst = (np.frombuffer(base64.b64decode(b), "<i4").reshape(H, W).astype(np.int32)
                   for b in pg.evaluate("editor.mapsBase64()"))
    return label, inst


def at(pg, x: int, y: int) -> tuple[float, float]:
    """Page coordinates of map pixel (x, y)."""
    box = pg.locator("#label-canvas").bounding_box()
    W, H = pg.evaluate("[editor.state.W, editor.state.H]")
    return box["x"] + (x + 0.5) * box["width"] / W, box["y"] + (y + 0.5) * box["height"] / H


def drag(pg, a: tuple[int, int], b: tuple[int, int]) -> None:
    pg.mouse.move(*at(pg, *a))
    pg.mouse.down()
    pg.mouse.move(*at(pg, *b), steps=6)
    pg.mouse.up()


def changed(before: np.ndarray, after: np.ndarray, where: np.ndarray) -> float:
    return float(np.abs(after - before).mean(-1)[where].mean())


def box(pg, selector: str) -> dict:
    return pg.locator(selector).bounding_box()


def shot(pg, name: str) -> None:
    if os.environ.get("P2PHD_EDITOR_SHOTS"):
        pg.screenshot(path=os.path.join(os.environ["P2PHD_EDITOR_SHOTS"], name))


def test_layout_and_page_controls(page):
    pg = page
    pg.select_option("#sample", "street_02")
    pg.click("#load-sample")                        # no edits yet: loads without asking
    pg.wait_for_function("editor.state.name === 'street_02' && editor.settled()")
    shot(pg, "editor-1280.png")
    # Label map and photo side by side at 1280 px, each about half the room, same top.
    lab, img = box(pg, "#label-canvas"), box(pg, "#result")
    assert abs(lab["y"] - img["y"]) < 2 and lab["x"] + lab["width"] < img["x"], (lab, img)
    assert lab["width"] > 400 and abs(lab["width"] - img["width"]) < 2, (lab, img)
    assert img["x"] + img["width"] <= 1280 and lab["y"] + lab["height"] < 900
    # The header is one line: every control on the same row, none past the page's edge.
    head = box(pg, "header")
    assert head["height"] < 48, head
    for el in pg.locator("header > *:visible").all():
        b = el.bounding_box()
        assert b["y"] >= head["y"] and b["y"] + b["height"] <= head["y"] + head["height"], b
        assert b["x"] + b["width"] <= 1280, b
    # Which engine renders, as the server's engine describes itself; one model, no choice.
    info = pg.evaluate("editor.state.info")
    assert pg.inner_text("#engine") == info["engine_label"]
    assert info["engine_label"].startswith("engine: PyTorch cpu fp32 plain")    # --mode plain
    assert pg.evaluate("[...document.querySelectorAll('#model-pick option')].map(o => o.text)") \
        == ["p2phd"] and pg.is_disabled("#model-pick")
    assert pg.evaluate("editor.state.modelsFrom") == "index"   # same-origin POST: allowed
    # A POST without the page's token is refused, in one line.
    status, text = pg.evaluate("""async () => {
        const r = await fetch('/editor/png?width=1&height=1&map=label',
                              {method: 'POST', body: new Uint8Array(4)});
        return [r.status, await r.text()]; }""")
    assert status == 403 and "X-P2PHD-Token" in text and "\n" not in text, (status, text)

    # Object classes are marked; with Add object, a stuff class is refused at the press, before
    # any drag, and the error does not move the canvas.
    assert pg.inner_text("#classes li[data-id='26'] .thing") == "\u25c6"
    assert pg.inner_text("#classes li[data-id='7'] .thing") == ""
    pg.click("#classes li[data-id='7']")
    pg.click("#tools button[data-tool='add']")
    assert "dim" in pg.get_attribute("#classes li[data-id='7']", "class")
    label0, inst0 = maps(pg)
    placed = {sel: box(pg, sel) for sel in ("#label-canvas", "#result", "#style-panel",
                                            "#classes", "#tools")}
    pg.mouse.move(*at(pg, 100, 200))
    pg.mouse.down()
    pg.wait_for_selector("#error:not([hidden])")       # at the press, not after the drag
    assert "road (7) is not an object class" in pg.inner_text("#error")
    pg.mouse.move(*at(pg, 160, 230), steps=3)
    pg.mouse.up()
    assert pg.evaluate("editor.state.history.length") == 0
    assert all(np.array_equal(a, b) for a, b in zip(maps(pg), (label0, inst0)))
    shot(pg, "editor-1280-error.png")
    assert {sel: box(pg, sel) for sel in placed} == placed       # nothing moved
    # ... and the next successful action clears it: a stroke, rendered.
    pg.click("#classes li[data-id='21']")
    pg.click("#tools button[data-tool='brush']")
    drag(pg, (20, 240), (40, 240))
    settle(pg)
    assert pg.is_hidden("#error") and box(pg, "#label-canvas") == lab

    # The brush's outline follows the pointer at the brush's radius.
    pg.mouse.move(*at(pg, 250, 120))
    assert pg.evaluate("editor.state.cursor") == {"x": 250, "y": 120, "r": 10}
    ring = pg.evaluate("""Array.from(document.getElementById('cursor').getContext('2d')
                          .getImageData(250 + 10, 120, 1, 1).data)""")
    assert ring[3] > 0, ring                           # drawn on the circle, 10 px right
    # The photo over the label map, and off again.
    pg.check("#overlay-photo")
    assert pg.is_visible("#label-photo") and box(pg, "#label-photo") == lab
    assert pg.get_attribute("#label-photo", "src") == pg.get_attribute("#result", "src")
    shot(pg, "editor-1280-overlay.png")
    pg.keyboard.press("v")
    assert pg.is_hidden("#label-photo")

    # "copy style from" offers the instances of the picked one's class only.
    pg.click("#tools button[data-tool='pick']")
    label, inst = maps(pg)
    ys, xs = np.nonzero(inst == 24000)
    pg.mouse.click(*at(pg, int(xs[len(xs) // 2]), int(ys[len(ys) // 2])))
    settle(pg)
    assert pg.evaluate("editor.state.selected") == 24000
    assert pg.evaluate("[...document.querySelectorAll('#copy-from option')].map(o => o.value)") \
        == ["24001"]
    # A larger preview of the swatch under the pointer.
    pg.hover(".swatch[data-k='1']")
    sw, pv = box(pg, ".swatch[data-k='1'] canvas"), box(pg, "#preview")
    assert pv["width"] >= 2.5 * sw["width"] - 4, (sw, pv)
    assert "cluster 1" in pg.inner_text("#preview-caption")
    lit = pg.evaluate("""Array.from(document.getElementById('preview').getContext('2d')
                         .getImageData(0, 0, 256, 128).data).filter((v, i) => i % 4 == 3 && v)
                         .length""")
    assert lit > 5000, lit
    ys, xs = np.nonzero(inst == 7)
    pg.mouse.click(*at(pg, int(xs[0]), int(ys[0])))
    settle(pg)
    assert pg.evaluate("document.querySelectorAll('#copy-from option').length") == 0
    assert pg.is_disabled("#copy")

    # Load asks before discarding the edits: declined, nothing changes; accepted, it loads.
    edited = maps(pg)
    asked = []
    pg.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
    pg.click("#load-sample")
    pg.wait_for_timeout(200)
    assert asked and "Discard your edits to street_02" in asked[0]
    assert all(np.array_equal(a, b) for a, b in zip(maps(pg), edited))
    pg.once("dialog", lambda d: d.accept())
    pg.click("#load-sample")
    pg.wait_for_function("editor.state.history.length === 0 && editor.settled()")
    assert all(np.array_equal(a, b) for a, b in zip(maps(pg), (label0, inst0)))


def test_edit_in_the_browser(page, tmp_path):
    pg = page
    # Load a sample (the page has no edits: it does not ask).
    pg.select_option("#sample", "street_02")
    pg.click("#load-sample")
    pg.wait_for_function("editor.state.name === 'street_02' && editor.settled()")
    label0, inst0 = maps(pg)
    assert sorted(np.unique(inst0)) == [7, 8, 11, 23, 24000, 24001, 26000]
    img0 = image(pg)
    far = np.zeros(label0.shape, bool)
    far[:50, :110] = True                   # sky and building, top left: away from every edit

    # Paint a stroke of vegetation across the road.
    pg.click("#classes li[data-id='21']")
    pg.click("#tools button[data-tool='brush']")
    drag(pg, (200, 200), (260, 205))
    settle(pg)
    label1, inst1 = maps(pg)
    stroke = (label1 == 21) & (label0 != 21)
    assert stroke.sum() > 800 and (inst1[stroke] == 21).all() and not stroke[far].any()
    img1 = image(pg)
    assert changed(img0, img1, stroke) > 15
    assert changed(img0, img1, far) < 4

    # Add a car: a new instance id, the next free k of class 26.
    pg.click("#classes li[data-id='26']")
    pg.click("#tools button[data-tool='add']")
    drag(pg, (330, 150), (400, 190))
    settle(pg)
    label2, inst2 = maps(pg)
    car = inst2 == 26001
    assert car.sum() > 1500 and (label2[car] == 26).all()
    assert set(np.unique(inst2)) == set(np.unique(inst1)) | {26001}
    img2 = image(pg)
    assert changed(img1, img2, car) > 15 and changed(img1, img2, far) < 4
    assert "instance 26001: car" in pg.inner_text("#sel-title")    # the new car is selected

    # Its look: the class's clusters as swatches; choose one the seeded look is not.
    assert pg.locator(".swatch").count() == 10
    k = next(j for j in (3, 7, 1) if changed(img2, _render(pg, {26001: j}), car) > 15)
    pg.click(f".swatch[data-k='{k}']")
    settle(pg)
    assert pg.evaluate("editor.styleText()") == f"#26001={k}"
    img3 = image(pg)
    assert changed(img2, img3, car) > 15 and changed(img2, img3, far) < 4
    assert f"now cluster {k}" in pg.inner_text("#sel-title")
    assert pg.locator(f".swatch.active[data-k='{k}']").count() == 1
    if os.environ.get("P2PHD_EDITOR_SCREENSHOT"):
        pg.mouse.move(*at(pg, 365, 175))
        pg.screenshot(path=os.environ["P2PHD_EDITOR_SCREENSHOT"])

    # Undo gives back the previous maps, choices and image; redo the choice again.
    pg.click("#undo")
    settle(pg)
    assert pg.evaluate("editor.styleText()") == ""
    assert np.abs(image(pg) - img2).max() <= 1
    pg.click("#redo")
    settle(pg)
    assert np.abs(image(pg) - img3).max() <= 1

    # Downloads: the image and both maps, the instance map 16-bit with the exact ids.
    got = {}
    for button in ("#dl-image", "#dl-label", "#dl-inst"):
        with pg.expect_download() as d:
            pg.click(button)
        path = tmp_path / d.value.suggested_filename
        d.value.save_as(path)
        got[button] = path
    assert got["#dl-inst"].name == "street_02_instance.png"
    im = Image.open(got["#dl-inst"])
    assert im.format == "PNG" and im.mode == "I;16"
    assert np.array_equal(np.asarray(im).astype(np.int32), inst2)
    im = Image.open(got["#dl-label"])
    assert im.format == "PNG" and np.array_equal(np.asarray(im).astype(np.int32), label2)
    im = Image.open(got["#dl-image"])
    assert im.format == "PNG" and np.array_equal(np.asarray(im.convert("RGB")), img3)

    # Delete the car: it becomes the road it stands on.
    pg.click("#tools button[data-tool='delete']")
    pg.mouse.click(*at(pg, 365, 180))
    settle(pg)
    label4, inst4 = maps(pg)
    assert not (inst4 == 26001).any() and (label4[car] == 7).all() and (inst4[car] == 7).all()

    # A bad map: the server's one-line 400 message is shown in the page.
    bad = io.BytesIO()
    Image.fromarray(np.full((256, 512), 200, np.uint8)).save(bad, format="PNG")
    (tmp_path / "bad.png").write_bytes(bad.getvalue())
    pg.set_input_files("#file-label", str(tmp_path / "bad.png"))
    pg.once("dialog", lambda d: d.accept())           # it has edits: discard them
    pg.click("#load-files")
    pg.wait_for_selector("#error:not([hidden])")
    assert "label id 200 out of range" in pg.inner_text("#error")


def _render(pg, choices: dict[int, int]) -> np.ndarray:
    """What the server renders for the page's maps with these choices (without changing them)."""
    data = pg.evaluate("""async (style) => {
        const S = editor.state;
        const q = new URLSearchParams({width: S.W, height: S.H, seed: 0, style});
        const token = document.querySelector('meta[name="p2phd-token"]').content;
        const r = await fetch(`/editor/render?${q}`, {method: "POST", headers: {"X-P2PHD-Token": token},
                                                      body: new Blob([S.label, S.inst])});
        const blob = await r.blob();
        return await new Promise((resolve) => {
            const fr = new FileReader();
            fr.onload = () => resolve(String(fr.result).split(",")[1]);
            fr.readAsDataURL(blob);
        });
    }""", ",".join(f"#{i}={k}" for i, k in choices.items()))
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")).astype(int)


def test_the_model_picker_renders_through_the_chosen_model(browser, tmp_path):
    """`serve --model-repository DIR --editor` with two models: the page lists them from the
    repository index and renders through the one chosen; without the index, it offers the one
    model /editor/info names."""
    from dataclasses import replace

    from p2phd_infer.api import Pix2PixHD
    from p2phd_infer.checkpoint import save_checkpoint
    from p2phd_infer.config import ModelConfig
    from p2phd_infer.labels import CITYSCAPES_NAMES
    cfg = ModelConfig(label_nc=35, netG="global", ngf=4, n_downsample_global=1,
                      n_blocks_global=1)
    files = {"street": tmp_path / "repo" / "street" / "1" / "model.pt",
             "small": tmp_path / "repo" / "small" / "3" / "model.pt"}
    names = {"street": CITYSCAPES_NAMES, "small": {i: f"class {i}" for i in range(35)}}
    for seed, (name, path) in enumerate(files.items()):
        path.parent.mkdir(parents=True)
        save_checkpoint(replace(random_checkpoint(cfg, seed=seed, std=0.2),
                                label_names=names[name]), path)
    args = ["serve", "--model-repository", tmp_path / "repo", "--editor", "--no-grpc",
            "--device", "cpu", "--mode", "plain"]
    options = "[...document.querySelectorAll('#model-pick option')].map(o => o.text)"
    with cli_server(args, tmp_path / "serve.log", timeout_s=START_TIMEOUT_S) as (proc, url), \
            opened(browser, url) as pg:
        assert f"the editor: open {url}/" in (tmp_path / "serve.log").read_text()
        # The repository index (sorted by name); the server's first model is the one shown.
        assert pg.evaluate(options) == ["small", "street"]
        assert pg.evaluate("editor.state.modelsFrom") == "index"
        assert not pg.is_disabled("#model-pick") and pg.input_value("#model-pick") == "0"
        assert pg.evaluate("[editor.state.info.model, editor.state.info.version]") == \
            ["small", "3"]
        assert pg.inner_text("#classes li[data-id='7'] .name") == "class 7"
        assert pg.inner_text("#classes li[data-id='7'] .thing") == "\u25c6"   # not Cityscapes'
        lab, inst = maps(pg)
        want = {n: Pix2PixHD(f, device="cpu", mode="plain")(lab, inst) for n, f in files.items()}
        assert np.array_equal(image(pg), want["small"])
        pg.select_option("#model-pick", label="street")
        pg.wait_for_function("editor.state.info.model === 'street' && editor.settled() && "
                             "editor.state.renders > 1")
        assert pg.inner_text("#classes li[data-id='7'] .name") == "road"
        assert pg.inner_text("#classes li[data-id='7'] .thing") == ""
        assert pg.inner_text("#classes li[data-id='26'] .thing") == "\u25c6"
        assert "street version 1" in pg.get_attribute("#engine", "title")
        assert np.array_equal(image(pg), want["street"])
        shot(pg, "editor-1280-two-models.png")
        # A server without the repository extension: the one model, nothing to choose.
        pg.route("**/v2/repository/index", lambda r: r.fulfill(
            status=404, content_type="application/json", body='{"error": "not found"}'))
        pg.reload()
        pg.wait_for_function("window.editor && editor.state.renders > 0 && editor.settled()")
        assert pg.evaluate(options) == ["small"] and pg.is_disabled("#model-pick")
        assert pg.evaluate("editor.state.modelsFrom") == "info"
