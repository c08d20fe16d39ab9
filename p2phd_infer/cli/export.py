"""`p2phd-infer export`: a model.pt -> ONNX, TensorRT FP16 plan, or AOTInductor package."""
from __future__ import annotations

from pathlib import Path

import click
from tqdm import tqdm

from ..checkpoint import load_checkpoint
from ..engines import open_engine, resolve_device
from ..engines.tensorrt import import_tensorrt
from ..errors import MissingDependency, OptionError
from ..export.graphs import check_size
from ..export.parity import check_engine
from ..files import check_writable, temp_path

SUFFIXES = {"onnx": (".onnx",), "tensorrt": (".plan", ".engine"), "aoti": (".pt2",),
            "openvino": (".xml",)}


def _size(ctx, param, value):
    """'WxH' -> (H, W)."""
    if value is None:
        return None
    w, sep, h = value.lower().partition("x")
    if not sep or not w.strip().isdigit() or not h.strip().isdigit() or not int(w) or not int(h):
        raise click.BadParameter(f"{value!r}: expected WIDTHxHEIGHT, e.g. 2048x1024")
    return int(h), int(w)


@click.command("export")
@click.option("--engine", "engine_path", required=True, type=click.Path(dir_okay=False),
              help="The model.pt to export.")
@click.option("--format", "fmt", required=True, type=click.Choice(sorted(SUFFIXES)),
              help="onnx (onnxruntime, and the input to TensorRT), tensorrt (.plan, FP16), "
                   "aoti (AOTInductor .pt2), openvino (.xml + .bin, OpenVINO's CPU plugin).")
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
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default="fp32",
              show_default=True,
              help="openvino: int8 quantizes the IR with NNCF post-training quantization "
                   "(calibrated on --calibration; first/last layers and InstanceNorm kept f32).")
@click.option("--calibration", type=click.Path(file_okay=False),
              help="--precision int8: folder of label maps (PNG) to calibrate on [default: the "
                   "bundled samples].")
@click.option("--device", default="auto", show_default=True,
              help="aoti: compile for cpu or cuda (auto: cuda if present); tensorrt: the GPU.")
@click.option("--graph", type=click.Choice(["generator", "style"]), default="generator",
              show_default=True,
              help="generator: label, inst[, feat] -> image (what `run` uses). style: also takes "
                   "an example photo and its instance map, and runs the encoder inside.")
@click.option("--timing-cache", type=click.Path(dir_okay=False),
              help="TensorRT timing cache file [default: ~/.cache/p2phd-infer/"
                   "tensorrt-timing.cache].")
@click.option("--dynamic-size", is_flag=True,
              help="onnx, tensorrt: height and width dynamic (any multiple of the network's "
                   "stride within --min-size..--max-size); --height/--width is then the size "
                   "traced at and TensorRT's opt size.")
@click.option("--min-size", callback=_size, metavar="WxH",
              help="--dynamic-size: smallest frame [the network's minimum].")
@click.option("--opt-size", callback=_size, metavar="WxH",
              help="--dynamic-size, tensorrt: the size TensorRT tunes for [--width x --height].")
@click.option("--max-size", callback=_size, metavar="WxH",
              help="--dynamic-size: largest frame [onnx: 8192x8192; tensorrt: --opt-size, as "
                   "TensorRT sizes its memory for the max].")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Compare the written engine with the fp32 PyTorch model on random inputs.")
def export_cmd(engine_path, fmt, out, height, width, max_batch, fp16, device, graph,
               timing_cache, check, dynamic_size=False, min_size=None, opt_size=None,
               max_size=None, precision="fp32", calibration=None):
    """Export a model.pt to an engine file that `p2phd-infer run --engine FILE` takes as is.

    The engine file carries the architecture, label names, feature dictionary, frame size, max
    batch and precision. Batch is dynamic (1..--max-batch); height and width are fixed.
    """
    out = Path(out)
    if out.suffix.lower() not in SUFFIXES[fmt]:
        raise OptionError(out, f"a {fmt} engine file must end in {' or '.join(SUFFIXES[fmt])}")
    if fmt == "onnx" and fp16:
        raise OptionError("--fp16", "ONNX export is fp32 (--format tensorrt builds its fp16 "
                                    "engine from an fp16-typed graph of its own)")
    if fmt == "openvino" and fp16:
        raise OptionError("--fp16", "the OpenVINO IR keeps fp32 weights; the precision (fp32 or "
                                    "bf16) is chosen at run time: run --precision")
    if precision == "int8" and (fmt != "openvino" or graph != "generator"):
        raise OptionError("--precision", "int8 is an OpenVINO generator graph (--format "
                                         "openvino, --graph generator)")
    if calibration is not None and precision != "int8":
        raise OptionError("--calibration", "calibrates --precision int8")
    sizes = {"--min-size": min_size, "--opt-size": opt_size, "--max-size": max_size}
    if dynamic_size and fmt not in ("onnx", "tensorrt"):
        raise OptionError("--dynamic-size", "onnx and tensorrt only (openvino and aoti engines "
                                            "are built per frame size)")
    given = next((k for k, v in sizes.items() if v is not None), None)
    if given and not dynamic_size:
        raise OptionError(given, "sets a size range: add --dynamic-size")
    if opt_size is not None and fmt != "tensorrt":
        raise OptionError("--opt-size", "TensorRT's profile only (--format tensorrt)")
    check_writable(out)
    ckpt = load_checkpoint(engine_path)
    _validate(ckpt, fmt, height, width, fp16, device, graph)
    dynamic = dict(dynamic_size=dynamic_size, min_size=min_size, opt_size=opt_size,
                   max_size=max_size) if dynamic_size else None
    with tqdm(total=3, desc=f"export {fmt}", unit="step", leave=False) as bar:
        engine = _export(ckpt, fmt, out, height, width, max_batch, fp16, device, graph,
                         timing_cache, bar, dynamic, (precision, calibration))
        bar.update(1)
        result = None
        if check:
            bar.set_postfix_str("parity check")
            result = check_engine(engine, ckpt, size=(height, width))
        bar.update(1)
    size = out.stat().st_size / 2**20
    batches = f"batch 1..{max_batch}" if engine.info.max_batch is not None else "any batch"
    frames = f"{width}x{height}"
    spec = engine.info.extra.get("dynamic_size") if engine.info.size is None else None
    if spec:
        (h0, w0), (h1, w1) = spec["min"], spec["max"]
        frames = f"any multiple of {spec['multiple']} from {w0}x{h0} to {w1}x{h1}"
    click.echo(f"{out}: {fmt} {graph} engine, {frames}, {batches}, "
               f"{engine.info.precision}, {size:.1f} MiB")
    if result is not None:
        click.echo(f"parity against fp32 PyTorch on random inputs: max abs diff "
                   f"{result['max_abs']:.2e}, PSNR {result['psnr_db']:.1f} dB")


