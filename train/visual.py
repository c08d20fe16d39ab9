"""Pictures for people: colourised label maps and label | generated | real grids."""
from __future__ import annotations

import numpy as np
import torch

from p2phd_infer.labels import CITYSCAPES_LABELS
from p2phd_infer.palette import colorize as palette_colorize
from p2phd_infer.synthesizer import to_uint8


def palette(n: int = 256) -> np.ndarray:
    """uint8 [n,3]: the Cityscapes colours for ids 0-33, a fixed spread of colours beyond."""
    rng = np.random.default_rng(12345)
    pal = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    for i, (_, rgb) in CITYSCAPES_LABELS.items():
        if i < n:
            pal[i] = rgb
    return pal


_PALETTE = palette()


def colorize(label: np.ndarray, colors: dict[int, list[int]] | None = None) -> np.ndarray:
    """int [H,W] label ids of any integer dtype -> uint8 [H,W,3]; `colors` ({id: [r, g, b]}, a
    model's label_colors) override the palette."""
    pal = _PALETTE
    if colors:
        pal = pal.copy()
        for i, rgb in colors.items():
            if 0 <= i < len(pal):
                pal[i] = rgb
    return palette_colorize(label, pal)


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """float [3,H,W] in [-1,1] -> uint8 [H,W,3], the inference path's conversion."""
    return to_uint8(image.detach().cpu()[None])[0].numpy()


def sample_grid(label: torch.Tensor, fake: torch.Tensor, real: torch.Tensor, rows: int = 4,
                colors: dict[int, list[int]] | None = None) -> np.ndarray:
    """One row per sample: label colourised (an RGB input, label_nc 0, as it is) | generated |
    real, with a 2 px white gutter."""
    out = []
    for i in range(min(rows, label.shape[0])):
        first = to_rgb(label[i]) if label.is_floating_point() else \
            colorize(label[i, 0].cpu().numpy(), colors)
        parts = [first, to_rgb(fake[i]), to_rgb(real[i])]
        gutter = np.full((parts[0].shape[0], 2, 3), 255, np.uint8)
        out.append(np.concatenate([parts[0], gutter, parts[1], gutter, parts[2]], axis=1))
        out.append(np.full((2, out[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(out[:-1], axis=0)
