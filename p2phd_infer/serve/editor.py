"""The editor: the paper's semantic manipulation page (static/) and the endpoints it uses, mounted
into the serve app (app.py, `create_app(editor=True)`; `p2phd-infer edit`).

    GET  /                                  the page (static/index.html, with this server's token)
    GET  /static/...                        its ES modules and style sheet
    GET  /editor/info?model=&version=       model, engine, classes (names, colours, cluster counts,
                                            thing flags), samples
    GET  /editor/samples/{name}             a sample's maps                       -> raw maps
    POST /editor/decode                     multipart label PNG [+ inst PNG]      -> raw maps
    POST /editor/render?width=&height=&style=&seed=&model=&version=     raw maps  -> image PNG
    POST /editor/swatches?width=&height=&id=&style=&seed=&model=&version=   raw maps
                                            -> PNG strip, one crop per cluster of id's label
    POST /editor/png?width=&height=&map=label|inst      raw map            -> id map PNG

Raw maps, both ways: little-endian int32, row-major; the label map then (for two maps) the
instance map, width x height each (responses say the size in X-Width / X-Height). The page keeps
the maps as Int32Arrays and sends exactly those bytes: no JSON arrays, and ids stay exact (a
browser's canvas decodes PNGs to 8 bits per channel, so the server decodes and encodes id PNGs).

Every POST carries the page's token in the X-P2PHD-Token header (403 without it): a random value
made when the routes are (once per server start) and written into the page it serves. Another
site's page cannot read it (the same-origin policy; a DNS-rebinding page is refused by the
server's Host check), so it cannot drive the editor's calls even where a request of its own would
reach the server.

Models: `model`/`version` name one the server serves (the page lists them from the repository
index, POST /v2/repository/index); without them, the server's first model.

Per-instance styles travel in `style` as '#26001=3' (cluster) and '#26002=#26001' (copy) entries
(styles.py), so every render is a frame of a Runtime of the model's RuntimePool and batches with
other requests of the same style, as /v1/synthesize's frames do.

Swatches: the instance's neighbourhood (its box, enlarged, a multiple of the stride) is rendered
once per cluster. In crop j the instance carries a fresh id of the same label with '#fresh=j', so
all K crops share one style, one Runtime, and batch together; an id change keeps the instance's
edges (they depend only on where ids differ), so each crop is the instance with cluster j.
"""
from __future__ import annotations

import asyncio
import hmac
import io
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..engines import MAX_INSTANCE_ID, Engine, describe_engine
from ..errors import AccessDenied, InputError, OptionError
from ..ids import label_ids
from ..image_io import encode_image, read_id_png, read_label_png
from ..sim import instances_from_labels
from ..labels import CITYSCAPES_LABELS, CITYSCAPES_THINGS, INSTANCES_PER_CLASS
from ..styles import instance_style, split_instance_style

STATIC = Path(__file__).resolve().parent / "static"
TOKEN_HEADER = "X-P2PHD-Token"
TOKEN_SLOT = "{{p2phd-token}}"          # where index.html takes the token
SWATCH_MIN = 64                 # smallest swatch crop side, pixels (before rounding to the stride)
# Largest: a big region (the road) is previewed through a window, so K swatches cost about one
# 512x256 frame, not K.
SWATCH_MAX = 128


@dataclass(frozen=True)
class Sample:
    """A label/instance map pair the page can load by name."""
    name: str
    label: Path
    inst: Path | None = None


def demo_samples() -> list[Sample]:
    """The bundled demo maps (assets/demo/labels, assets/demo/instances)."""
    root = Path(__file__).resolve().parent.parent / "assets" / "demo"
    out = []
    for label in sorted((root / "labels").glob("*.png")):
        inst = root / "instances" / label.name
        out.append(Sample(label.stem, label, inst if inst.is_file() else None))
    return out


def class_table(engine: Engine) -> list[dict]:
    """One entry per label id: name, colour, cluster count, whether it takes instances (a thing
    class: Cityscapes' hasInstances for a model with Cityscapes' names, every class otherwise)."""
    info = engine.info
    names = info.label_names
    features = info.features or {}
    cityscapes = names is None or all(CITYSCAPES_LABELS.get(i, ("",))[0] == n
                                      for i, n in names.items())
    out = []
    for i in range(engine.config.label_nc):
        city = CITYSCAPES_LABELS.get(i) if cityscapes else None
        name = (names or {}).get(i) or (city[0] if city else str(i))
        colour = list(city[1]) if city else _colour(i)
        thing = i in CITYSCAPES_THINGS if cityscapes else True
        k = int(features[i].shape[0]) if i in features else 0
        out.append({"id": i, "name": name, "colour": colour, "clusters": k,
                    # Object ids are label*1000+k; they must fit a 16-bit instance PNG.
                    "thing": thing and (i + 1) * INSTANCES_PER_CLASS - 1 <= MAX_INSTANCE_ID})
    return out


