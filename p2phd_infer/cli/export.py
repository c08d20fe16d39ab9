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
from .options import click_options


def _export_options(command):
    from ..export.options import ExportOptions
    return click_options(ExportOptions)(command)


@click.command("export")
@_export_options
def export_cmd(**options):
    """Export a model.pt to an engine file that `p2phd-infer run --engine FILE` takes as is.

    The engine file carries the architecture, label names, feature dictionary, frame size, max
    batch and precision. Batch is dynamic (1..--max-batch); height and width are the model's
    training frame size unless given, or a range with --dynamic-size (onnx, tensorrt).
    """
    from ..export.options import ExportOptions, engine_size
    opts = ExportOptions(**options)
    fmt, out, graph = opts.format, Path(opts.out), opts.graph
    check_writable(out)
    ckpt = load_checkpoint(opts.engine)
    (height, width), dynamic = engine_size(opts, ckpt)
    _validate(ckpt, fmt, height, width, opts.fp16, opts.device, graph)
    with tqdm(total=3, desc=f"export {fmt}", unit="step", leave=False) as bar:
        engine = _export(ckpt, fmt, out, height, width, opts.max_batch, opts.fp16, opts.device,
                         graph, opts.timing_cache, bar, dynamic,
                         (opts.precision, opts.calibration))
        bar.update(1)
        result = None
        if opts.check:
            bar.set_postfix_str("parity check")
            result = check_engine(engine, ckpt, size=(height, width))
        bar.update(1)
    size = out.stat().st_size / 2**20
    batches = f"batch 1..{opts.max_batch}" if engine.info.max_batch is not None else "any batch"
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

