"""How good is a trained model on held-out synthetic scenes? PSNR against the rendered photos,
how much the feature clusters change a car's colour, and the label | output | ground truth picture.

    python -m p2phd_infer.train.demo --model model.pt --data heldout/ [--picture docs/demo.png]

`--data` is a pix2pixHD-layout folder (e.g. `p2phd-infer make-scenes --seed 999`); it is made
there with --make N scenes if it does not exist.
"""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import torch

from p2phd_infer.checkpoint import load_checkpoint
from p2phd_infer.image_io import write_image
from p2phd_infer.styles import StyleControl
from p2phd_infer.synthesizer import Synthesizer
from p2phd_infer.synthesizer import psnr as image_psnr
from p2phd_infer.synthesizer import to_uint8

from .datasets import PairedDataset
from .scenes import CAR
from .trainer import encode_features
from .visual import colorize, to_rgb


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two uint8 images."""
    return image_psnr(torch.from_numpy(a), torch.from_numpy(b), peak=255.0)


def evaluate(model: str | Path, data: str | Path, seed: int = 0) -> dict:
    ckpt = load_checkpoint(model)
    cfg = ckpt.config
    G = ckpt.build_generator().eval()
    E = ckpt.build_encoder()
    synth = Synthesizer(cfg, G).eval()
    ds = PairedDataset(data, resize_or_crop="none", multiple=cfg.stride, flip=False,
                       need_inst=cfg.needs_instance_map)
    batch = [ds[i] for i in range(len(ds))]
    label = torch.stack([b["label"] for b in batch])
    inst = torch.stack([b["inst"] for b in batch])
    real = torch.stack([b["image"] for b in batch])
    real_u8 = [to_rgb(r) for r in real]
    result: dict = {"model": str(model), "data": str(data), "scenes": len(ds),
                    "size": f"{real.shape[-1]}x{real.shape[-2]}"}
    outputs = {}
    with torch.no_grad():
        if E is not None:
            feat = encode_features(E.eval(), real, inst, cfg.enhancers)
            out = [to_rgb(o) for o in torch.cat([synth(label[i:i + 1], inst[i:i + 1], feat[i:i + 1])
                                                 for i in range(len(ds))])]
            outputs["photo_features"] = out
            result["psnr_photo_features_db"] = float(np.mean([psnr(o, r) for o, r in zip(out, real_u8)]))
        if cfg.feat_num == 0 or ckpt.features:
            # Random clusters as `run --seed` picks them: a hash of (seed, instance id).
            feat = StyleControl(cfg.feat_num, ckpt.features, seed=seed).feature_map(label, inst) \
                if cfg.feat_num else None
            out = [to_rgb(o) for o in torch.cat([
                synth(label[i:i + 1], inst[i:i + 1], None if feat is None else feat[i:i + 1])
                for i in range(len(ds))])]
            outputs["clusters"] = out
            result["psnr_random_clusters_db"] = float(np.mean([psnr(o, r) for o, r in zip(out, real_u8)]))
            if cfg.feat_num and len(ckpt.features.get(CAR, [])) >= 2:
                result["car_cluster_colours"] = car_cluster_colours(ckpt, synth, label, inst)
    return result, outputs, label, real_u8


def car_cluster_colours(ckpt, synth, label, inst) -> dict:
    """Generate every scene with all cars on cluster a, then on cluster b (everything else on its
    cluster 0); the mean RGB of the car pixels, per pair of car clusters."""
    k = len(ckpt.features[CAR])
    means = []
    car = (label == CAR)
    with torch.no_grad():
        for c in range(k):
            choice = {**{lab: 0 for lab in ckpt.features}, CAR: c}      # `--style '*=0,car=c'`
            feat = StyleControl(ckpt.config.feat_num, ckpt.features, choice).feature_map(label,
                                                                                         inst)
            out = torch.cat([synth(label[i:i + 1], inst[i:i + 1], feat[i:i + 1])
                             for i in range(label.shape[0])])
            rgb = to_uint8(out).permute(3, 0, 1, 2).float()          # [3,B,H,W]
            means.append(rgb[:, car[:, 0]].mean(1).numpy())
    dists = [(float(np.linalg.norm(means[a] - means[b])), a, b)
             for a in range(k) for b in range(a + 1, k)]
    d01 = float(np.linalg.norm(means[0] - means[1]))
    far = max(dists)
    return {"clusters": k, "mean_rgb_per_cluster": [[round(float(v), 1) for v in m] for m in means],
            "rgb_distance_0_1": round(d01, 1),
            "rgb_distance_max": round(far[0], 1), "max_pair": [far[1], far[2]],
            "rgb_distance_median": round(float(np.median([d[0] for d in dists])), 1)}


def picture(outputs: list[np.ndarray], label: torch.Tensor, real: list[np.ndarray], rows: int,
            width: int) -> np.ndarray:
    """label | output | ground truth, one scene per row, each panel `width` wide."""
    from PIL import Image
    lines = []
    for i in range(rows):
        panels = [colorize(label[i, 0].numpy()), outputs[i], real[i]]
        h = round(panels[0].shape[0] * width / panels[0].shape[1])
        panels = [np.asarray(Image.fromarray(p).resize((width, h), Image.LANCZOS if j else
                                                       Image.NEAREST)) for j, p in enumerate(panels)]
        gap = np.full((h, 4, 3), 255, np.uint8)
        lines.append(np.concatenate([panels[0], gap, panels[1], gap, panels[2]], 1))
        lines.append(np.full((4, lines[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(lines[:-1], 0)


@click.command("demo-eval")
@click.option("--model", required=True, type=click.Path(dir_okay=False))
@click.option("--data", required=True, type=click.Path(file_okay=False),
              help="Held-out scenes (pix2pixHD layout).")
@click.option("--make", "make", default=0, help="Make this many scenes in --data first, if absent.")
@click.option("--size", default="512x256", show_default=True)
@click.option("--scene-seed", default=999, show_default=True, help="Seed of the made scenes.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random cluster choices.")
@click.option("--picture", "picture_path", type=click.Path(dir_okay=False),
              help="Write label | output | ground truth here (PNG).")
@click.option("--rows", default=2, show_default=True)
@click.option("--panel-width", default=384, show_default=True)
def demo_eval_cmd(model, data, make, size, scene_seed, seed, picture_path, rows, panel_width):
    """PSNR of MODEL on held-out scenes (photo features and random clusters), the car colour
    change between feature clusters, and optionally the label | output | ground truth picture."""
    from .scenes import make_scenes, parse_size
    if make and not Path(data).exists():
        w, h = parse_size(size)
        make_scenes(data, make, w, h, scene_seed)
    result, outputs, label, real = evaluate(model, data, seed)
    click.echo(json.dumps(result))
    if picture_path:
        out = outputs.get("photo_features") or outputs["clusters"]
        write_image(picture_path, picture(out, label, real, min(rows, len(real)), panel_width))
        click.echo(f"wrote {picture_path}", err=True)


if __name__ == "__main__":
    demo_eval_cmd()
