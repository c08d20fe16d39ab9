"""The official image pool (`--pool-size N`): D's fake-loss pass sees, per sample, either the fake
just generated or one generated earlier, so D does not only chase G's latest output.

The official rule, per sample of the batch: while the pool holds fewer than N, the new fake is
stored and shown; once full, with probability 0.5 a stored fake (uniform over the N) is shown and
replaced by the new one, else the new one is shown. N = 0 (the official default for pix2pixHD)
turns it off.

What is stored: the official code stores D's whole fake input (label one-hot + edges + image);
this stores the parts it is made from (label ids, instance ids, fake image, as `entries`), and
the trainer encodes them again, so a pool entry costs ~20 bytes a pixel instead of 4 per one-hot
channel. The coins are a pure function of (seed, rank, step, sample), like the flips
(train/datasets.py), so a run is reproducible under a seed. The pool itself is not saved in
trainer_state.pt (it holds N full-size images): a resumed run refills it.
"""
from __future__ import annotations

import numpy as np
import torch


class ImagePool:
    def __init__(self, size: int, seed: int = 0, rank: int = 0):
        if size < 0:
            raise ValueError(f"pool size {size} < 0")
        self.size, self.seed, self.rank = size, seed, rank
        self.entries: list[tuple[torch.Tensor, ...]] = []

    def coins(self, step: int, index: int) -> tuple[float, int]:
        """(p, slot) for sample `index` of step `step`: a stored fake is shown when p > 0.5."""
        rng = np.random.default_rng([self.seed, self.rank, step, index, 2])
        return float(rng.random()), int(rng.integers(0, max(1, self.size)))

    def query(self, parts: tuple[torch.Tensor, ...], step: int) -> tuple[torch.Tensor, ...]:
        """parts: tensors [B, ...] of one batch (say label, inst, fake), sample b of each
        belonging together -> the same parts with some samples swapped for stored ones."""
        if self.size == 0:
            return parts
        parts = tuple(p.detach() for p in parts)
        shapes = tuple(tuple(p.shape[1:]) for p in parts)
        if self.entries and tuple(tuple(t.shape) for t in self.entries[0]) != shapes:
            self.entries = []         # a batch of another size: the stored fakes cannot be shown
        out = []
        for b in range(parts[0].shape[0]):
            sample = tuple(p[b].clone() for p in parts)
            if len(self.entries) < self.size:
                self.entries.append(sample)
                out.append(sample)
                continue
            p, slot = self.coins(step, b)
            if p > 0.5:
                out.append(self.entries[slot])
                self.entries[slot] = sample
            else:
                out.append(sample)
        return tuple(torch.stack([s[k] for s in out]) for k in range(len(parts)))
