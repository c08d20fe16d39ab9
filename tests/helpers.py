"""Small builders the test modules share (conftest.py has the fixtures)."""
from __future__ import annotations

import torch

from p2phd_infer.checkpoint import Checkpoint, save_checkpoint
from p2phd_infer.config import ModelConfig
from p2phd_infer.networks import build_generator


def random_checkpoint(cfg: ModelConfig, seed: int = 0, features=None,
                      std: float | None = None) -> Checkpoint:
    """A generator with random weights (PyTorch's init, or N(0, std) for livelier images), without
    touching the global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = build_generator(cfg)
        if std is not None:
            for p in net.parameters():
                p.data.normal_(0, std)
    return Checkpoint(cfg, net.state_dict(), features=features)


def save_random_model(path, cfg: ModelConfig, seed: int = 0, **kw):
    save_checkpoint(random_checkpoint(cfg, seed, **kw), path)
    return path
