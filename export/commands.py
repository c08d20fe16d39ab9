"""`p2phd-infer export`: a model.pt -> ONNX, TensorRT FP16 plan, or AOTInductor package."""
from __future__ import annotations

from pathlib import Path

import click
import torch
from tqdm import tqdm

SUFFIXES = {"onnx": (".onnx",), "tensorrt": (".plan", ".engine"), "aoti": (".pt2",)}


@click.command("export")
@click.option("--engine", "engine_path", required=True, type=click.Path(dir_okay=False),
              help="The model.pt to export.")
@click.option("--format", "fmt", required=True, type=click.Choice(sorted(SUFFIXES)),
              help="onnx (onnxruntime, and the input to TensorRT), tensorrt (.plan, FP16), "
                   "aoti (AOTInductor .pt2).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Output file: .onnx, .plan/.engine or .pt2.")
@click.option("--height", default=1024, show_default=True, type=click.IntRange(1),
              help="Frame height the engine is built for.")
@click.option("--width", default=2048, show_default=True, type=click.IntRange(1),
              help="Frame width the engine is built for.")
@click.option("--max-batch", default=4, show_default=True, type=click.IntRange(1),
              help="Largest batch the engine takes (TensorRT profile, AOTInductor bound).")
@click.option("--fp16/--fp32", default=None,
              help="Precision. tensorrt: fp16 by default (normalization kept fp32); aoti: fp32 "
                   "by default, fp16 needs --device cuda; onnx: fp32 only.")
@click.option("--device", default="auto", show_default=True,
              help="aoti: compile for cpu or cuda (auto: cuda if present); tensorrt: the GPU.")
@click.option("--graph", type=click.Choice(["generator", "style"]), default="generator",
              show_default=True,
              help="generator: label, inst[, feat] -> image (what `run` uses). style: also takes "
                   "an example photo and its instance map, and runs the encoder inside.")
@click.option("--timing-cache", type=click.Path(dir_okay=False),
              help="TensorRT timing cache file [default: ~/.cache/p2phd-infer/"
                   "tensorrt-timing.cache].")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Compare the written engine with the fp32 PyTorch model on random inputs.")
def export_cmd(engine_path, fmt, out, height, width, max_batch, fp16, device, graph,
               timing_cache, check):
    """Export a model.pt to an engine file that `p2phd-infer run --engine FILE` takes as is.

    The engine file carries the architecture, label names, feature dictionary, frame size, max
    batch and precision. Batch is dynamic (1..--max-batch); height and width are fixed.
    """
    from p2phd_infer.checkpoint import CheckpointError, load_checkpoint
    from p2phd_infer.cli import fail
    from p2phd_infer.engines import EngineError

    out = Path(out)
    if out.suffix.lower() not in SUFFIXES[fmt]:
        raise fail(f"{out}: a {fmt} engine file must end in {' or '.join(SUFFIXES[fmt])}")
    if fmt == "onnx" and fp16:
        raise fail("ONNX export is fp32 (TensorRT builds its fp16 engine from it: "
                   "--format tensorrt)")
    try:
        ckpt = load_checkpoint(engine_path)
        _validate(ckpt, fmt, height, width, fp16, device, graph)
        with tqdm(total=3, desc=f"export {fmt}", unit="step", leave=False) as bar:
            engine = _export(ckpt, fmt, out, height, width, max_batch, fp16, device, graph,
                             timing_cache, bar)
            bar.update(1)
            result = None
            if check:
                from .parity import check_engine
                bar.set_postfix_str("parity check")
                result = check_engine(engine, ckpt)
            bar.update(1)
    except (CheckpointError, EngineError, ValueError) as e:
        raise fail(str(e))
    size = out.stat().st_size / 2**20
    click.echo(f"{out}: {fmt} {graph} engine, {width}x{height}, batch 1..{max_batch}, "
               f"{engine.info.precision}, {size:.1f} MiB")
    if result is not None:
        click.echo(f"parity against fp32 PyTorch on random inputs: max abs diff "
                   f"{result['max_abs']:.2e}, PSNR {result['psnr_db']:.1f} dB")


def _validate(ckpt, fmt, height, width, fp16, device, graph) -> None:
    """The cheap checks, before any slow work (and before the progress bar)."""
    from .graphs import check_size
    check_size(ckpt.config, height, width, graph)
    if graph == "style" and (ckpt.config.feat_num <= 0 or ckpt.encoder is None):
        raise ValueError("--graph style needs a model with an encoder (feat_num > 0 and encoder "
                         "weights in the checkpoint)")
    if fmt == "aoti":
        dev = torch.device(_aoti_device(device))
        if fp16 and dev.type != "cuda":
            raise ValueError("fp16 AOTInductor packages are built for CUDA (--device cuda)")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but this PyTorch sees no CUDA device")
    if fmt == "tensorrt":
        from p2phd_infer.engine_tensorrt import import_tensorrt
        import_tensorrt()           # a missing package fails before the slow export
        if not torch.cuda.is_available():
            raise ValueError("building a TensorRT engine needs a CUDA GPU; none is visible")


def _aoti_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return str(torch.device(device))
    except RuntimeError:
        raise ValueError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N") from None


def _export(ckpt, fmt, out, height, width, max_batch, fp16, device, graph, timing_cache, bar):
    from p2phd_infer.engines import open_engine
    from .onnx_export import export_onnx
    from .metadata import temp_path
    if fmt == "onnx":
        bar.set_postfix_str("torch.onnx (dynamo)")
        export_onnx(ckpt, out, height, width, max_batch, graph)
        bar.update(1)
        return open_engine(out, "cpu")
    if fmt == "aoti":
        from .aoti_export import export_aoti
        dev = _aoti_device(device)
        bar.set_postfix_str(f"AOTInductor compile for {dev}")
        export_aoti(ckpt, out, height, width, max_batch, graph, dev, bool(fp16))
        bar.update(1)
        return open_engine(out, dev)
    from .tensorrt_build import build_tensorrt
    dev = "cuda" if device == "auto" else device
    onnx_tmp = temp_path(out, ".onnx")
    try:
        bar.set_postfix_str("ONNX for TensorRT")
        export_onnx(ckpt, onnx_tmp, height, width, max_batch, graph)
        bar.set_postfix_str("TensorRT build")
        build_tensorrt(onnx_tmp, out, max_batch, fp16=fp16 is not False,
                       timing_cache=timing_cache, device=dev, log=tqdm.write)
    finally:
        onnx_tmp.unlink(missing_ok=True)
    bar.update(1)
    return open_engine(out, dev)


__all__ = ["export_cmd"]
