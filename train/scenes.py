"""Synthetic street scenes in the pix2pixHD layout, so a generator has something real to learn
without downloading Cityscapes.

Each scene: a Cityscapes label map (8-bit PNG), a Cityscapes-style instance map (16-bit PNG:
class*1000+k for cars and persons, the class id for stuff) and a photo rendered from them with
per-class colour, texture and shading, and a per-instance colour (every car its own paint, every
person their own clothes), so the encoder has per-instance style to capture. Scene i depends only
on (seed, i): the same seed gives the same files whatever the count.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from p2phd_infer.files import write_atomic

ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, PERSON, CAR = 7, 8, 11, 21, 23, 24, 26
SCENE_LABELS = (ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, PERSON, CAR)

# Building walls share one palette per scene (buildings are "stuff": one instance id per scene,
# so the encoder sees one building style per image).
_WALLS = np.array([[176, 160, 140], [140, 138, 136], [150, 92, 76], [196, 190, 178]], np.float32)


@dataclass
class Scene:
    label: np.ndarray   # uint8 [H,W] Cityscapes label ids
    inst: np.ndarray    # int32 [H,W] instance ids
    image: np.ndarray   # uint8 [H,W,3]


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Zero-mean, unit-ish value noise with features about `cell` pixels wide."""
    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((w, h), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def _paint(rng: np.random.Generator) -> np.ndarray:
    """A car paint colour: mostly saturated hues, sometimes white, black or silver."""
    r = rng.random()
    if r < 0.15:
        return np.array([225, 225, 228], np.float32)
    if r < 0.3:
        return np.array([30, 30, 34], np.float32)
    if r < 0.4:
        return np.array([160, 162, 168], np.float32)
    hue, sat, val = rng.random(), rng.uniform(0.55, 0.95), rng.uniform(0.45, 0.95)
    return _hsv(hue, sat, val)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, np.float32) * 255