def _colour(i: int) -> list[int]:
    """A fixed, well-spread colour for a label without a Cityscapes colour (golden-angle hues)."""
    import colorsys
    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.55 + 0.4 * (i % 2))
    return [round(r * 255), round(g * 255), round(b * 255)]


def editor_routes(models, endpoint, read_body, samples: list[Sample], *, default: str | None,
                  max_pixels: int | None, frames_done, parse_form, label_map=None) -> list:
    """Routes for app.py: `models(name, version)` gives a served model (its `engine`, and
    `running()` its RuntimePool; NotFound for one the server does not serve), `default` the name
    used when a call names none, `endpoint(name)` wraps a handler (errors -> one-line JSON with
    its status, metrics), `read_body` reads a size-checked body and `parse_form(request, body,
    limit)` parses it as a multipart form; `frames_done(n)` counts rendered frames.
    label_map (label_map.LabelMap): label maps loaded here (samples, uploads) are in its source
    ids or colours and are mapped to the model's ids as they are decoded; the page edits and
    renders model ids."""
    by_name = {s.name: s for s in samples}
    token = secrets.token_urlsafe(24)
    page_html = (STATIC / "index.html").read_text(encoding="utf-8")
    if TOKEN_SLOT not in page_html:
        raise RuntimeError(f"{STATIC / 'index.html'} has no {TOKEN_SLOT} for the page's token")
    page_html = page_html.replace(TOKEN_SLOT, token)

    def check_token(request: Request) -> None:
        given = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode()):
            raise AccessDenied(TOKEN_HEADER, "missing or wrong: editor calls carry the token of "
                                             "the page this server served (reload the page)")

    def model_of(request: Request):
        """The served model the call names (model=, version=), refusing one the editor cannot
        drive: it edits id maps and renders through a generator graph."""
        q = request.query_params
        name = q.get("model") or default
        if name is None:
            raise OptionError("model", "the server serves no model")
        m = models(name, q.get("version") or None)
        cfg, info = m.engine.config, m.engine.info
        if cfg.label_nc == 0:
            raise OptionError("model", f"{name!r} takes RGB photos (label_nc 0); the editor "
                                       f"edits label maps")
        if info.graph != "generator":
            raise OptionError("model", f"{name!r} is a {info.graph} graph; the editor renders "
                                       f"through a generator graph")
        return m

    def size_of(request: Request) -> tuple[int, int]:
        q = request.query_params
        try:
            W, H = int(q.get("width", "")), int(q.get("height", ""))
        except ValueError:
            raise OptionError("width/height", "query parameters width and height (pixels) are "
                                              "required integers") from None
        if W < 1 or H < 1:
            raise OptionError("width/height", f"{W}x{H} is not a frame size")
        if max_pixels is not None and W * H > max_pixels:
            raise InputError("maps", f"{W}x{H} is {W * H:,} pixels, above the limit of "
                                     f"{max_pixels:,} (--max-pixels)")
        return H, W

    async def raw_maps(request: Request, count: int) -> tuple[np.ndarray, ...]:
        H, W = size_of(request)
        body = await read_body(request)
        need = count * H * W * 4
        if len(body) != need:
            what = "label and instance maps" if count == 2 else "map"
            raise InputError("body", f"{len(body):,} bytes; {W}x{H} {what} as little-endian "
                                     f"int32 are {need:,} bytes")
        a = np.frombuffer(body, dtype="<i4").astype(np.int32).reshape(count, H, W)
        return tuple(a)

    def style_of(request: Request) -> tuple[str | None, str]:
        q = request.query_params
        return q.get("style") or None, q.get("seed") or "0"

    def maps_response(label: np.ndarray, inst: np.ndarray) -> Response:
        H, W = label.shape
        body = np.ascontiguousarray(np.stack([label, inst]), dtype="<i4").tobytes()
        return Response(body, media_type="application/octet-stream",
                        headers={"X-Width": str(W), "X-Height": str(H)})

    def load(label_src, inst_src, label_name: str, inst_name: str):
        if label_map is None:
            label = read_id_png(label_src, max_pixels, name=label_name)
        else:
            label = label_ids(read_label_png(label_src, max_pixels, name=label_name,
                                             label_format="auto"), label_name,
                              label_map=label_map)
        if inst_src is None:
            # No instance map: derived as `--instances auto` derives it (each connected region
            # of a thing class one object, class*1000+k; stuff keeps its class id), so every
            # car of a simulator's label map can be selected and restyled on its own.
            inst = instances_from_labels(label, name=label_name)
        else:
            inst = read_id_png(inst_src, max_pixels, name=inst_name)
            if inst.shape != label.shape:
                raise InputError(inst_name, f"size {inst.shape[1]}x{inst.shape[0]} differs from "
                                            f"the label map's {label.shape[1]}x{label.shape[0]}")
        return label, inst

    async def render(model, label, inst, style, seed) -> list[np.ndarray]:
        frames = [(label, inst)] if not isinstance(label, list) else list(zip(label, inst))
        futures = model.running().submit(frames, style, seed, ["maps"] * len(frames))
        results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures),
                                       return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        frames_done(len(results))
        return results

    # ------------------------------------------------------------------ handlers

    async def page(request: Request) -> Response:
        # Not cached: the token is this server's, and changes when it restarts.
        return HTMLResponse(page_html, headers={"Cache-Control": "no-store"})

    @endpoint("editor")
    async def editor_info(request: Request) -> Response:
        m = model_of(request)
        engine = m.engine
        cfg, info = engine.config, engine.info
        return JSONResponse({
            "model": m.name, "version": m.version,
            "engine": str(getattr(engine, "path", None) or engine.name),
            "engine_label": describe_engine(engine),
            "backend": info.backend, "precision": info.precision, "device": str(engine.device),
            "size": list(info.size) if info.size is not None else None,
            "label_nc": cfg.label_nc, "stride": cfg.stride, "min_size": cfg.min_size,
            "feat_num": cfg.feat_num, "needs_instance_map": cfg.needs_instance_map,
            "max_instance_id": MAX_INSTANCE_ID, "instances_per_class": INSTANCES_PER_CLASS,
            "classes": class_table(engine), "samples": [s.name for s in samples]})

    @endpoint("editor")
    async def sample(request: Request) -> Response:
        name = request.path_params["name"]
        s = by_name.get(name)
        if s is None:
            raise InputError(name, f"no such sample (samples: {', '.join(by_name) or 'none'})")
        label, inst = await asyncio.to_thread(load, s.label, s.inst, str(s.label), str(s.inst))
        return maps_response(label, inst)

    @endpoint("editor")
    async def decode(request: Request) -> Response:
        check_token(request)
        body = await read_body(request)
        form = await parse_form(request, body, len(body) + 1)
        try:
            up_label, up_inst = form.get("label"), form.get("inst")
            if up_label is None or isinstance(up_label, str):
                raise InputError("label", "choose a label map PNG")
            if isinstance(up_inst, str):
                raise InputError("inst", "must be a file (the instance map PNG)")
            label_name = up_label.filename or "label"
            label_bytes = await up_label.read()
            inst_name = (up_inst.filename or "inst") if up_inst is not None else "inst"
            inst_bytes = await up_inst.read() if up_inst is not None else None
        finally:
            await form.close()
        label, inst = await asyncio.to_thread(load, label_bytes, inst_bytes, label_name,
                                              inst_name)
        return maps_response(label, inst)

    @endpoint("editor")
    async def render_image(request: Request) -> Response:
        check_token(request)
        model = model_of(request)
        label, inst = await raw_maps(request, 2)
        style, seed = style_of(request)
        t0 = time.perf_counter()
        rgb = (await render(model, label, inst, style, seed))[0]
        ms = (time.perf_counter() - t0) * 1000
        data = await asyncio.to_thread(encode_image, rgb, "png")
        return Response(data, media_type="image/png", headers={"X-Render-Ms": f"{ms:.0f}"})

    @endpoint("editor")
    async def swatches(request: Request) -> Response:
        check_token(request)
        model = model_of(request)
        label, inst = await raw_maps(request, 2)
        style, seed = style_of(request)
        try:
            iid = int(request.query_params.get("id", ""))
        except ValueError:
            raise OptionError("id", "the instance id (query parameter id) is a required "
                                    "integer") from None
        crop, box, fresh, k = swatch_frames(model.engine, label, inst, iid, style)
        lab_c, inst_c = crop
        rest, own, copies = split_instance_style(style)
        for v in fresh:
            own.pop(v, None)
        frames_l, frames_i = [], []
        for j, v in enumerate(fresh):
            frame = inst_c.copy()
            frame[inst_c == iid] = v
            frames_l.append(lab_c)
            frames_i.append(frame)
            own[v] = j
        text = ",".join(t for t in (rest, instance_style(own, copies)) if t)
        images = await render(model, frames_l, frames_i, text, seed)
        strip = np.concatenate(images, axis=1)
        data = await asyncio.to_thread(encode_image, strip, "png")
        x, y, w, h = box
        return Response(data, media_type="image/png", headers={
            "X-Clusters": str(k), "X-Box": f"{x},{y},{w},{h}"})

    def swatch_frames(engine: Engine, label: np.ndarray, inst: np.ndarray, iid: int,
                      style: str | None):
        cfg = engine.config
        H, W = label.shape
        where = inst == iid
        if not where.any():
            raise InputError("id", f"instance {iid} is not in the instance map")
        ys, xs = np.nonzero(where)
        # An instance's label as styles.py reads it: the class of an object id, the label map's
        # class under a stuff region.
        per = INSTANCES_PER_CLASS
        lab = iid // per if iid >= per else int(label[ys[0], xs[0]])
        classes = class_table(engine)
        k = classes[lab]["clusters"] if 0 <= lab < len(classes) else 0
        if k == 0:
            name = classes[lab]["name"] if 0 <= lab < len(classes) else str(lab)
            raise InputError("id", f"instance {iid}: label {name!r} ({lab}) has no feature "
                                   f"clusters in this model")
        s = cfg.stride
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1

        def side(extent: int, full: int) -> int:
            want = max(SWATCH_MIN, cfg.min_size, min(SWATCH_MAX, int(extent * 1.5)))
            return min(full, -(-want // s) * s)

        h, w = side(y1 - y0, H), side(x1 - x0, W)
        # Centred on the instance's pixel nearest its box's centre (a window onto a big or
        # concave region still shows it).
        d = (2 * ys - (y0 + y1)) ** 2 + (2 * xs - (x0 + x1)) ** 2
        cy, cx = int(ys[d.argmin()]), int(xs[d.argmin()])
        top = min(max(0, cy - h // 2), H - h)
        left = min(max(0, cx - w // 2), W - w)
        lab_c = label[top:top + h, left:left + w]
        inst_c = inst[top:top + h, left:left + w]
        # Fresh ids of the same label: absent from the crop and from the style's entries (an
        # entry could name one as a copy source).
        _, own, copies = split_instance_style(style)
        taken = set(np.unique(inst_c).tolist()) | set(own) | set(copies) | set(copies.values())
        base = lab * per if iid >= per else 0
        fresh = [v for v in range(base, base + per) if v not in taken and v != iid][:k]
        if len(fresh) < k:
            raise InputError("id", f"instance {iid}: no free ids left for its swatches")
        return (lab_c, inst_c), (left, top, w, h), fresh, k

    @endpoint("editor")
    async def id_png(request: Request) -> Response:
        check_token(request)
        which = request.query_params.get("map", "")
        if which not in ("label", "inst"):
            raise OptionError("map", f"{which!r}: label or inst")
        (ids,) = await raw_maps(request, 1)
        lo, hi = (int(ids.min()), int(ids.max())) if ids.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise InputError(which, f"id {lo if lo < 0 else hi} does not fit a 16-bit PNG")

        def encode() -> bytes:
            # Labels below 256 as 8-bit (what datasets ship), instances always 16-bit
            # (Cityscapes *_instanceIds.png).
            a = ids.astype(np.uint8) if which == "label" and hi < 256 else ids.astype(np.uint16)
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="PNG", compress_level=1)
            return buf.getvalue()

        return Response(await asyncio.to_thread(encode), media_type="image/png")

    return [
        Route("/", page, methods=["GET"]),
        Route("/editor/info", editor_info, methods=["GET"]),
        Route("/editor/samples/{name}", sample, methods=["GET"]),
        Route("/editor/decode", decode, methods=["POST"]),
        Route("/editor/render", render_image, methods=["POST"]),
        Route("/editor/swatches", swatches, methods=["POST"]),
        Route("/editor/png", id_png, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
