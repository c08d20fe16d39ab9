"""ExportOptions: every option of `p2phd-infer export`, declared once (help, bounds, choices,
defaults); the command line is generated from it and it is checked whole when built, before
the checkpoint is read."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from p2phd_infer.errors import OptionError
from p2phd_infer.limits import MAX_BATCH
from p2phd_infer.options import check, setting

SUFFIXES = {"onnx": (".onnx",), "tensorrt": (".plan", ".engine"), "aoti": (".pt2",),
            "openvino": (".xml",)}
DYNAMIC_FORMATS = ("onnx", "tensorrt")     # the formats with a --dynamic-size graph
GRAPHS = ("generator", "style")


def parse_size(value: str | None, option: str) -> tuple[int, int] | None:
    """'WxH' -> (H, W); OptionError naming the option."""
    if value is None:
        return None
    w, sep, h = str(value).lower().partition("x")
    if not sep or not w.strip().isdigit() or not h.strip().isdigit() or not int(w) or not int(h):
        raise OptionError(option, f"{value!r}: expected WIDTHxHEIGHT, e.g. 2048x1024")
    return int(h), int(w)


def _size_check(option: str):
    return lambda value: parse_size(value, option)


@dataclass
class ExportOptions:
    engine: str = setting(help="The model.pt to export.", path="file", required=True,
                          renamed_from=("--model",))
    format: str = setting(
        help="onnx (onnxruntime, and the input to TensorRT), tensorrt (.plan, FP16), aoti "
             "(AOTInductor .pt2), openvino (.xml + .bin, OpenVINO's CPU plugin).",
        choices=tuple(sorted(SUFFIXES)), required=True)
    out: str = setting(help="Output file: .onnx, .plan/.engine, .pt2 or .xml (beside it .bin).",
                       path="file", required=True)
    height: int | None = setting(
        None, "Frame height the engine is built for (with --dynamic-size: the size traced at).",
        bounds=(1, None), shown_default="the model's training frame size; without one, onnx "
                                        "exports a dynamic size")
    width: int | None = setting(
        None, "Frame width the engine is built for (with --dynamic-size: the size traced at).",
        bounds=(1, None), shown_default="as --height")
    max_batch: int = setting(4, "Largest batch the engine takes (TensorRT profile, AOTInductor "
                                "bound).", bounds=(1, MAX_BATCH))
    fp16: bool | None = setting(
        None, "Precision. tensorrt: fp16 by default (normalization kept fp32); aoti: fp32 by "
              "default, fp16 needs --device cuda; onnx: fp32 only.", flag="--fp16/--fp32")
    precision: str = setting(
        "fp32", "openvino: int8 quantizes the IR with NNCF post-training quantization "
                "(calibrated on --calibration; first/last layers and InstanceNorm kept f32).",
        choices=("fp32", "int8"))
    calibration: str | None = setting(
        None, "--precision int8: folder of label maps (PNG) to calibrate on.", path="dir",
        shown_default="the bundled samples")
    device: str = setting("auto", "aoti: compile for cpu or cuda (auto: cuda if present); "
                                  "tensorrt: the GPU.")
    graph: str = setting(
        "generator", "generator: label, inst[, feat] -> image (what `run` uses). style: also "
                     "takes an example photo and its instance map, and runs the encoder inside.",
        choices=GRAPHS)
    timing_cache: str | None = setting(None, "TensorRT timing cache file.", path="file",
                                       shown_default="~/.cache/p2phd-infer/tensorrt-timing.cache")
    dynamic_size: bool = setting(
        False, "onnx, tensorrt: height and width dynamic (any multiple of the network's stride "
               "within --min-size..--max-size); --height/--width is then the size traced at and "
               "TensorRT's opt size.")
    min_size: str | None = setting(None, "--dynamic-size: smallest frame.", metavar="WxH",
                                   check=_size_check("--min-size"),
                                   shown_default="the network's minimum")
    opt_size: str | None = setting(None, "--dynamic-size, tensorrt: the size TensorRT tunes "
                                         "for.", metavar="WxH", check=_size_check("--opt-size"),
                                   shown_default="--width x --height")
    max_size: str | None = setting(None, "--dynamic-size: largest frame.", metavar="WxH",
                                   check=_size_check("--max-size"),
                                   shown_default="onnx: 8192x8192; tensorrt: --opt-size, as "
                                                 "TensorRT sizes its memory for the max")
    check: bool = setting(True, "Compare the written engine with the fp32 PyTorch model on "
                                "random inputs.", flag="--check/--no-check")

    def __post_init__(self):
        check(self)
        fmt = self.format
        if Path(self.out).suffix.lower() not in SUFFIXES[fmt]:
            raise OptionError(self.out, f"a {fmt} engine file must end in "
                                        f"{' or '.join(SUFFIXES[fmt])}")
        if fmt == "onnx" and self.fp16:
            raise OptionError("--fp16", "ONNX export is fp32 (--format tensorrt builds its fp16 "
                                        "engine from an fp16-typed graph of its own)")
        if fmt == "openvino" and self.fp16:
            raise OptionError("--fp16", "the OpenVINO IR keeps fp32 weights; the precision (fp32 "
                                        "or bf16) is chosen at run time: run --precision")
        if self.precision == "int8" and (fmt != "openvino" or self.graph != "generator"):
            raise OptionError("--precision", "int8 is an OpenVINO generator graph (--format "
                                             "openvino, --graph generator)")
        if self.calibration is not None and self.precision != "int8":
            raise OptionError("--calibration", "calibrates --precision int8")
        if (self.height is None) != (self.width is None):
            raise OptionError("--height/--width", "give both (or neither: the model's training "
                                                  "frame size)")
        if self.dynamic_size and fmt not in DYNAMIC_FORMATS:
            raise OptionError("--dynamic-size", "onnx and tensorrt only (openvino and aoti "
                                                "engines are built per frame size)")
        sizes = {"--min-size": self.min_size, "--opt-size": self.opt_size,
                 "--max-size": self.max_size}
        given = next((k for k, v in sizes.items() if v is not None), None)
        if given and not self.dynamic_size:
            raise OptionError(given, "sets a size range: add --dynamic-size")
        if self.opt_size is not None and fmt != "tensorrt":
            raise OptionError("--opt-size", "TensorRT's profile only (--format tensorrt)")

    def size_range(self) -> dict | None:
        """--dynamic-size's range as (H, W) tuples, or None for a fixed size."""
        if not self.dynamic_size:
            return None
        return dict(dynamic_size=True, min_size=parse_size(self.min_size, "--min-size"),
                    opt_size=parse_size(self.opt_size, "--opt-size"),
                    max_size=parse_size(self.max_size, "--max-size"))