def render_scene(seed: int, index: int, width: int, height: int) -> Scene:
    rng = np.random.default_rng([seed, index])
    H, W = height, width
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    label = np.full((H, W), SKY, np.uint8)
    inst = np.full((H, W), SKY, np.int32)
    img = np.zeros((H, W, 3), np.float32)

    # Sky: brighter towards the horizon.
    horizon = H * rng.uniform(0.38, 0.5)
    t = np.clip(yy / horizon, 0, 1)[..., None]
    img[:] = (1 - t) * np.array([70, 125, 195], np.float32) + t * np.array([175, 200, 228], np.float32)

    # Buildings: a row of blocks standing on the horizon, each with a grid of windows.
    wall = _WALLS[rng.integers(len(_WALLS))]
    x = -rng.uniform(0, 0.1) * W
    while x < W:
        bw = rng.uniform(0.1, 0.28) * W
        if rng.random() < 0.15:          # a gap showing the sky
            x += bw * 0.5
            continue
        top = rng.uniform(0.04, 0.75) * horizon
        m = (xx >= x) & (xx < x + bw) & (yy >= top) & (yy < horizon + 1)
        label[m], inst[m] = BUILDING, BUILDING
        shade = rng.uniform(0.85, 1.1)
        img[m] = wall * shade
        # Windows: a regular grid anchored at the building's corner.
        px, py = max(4.0, rng.uniform(0.035, 0.06) * W), max(4.0, rng.uniform(0.07, 0.1) * H)
        win = (((xx - x) % px) > px * 0.4) & (((yy - top) % py) > py * 0.45) & m
        win &= (yy < horizon - py * 0.3) & (xx > x + px * 0.3) & (xx < x + bw - px * 0.3)
        img[win] = img[win] * 0.45 + np.array([60, 80, 110], np.float32) * 0.55
        x += bw

    # Ground: a road converging to a vanishing point, sidewalks outside it.
    ground = yy >= horizon
    depth = np.clip((yy - horizon) / (H - horizon), 0, 1)        # 0 at the horizon, 1 at the bottom
    vx = W * rng.uniform(0.4, 0.6)
    left_b, right_b = W * rng.uniform(-0.35, 0.15), W * rng.uniform(0.85, 1.35)
    road_l = vx + (left_b - vx) * depth
    road_r = vx + (right_b - vx) * depth
    road = ground & (xx >= road_l) & (xx <= road_r)
    walk = ground & ~road
    label[walk], inst[walk] = SIDEWALK, SIDEWALK
    label[road], inst[road] = ROAD, ROAD
    n_road = _smooth_noise(rng, H, W, 24)
    img[road] = (np.array([88, 88, 94], np.float32) * (1.05 - 0.2 * depth[road])[:, None]
                 + 5 * n_road[road][:, None])
    tiles = ((xx // 10 + (yy - horizon) // 6) % 2 == 0)
    img[walk] = (np.array([172, 160, 162], np.float32) - 12 * tiles[walk][:, None]
                 + 4 * n_road[walk][:, None])

    # Trees: crowns of overlapping discs over the building line.
    leaves = _smooth_noise(rng, H, W, 6)
    for _ in range(rng.integers(0, 5)):
        cx, cy = rng.uniform(0, W), horizon - rng.uniform(0.05, 0.2) * H
        r0 = rng.uniform(0.05, 0.11) * H
        crown = np.zeros((H, W), bool)
        for _ in range(4):
            ox, oy = rng.normal(0, r0 * 0.6), rng.normal(0, r0 * 0.4)
            crown |= (xx - cx - ox) ** 2 + (yy - cy - oy) ** 2 < (r0 * rng.uniform(0.7, 1.1)) ** 2
        label[crown], inst[crown] = VEGETATION, VEGETATION
        lit = np.clip(1 - (yy[crown] - (cy - r0)) / (3 * r0), 0.5, 1.0)
        img[crown] = (np.array([78, 118, 46], np.float32) * lit[:, None]
                      + 14 * leaves[crown][:, None])

    # Cars on the road and persons on the sidewalks, drawn far to near so near ones occlude.
    objects = []
    for _ in range(rng.integers(1, 6)):
        objects.append(("car", horizon + rng.uniform(0.12, 1.05) * (H - horizon)))
    for _ in range(rng.integers(0, 5)):
        objects.append(("person", horizon + rng.uniform(0.1, 1.0) * (H - horizon)))
    objects.sort(key=lambda o: o[1])
    counts = {"car": 0, "person": 0}
    for kind, base in objects:
        d = (base - horizon) / (H - horizon)
        rl, rr = vx + (left_b - vx) * d, vx + (right_b - vx) * d
        if kind == "car":
            w = min((rr - rl) * rng.uniform(0.28, 0.4), 0.45 * W)
            if w < 8:
                continue
            cx = rng.uniform(rl + w / 2, max(rl + w / 2 + 1, rr - w / 2))
            mask = _draw_car(img, xx, yy, cx, base, w, _paint(rng))
            cls = CAR
        else:
            h = 0.45 * H * max(d, 0.08)
            if h < 8:
                continue
            side = rng.random() < 0.5
            lo, hi = (rl - 0.25 * W * d - h, rl - h * 0.3) if side else (rr + h * 0.3, rr + 0.25 * W * d + h)
            cx = rng.uniform(lo, hi)
            mask = _draw_person(img, xx, yy, cx, base, h, rng)
            cls = PERSON
        if not mask.any():
            continue
        k = counts[kind]
        counts[kind] += 1
        label[mask], inst[mask] = cls, cls * 1000 + k

    img += rng.normal(0, 2.0, img.shape).astype(np.float32)          # sensor noise
    return Scene(label, inst, np.clip(np.rint(img), 0, 255).astype(np.uint8))


def _draw_car(img, xx, yy, cx, base, w, paint) -> np.ndarray:
    """Side/rear view: body, a cabin with glass, two wheels; shaded lighter at the top."""
    h = 0.5 * w
    x0, x1 = cx - w / 2, cx + w / 2
    body = (xx >= x0) & (xx < x1) & (yy >= base - 0.62 * h) & (yy < base - 0.12 * h)
    cab_t = base - h
    frac = np.clip((yy - cab_t) / (0.38 * h), 0, 1)          # 0 at the roof, 1 at the belt line
    cab_l, cab_r = x0 + w * (0.22 - 0.1 * frac), x1 - w * (0.22 - 0.1 * frac)
    cabin = (yy >= cab_t) & (yy < base - 0.62 * h) & (xx >= cab_l) & (xx < cab_r)
    r = 0.16 * h
    wheels = np.zeros_like(body)
    for wx in (x0 + 0.2 * w, x1 - 0.2 * w):
        wheels |= (xx - wx) ** 2 + (yy - (base - r)) ** 2 < r ** 2
    mask = body | cabin | wheels
    shade = np.clip(1.15 - 0.5 * (yy - cab_t) / h, 0.6, 1.15)
    img[body | cabin] = np.clip(paint * shade[body | cabin][:, None], 0, 255)
    glass = cabin & (yy >= cab_t + 0.08 * h) & (xx >= cab_l + 0.04 * w) & (xx < cab_r - 0.04 * w)
    img[glass] = np.array([42, 52, 64], np.float32) + 0.15 * paint
    lights = body & (yy < base - 0.45 * h) & (yy >= base - 0.55 * h) & (
        (xx < x0 + 0.1 * w) | (xx >= x1 - 0.1 * w))
    img[lights] = np.array([200, 40, 30], np.float32)
    img[wheels] = np.array([22, 22, 24], np.float32)
    return mask


def _draw_person(img, xx, yy, cx, base, h, rng) -> np.ndarray:
    shirt = _hsv(rng.random(), rng.uniform(0.4, 0.9), rng.uniform(0.4, 0.95))
    trousers = np.array([40, 45, 70], np.float32) * rng.uniform(0.6, 1.4)
    skin = np.array([222, 182, 150], np.float32) * rng.uniform(0.6, 1.05)
    hr = 0.09 * h
    head = (xx - cx) ** 2 + (yy - (base - h + hr)) ** 2 < hr ** 2
    torso = (abs(xx - cx) < 0.14 * h) & (yy >= base - h + 2 * hr) & (yy < base - 0.45 * h)
    legs = ((abs(xx - cx + 0.07 * h) < 0.055 * h) | (abs(xx - cx - 0.07 * h) < 0.055 * h)) & (
        yy >= base - 0.45 * h) & (yy < base)
    img[head], img[torso], img[legs] = skin, shirt, trousers
    return head | torso | legs


def parse_size(text: str) -> tuple[int, int]:
    """'512x256' -> (512, 256)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like 512x256, not {text!r}") from None
    if w < 16 or h < 16:
        raise ValueError(f"size {text} is too small (at least 16x16)")
    return w, h


def _save_png(array: np.ndarray, path: Path) -> None:
    write_atomic(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def write_scene(scene: Scene, out: Path, stem: str, phase: str = "train") -> None:
    _save_png(scene.label, out / f"{phase}_label" / f"{stem}.png")
    _save_png(scene.inst.astype(np.uint16), out / f"{phase}_inst" / f"{stem}.png")   # 16-bit PNG
    _save_png(scene.image, out / f"{phase}_img" / f"{stem}.png")


def make_scenes(out: str | os.PathLike, count: int, width: int, height: int, seed: int = 0,
                phase: str = "train", progress: bool = False) -> list[str]:
    out = Path(out)
    for sub in ("label", "inst", "img"):
        (out / f"{phase}_{sub}").mkdir(parents=True, exist_ok=True)
    stems = [f"scene_{seed}_{i:05d}" for i in range(count)]
    it = range(count)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="scenes", unit="scene")
    for i in it:
        write_scene(render_scene(seed, i, width, height), out, stems[i], phase)
    return stems
