"""Parity of an exported engine against the fp32 PyTorch model on fresh random inputs."""
from __future__ import annotations

import math

import torch

from p2phd_infer.checkpoint import Checkpoint

from .graphs import build_graph, example_inputs


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of images in [-1,1], measured on the [0,1] scale (peak 1)."""
    mse = float((((image.float() - reference.float()) / 2) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def run_engine(engine, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    if getattr(engine, "graph", "generator") == "style":
        return engine.style(inputs["label"], inputs["inst"], inputs["style_image"],
                            inputs["style_inst"])
    return engine(inputs["label"], inputs.get("inst", inputs["label"]), inputs.get("feat"))


@torch.no_grad()
def check_engine(engine, ckpt: Checkpoint, batch: int = 1, seed: int = 0) -> dict:
    """{max_abs, psnr_db} of `engine` against the fp32 PyTorch graph it was exported from."""
    graph = getattr(engine, "graph", "generator")
    H, W = engine.info.size
    reference = build_graph(ckpt, graph, engine.device)
    g = torch.Generator().manual_seed(seed)
    names = reference.input_names
    inputs = dict(zip(names, example_inputs(names, ckpt.config, batch, H, W, generator=g)))
    inputs = {k: v.to(engine.device) for k, v in inputs.items()}
    expected = reference(*[inputs[n] for n in names]).float()
    got = run_engine(engine, inputs).float()
    return {"max_abs": float((got - expected).abs().max()), "psnr_db": psnr(got, expected)}
