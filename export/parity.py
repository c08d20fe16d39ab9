"""Parity of an exported engine against the fp32 PyTorch model on fresh random inputs."""
from __future__ import annotations

import torch

from p2phd_infer.checkpoint import Checkpoint
from p2phd_infer.synthesizer import psnr

from .graphs import build_graph, example_inputs


def run_engine(engine, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    if engine.info.graph == "style":
        return engine.style(inputs["label"], inputs["inst"], inputs["style_image"],
                            inputs["style_inst"])
    return engine(inputs["label"], inputs.get("inst", inputs["label"]), inputs.get("feat"))


@torch.no_grad()
def check_engine(engine, ckpt: Checkpoint, batch: int = 1, seed: int = 0,
                 size: tuple[int, int] | None = None) -> dict:
    """{max_abs, psnr_db} of `engine` against the fp32 PyTorch graph it was exported from, at
    `size` (H, W) (default: the engine's fixed size; needed for a dynamic-size engine)."""
    graph = engine.info.graph
    H, W = size or engine.info.size
    reference = build_graph(ckpt, graph, engine.device)
    g = torch.Generator().manual_seed(seed)
    names = reference.input_names
    inputs = dict(zip(names, example_inputs(names, ckpt.config, batch, H, W, generator=g)))
    inputs = {k: v.to(engine.device) for k, v in inputs.items()}
    expected = reference(*[inputs[n] for n in names]).float()
    got = run_engine(engine, inputs).float()
    return {"max_abs": float((got - expected).abs().max()), "psnr_db": psnr(got, expected)}
