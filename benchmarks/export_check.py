"""Export check on a GPU: the fp16 AOTInductor package of the official 1024p generator shape
(ModelConfig() defaults: local enhancer, ngf 32, 36 inputs, 183 M parameters; random weights)
at 2048x1024, against the fp32 PyTorch model: PSNR (>= 40 dB expected) and ms/frame. Prints
JSON (and writes OUT_DIR/export_check.json). Without CUDA it prints a skip record and exits 0.

    python benchmarks/export_check.py [--out-dir DIR] [--tensorrt]
    python benchmarks/export_check.py --device cpu --tiny     # a CPU smoke run of the same code

--tensorrt also builds a TensorRT FP16 plan (minutes at 2048x1024) when tensorrt is installed.
"""
from __future__ import annotations

import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import click
import torch

from p2phd_infer.checkpoint import Checkpoint
from p2phd_infer.config import ModelConfig
from p2phd_infer.engines import open_engine
from p2phd_infer.files import write_atomic
from p2phd_infer.networks import build_generator
from p2phd_infer.synthesizer import Synthesizer, psnr

TINY = ModelConfig(label_nc=8, ngf=4, n_downsample_global=2, n_blocks_global=1, n_blocks_local=1)


def scene(cfg: ModelConfig, frames: int, H: int, W: int, seed: int, device) -> tuple:
    """Blocky label maps (64 px cells, or 8 px for small sizes) with Cityscapes-style instances."""
    g = torch.Generator().manual_seed(seed)
    cell = 64 if min(H, W) >= 256 else 8
    label = torch.randint(0, cfg.label_nc, (frames, 1, H // cell, W // cell), generator=g)
    label = label.repeat_interleave(cell, 2).repeat_interleave(cell, 3)
    k = torch.randint(0, 4, label.shape, generator=g)
    inst = torch.where(label >= 24, label * 1000 + k, label)
    return label.to(device, torch.int32), inst.to(device, torch.int32)


def time_ms(fn, iters: int, warmup: int, device) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / iters
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) * 1000 / iters


def compare(engine, reference, label, inst) -> dict:
    values, diff = [], 0.0
    with torch.no_grad():
        for i in range(label.shape[0]):
            got = engine(label[i:i + 1], inst[i:i + 1]).float()
            want = reference(label[i:i + 1], inst[i:i + 1]).float()
            values.append(psnr(got, want))
            diff = max(diff, float((got - want).abs().max()))
    return {"psnr_db_min": min(values), "psnr_db_mean": sum(values) / len(values),
            "max_abs": diff}


@click.command()
@click.option("--out-dir", type=click.Path(file_okay=False), help="Also write export_check.json.")
@click.option("--device", default="cuda", show_default=True)
@click.option("--size", default="2048x1024", show_default=True, help="WxH.")
@click.option("--tiny", is_flag=True, help="A tiny config instead of the 1024p shape (smoke run).")
@click.option("--frames", default=3, show_default=True, help="Frames for the PSNR.")
@click.option("--iters", default=20, show_default=True)
@click.option("--warmup", default=3, show_default=True)
@click.option("--tensorrt", "with_trt", is_flag=True, help="Also build and check a TensorRT plan.")
def main(out_dir, device, size, tiny, frames, iters, warmup, with_trt):
    """fp16 .pt2 (CUDA) or fp32 .pt2 (CPU smoke run) against the fp32 PyTorch model."""
    result: dict = {"check": "export_check", "python": platform.python_version(),
                    "torch": torch.__version__}
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        result["skipped"] = "no CUDA device: the fp16 .pt2 check needs a GPU"
        return emit(result, out_dir)
    W, H = (int(v) for v in size.lower().split("x"))
    cfg = TINY if tiny else ModelConfig()
    fp16 = device.type == "cuda"
    if device.type == "cuda":
        # A true fp32 reference: no TF32 in its convolutions.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        result["gpu"] = torch.cuda.get_device_name(device)
    torch.manual_seed(0)
    with torch.device(device):
        generator = build_generator(cfg)
    ckpt = Checkpoint(cfg, {k: v.detach().cpu() for k, v in generator.state_dict().items()})
    reference = Synthesizer(cfg, generator).eval()
    result.update(config="tiny" if tiny else "ModelConfig() (official 1024p shape)",
                  parameters=sum(p.numel() for p in generator.parameters()), size=f"{W}x{H}",
                  precision="fp16" if fp16 else "fp32")
    label, inst = scene(cfg, frames, H, W, seed=1, device=device)
    with tempfile.TemporaryDirectory() as work:
        from p2phd_infer.export.aoti_export import export_aoti
        t = time.perf_counter()
        path = export_aoti(ckpt, Path(work) / "g.pt2", H, W, max_batch=1, device=device,
                           fp16=fp16)
        result["pt2_compile_s"] = round(time.perf_counter() - t, 1)
        engine = open_engine(path, device)
        result["pt2"] = compare(engine, reference, label, inst)
        result["pt2"]["ms_per_frame"] = time_ms(lambda: engine(label[:1], inst[:1]), iters,
                                                warmup, device)
        result["pt2"]["psnr_ok"] = result["pt2"]["psnr_db_min"] >= 40
        del engine
        with torch.no_grad():
            result["torch_fp32_eager_ms_per_frame"] = time_ms(
                lambda: reference(label[:1], inst[:1]), max(3, iters // 4), 1, device)
        if with_trt:
            result["tensorrt"] = check_tensorrt(ckpt, reference, label, inst, H, W, work,
                                                device, iters, warmup)
    return emit(result, out_dir)


def check_tensorrt(ckpt, reference, label, inst, H, W, work, device, iters, warmup) -> dict:
    try:
        from p2phd_infer.engines.tensorrt import import_tensorrt
        import_tensorrt()
    except Exception as e:  # noqa: BLE001 - reported, not raised: the .pt2 result still counts
        return {"skipped": str(e)}
    from p2phd_infer.export.onnx_export import export_onnx
    from p2phd_infer.export.tensorrt_build import build_tensorrt
    t = time.perf_counter()
    onnx_path = export_onnx(ckpt, Path(work) / "g.onnx", H, W, max_batch=1, precision="fp16")
    plan = build_tensorrt(onnx_path, Path(work) / "g.plan", max_batch=1, fp16=True,
                          timing_cache=Path(work) / "timing.cache", device=device,
                          log=lambda *a: print(*a, file=sys.stderr))
    out = {"build_s": round(time.perf_counter() - t, 1)}
    engine = open_engine(plan, device)
    out.update(compare(engine, reference, label, inst))
    out["ms_per_frame"] = time_ms(lambda: engine(label[:1], inst[:1]), iters, warmup, device)
    return out


def emit(result: dict, out_dir) -> None:
    for v in result.values():
        if isinstance(v, dict):
            for k, x in v.items():
                if isinstance(x, float) and not math.isfinite(x):
                    v[k] = str(x)
    text = json.dumps(result, indent=1)
    print(text)
    if out_dir:
        write_atomic(Path(out_dir) / "export_check.json", text + "\n")


if __name__ == "__main__":
    main()