def engine_size(opts: ExportOptions, ckpt) -> tuple[tuple[int, int], dict | None]:
    """The (H, W) to build (or, dynamic, to trace) at, and the dynamic range or None: the given
    --height/--width; else the frame size the model was trained at (model.pt's train_info);
    else, for onnx, a dynamic-size graph (traced at the network's minimum); else an OptionError
    naming the flags."""
    dynamic = opts.size_range()
    if opts.height is not None:
        return (opts.height, opts.width), dynamic
    trained = (ckpt.extra.get("train_info") or {}).get("frame_size")
    if isinstance(trained, (list, tuple)) and len(trained) == 2 and \
            all(isinstance(v, int) and v > 0 for v in trained):
        return (trained[0], trained[1]), dynamic
    if dynamic is None and opts.format == "onnx":
        dynamic = dict(dynamic_size=True, min_size=None, opt_size=None, max_size=None)
    if dynamic is not None and opts.format == "onnx":
        from .onnx_export import dynamic_bounds
        _, lo, _ = dynamic_bounds(ckpt.config, opts.graph, dynamic["min_size"],
                                  dynamic["max_size"])
        return lo, dynamic
    also = " (or --dynamic-size with --height/--width as TensorRT's opt size)" \
        if opts.format == "tensorrt" else ""
    raise OptionError("--height/--width", f"{opts.engine} does not record the frame size it was "
                                          f"trained at: give --height and --width, the size of "
                                          f"the frames `run` will feed{also}")
