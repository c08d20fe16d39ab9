#!/usr/bin/env python
"""A small segmenter for the synthetic street scenes (`make-scenes`), so `evaluate`'s segmentation
score can be shown on the bundled demo without a Cityscapes network.

It is a stand-in for the segmenter a user brings (for Cityscapes: a DeepLabV3 or any network
trained on the 19 evaluation classes): a 6-layer fully convolutional net (two stride-2 stages,
dilated middle, bilinear upsampling), trained here in about a minute on two cores on scenes of
another seed than the ones evaluated, to predict Cityscapes trainIds (road, sidewalk, building,
vegetation, sky, person, car are the ones the scenes have). Written as TorchScript with its
sidecar JSON (classes "cityscapes", mean/std), the format `evaluate --segmenter` reads.

    python benchmarks/scene_segmenter.py --out seg.pt [--scenes 48 --steps 300 --seed 7]
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import click
import numpy as np
import torch
from torch import nn

from p2phd_infer.files import write_atomic
from p2phd_infer.labels import CITYSCAPES_TRAIN_IDS, IGNORE_ID
from p2phd_infer.train.scenes import render_scene

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


class SceneSegmenter(nn.Module):
    def __init__(self, width: int = 32, classes: int = 19):
        super().__init__()

        def block(i, o, stride=1, dilation=1):
            return nn.Sequential(nn.Conv2d(i, o, 3, stride, dilation, dilation), nn.BatchNorm2d(o),
                                 nn.ReLU(inplace=True))
        self.body = nn.Sequential(block(3, width, 2), block(width, width * 2, 2),
                                  block(width * 2, width * 2, dilation=2),
                                  block(width * 2, width * 2, dilation=4),
                                  block(width * 2, width * 2, dilation=8))
        self.head = nn.Conv2d(width * 2, classes, 1)

    def forward(self, x):
        y = self.head(self.body(x))
        return nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear",
                                         align_corners=False)


def train_ids(label: np.ndarray) -> np.ndarray:
    lut = np.full(256, IGNORE_ID, np.int64)
    for label_id, t in CITYSCAPES_TRAIN_IDS.items():
        lut[label_id] = t
    return lut[label]


@click.command()
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="TorchScript file to write (its sidecar goes to <out>.json).")
@click.option("--scenes", default=48, show_default=True, help="Training scenes to render.")
@click.option("--size", default="512x256", show_default=True, help="WxH of the scenes.")
@click.option("--steps", default=300, show_default=True, help="Training steps (batch 4, "
                                                              "random 256x128 crops).")
@click.option("--seed", default=7, show_default=True,
              help="Scene seed (use another than the scenes you evaluate).")
def main(out, scenes, size, steps, seed):
    """Train the scene segmenter and write it as TorchScript + sidecar JSON."""
    w, h = (int(v) for v in size.split("x"))
    torch.manual_seed(seed)
    data = [render_scene(seed, i, w, h) for i in range(scenes)]
    x = torch.from_numpy(np.stack([d.image for d in data])).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    y = torch.from_numpy(np.stack([train_ids(d.label) for d in data]))
    net = SceneSegmenter()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE_ID)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, scenes, (4,), generator=g)
        cy = int(torch.randint(0, h - 128 + 1, (1,), generator=g))
        cx = int(torch.randint(0, w - 256 + 1, (1,), generator=g))
        xb, yb = x[idx, :, cy:cy + 128, cx:cx + 256], y[idx, cy:cy + 128, cx:cx + 256]
        loss = loss_fn(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            click.echo(f"step {step}: loss {loss.item():.3f} ({time.time() - t0:.0f} s)")
    net.eval()
    with torch.no_grad():
        pred = net(x[:8]).argmax(1)
        ok = y[:8] != IGNORE_ID
        click.echo(f"training-scene pixel accuracy {(pred[ok] == y[:8][ok]).float().mean():.4f}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # torch.jit is deprecated; its files still load
        scripted = torch.jit.script(net)
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    scripted.save(str(tmp))
    write_atomic(out, tmp.read_bytes())
    tmp.unlink()
    side = {"classes": "cityscapes", "mean": list(MEAN), "std": list(STD), "size": None}
    write_atomic(Path(out).with_name(Path(out).name + ".json"),
                 (json.dumps(side, indent=2) + "\n").encode())
    click.echo(f"{out}: TorchScript scene segmenter (+ {out}.json)")


if __name__ == "__main__":
    main()