def _validate(ckpt, fmt, height, width, fp16, device, graph) -> None:
    """The cheap checks, before any slow work (and before the progress bar)."""
    if graph == "style" and (ckpt.config.feat_num <= 0 or ckpt.encoder is None):
        raise OptionError("--graph", "style needs a model with an encoder (feat_num > 0 and "
                                     "encoder weights in the checkpoint)")
    check_size(ckpt.config, height, width, graph)
    dev = resolve_device(device)
    if fmt == "aoti" and fp16 and dev.type != "cuda":
        raise OptionError("--fp16", "fp16 AOTInductor packages are built for CUDA (--device cuda)")
    if fmt == "openvino":
        from ..engines.openvino_cpu import import_openvino
        import_openvino()           # a missing package fails before the slow export
    if fmt == "tensorrt":
        import_tensorrt()           # a missing package fails before the slow export
        if dev.type != "cuda":
            raise MissingDependency("--device", "building a TensorRT engine needs a CUDA GPU; "
                                                "none is visible")


def _export(ckpt, fmt, out, height, width, max_batch, fp16, device, graph, timing_cache, bar,
            dynamic=None, quantization=("fp32", None)):
    from ..export.onnx_export import export_onnx
    dynamic = dynamic or {}
    # The ONNX graph's range: for TensorRT from min to max of its profile (max defaults to opt).
    onnx_range = {} if not dynamic else dict(
        dynamic_size=True, min_size=dynamic["min_size"],
        max_size=dynamic["max_size"] if fmt == "onnx" else
        (dynamic["max_size"] or dynamic["opt_size"] or (height, width)))
    if fmt == "openvino":
        from ..export.openvino_export import export_openvino
        precision, calibration = quantization
        bar.set_postfix_str("OpenVINO (PyTorch frontend" +
                            (", NNCF int8 calibration)" if precision == "int8" else ")"))
        export_openvino(ckpt, out, height, width, graph, precision, calibration)
        bar.update(1)
        return open_engine(out, "cpu")
    if fmt == "onnx":
        bar.set_postfix_str("torch.onnx (dynamo)")
        export_onnx(ckpt, out, height, width, max_batch, graph, **onnx_range)
        bar.update(1)
        return open_engine(out, "cpu")
    if fmt == "aoti":
        from ..export.aoti_export import export_aoti
        dev = str(resolve_device(device))
        bar.set_postfix_str(f"AOTInductor compile for {dev}")
        export_aoti(ckpt, out, height, width, max_batch, graph, dev, bool(fp16))
        bar.update(1)
        return open_engine(out, dev)
    from ..export.tensorrt_build import build_tensorrt
    dev = str(resolve_device(device))
    onnx_tmp = temp_path(out, ".onnx")
    try:
        bar.set_postfix_str("ONNX for TensorRT")
        # TensorRT builds strongly typed: the fp16 plan comes from the fp16-typed graph.
        precision = "fp32" if fp16 is False else "fp16"
        export_onnx(ckpt, onnx_tmp, height, width, max_batch, graph, precision, **onnx_range)
        bar.set_postfix_str("TensorRT build")
        build_tensorrt(onnx_tmp, out, max_batch, fp16=precision == "fp16",
                       timing_cache=timing_cache, device=dev, log=tqdm.write,
                       min_size=dynamic.get("min_size"), opt_size=dynamic.get("opt_size"),
                       max_size=dynamic.get("max_size"))
    finally:
        try:                   # never let the cleanup hide the error that got us here
            onnx_tmp.unlink(missing_ok=True)
        except OSError:
            pass
    bar.update(1)
    return open_engine(out, dev)

