"""The editor end to end in headless Chromium (Debian's `chromium`, driven by Playwright for
Python): the real `p2phd-infer edit` server as a subprocess on a free loopback port, the bundled
demo model on the CPU.

Needs `pip install playwright` and `apt-get install chromium` (.ci/run installs both; Playwright's
own browser download is not used). Set P2PHD_CHROMIUM to another Chromium binary, and
P2PHD_EDITOR_SCREENSHOT=docs/editor.png to write the README's screenshot."""
from __future__ import annotations

import base64
import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers import cli_server

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
def page(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 760},
                                  accept_downloads=True)
            errors: list[str] = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.goto(server + "/")
            pg.wait_for_function("window.editor && editor.state.renders > 0 && editor.settled()",
                                 timeout=60_000)
            yield pg
            assert not errors, errors
        finally:
            browser.close()


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


def test_edit_in_the_browser(page, tmp_path):
    pg = page
    # Load a sample.
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
    pg.click("#load-files")
    pg.wait_for_selector("#error:not([hidden])")
    assert "label id 200 out of range" in pg.inner_text("#error")


def _render(pg, choices: dict[int, int]) -> np.ndarray:
    """What the server renders for the page's maps with these choices (without changing them)."""
    data = pg.evaluate("""async (style) => {
        const S = editor.state;
        const q = new URLSearchParams({width: S.W, height: S.H, seed: 0, style});
        const r = await fetch(`/editor/render?${q}`,
                              {method: "POST", body: new Blob([S.label, S.inst])});
        const blob = await r.blob();
        return await new Promise((resolve) => {
            const fr = new FileReader();
            fr.onload = () => resolve(String(fr.result).split(",")[1]);
            fr.readAsDataURL(blob);
        });
    }""", ",".join(f"#{i}={k}" for i, k in choices.items()))
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")).astype(int)
