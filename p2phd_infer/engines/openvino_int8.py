"""--precision int8: OpenVINO INT8 through NNCF post-training quantization, calibrated on label
maps.

The fp32 graph (openvino_convert.convert_checkpoint) is run on a calibration set: the bundled
sample label maps by default, or `--calibration DIR` (label-map PNGs; instance maps of the same
name in a sibling `instances/` folder when there is one, else each label map is its own
instance map, so edges fall on class boundaries). NNCF records activation ranges there and puts
FakeQuantize nodes on the convolutions' inputs; weights are quantized per output channel;
OpenVINO's CPU plugin then runs those convolutions as int8 (VNNI / AMX dot products). Maps of
another size than the graph's are resized with nearest neighbour (ids stay ids); each is also
used mirrored, which doubles the set at no cost.

Kept in higher precision (IGNORED), and why:
- the first 7x7 convolutions (G1's and each local enhancer's), which read the one-hot labels,
  edges and instance features: their input is exact in 8 bits but their weights are not, and
  every later layer inherits their error; they are also where the lookup form applies;
- the last 7x7 convolution (to RGB, before tanh): its rounding lands directly on the pixels;
- every InstanceNorm (OpenVINO's MVN): NNCF's CPU setup would quantize MVN's input, so the
  per-channel mean and variance would be taken over 8-bit values; in f32 they are exact, and a
  normalisation's error is multiplied by 1/std.
The rest (the downsampling, residual and upsampling convolutions: nearly all of the FLOPs) is
int8. preset MIXED: symmetric weights, asymmetric activations (ReLU outputs are one-sided, and
the residual sums are not).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import EngineError, InputError, MissingDependency
from .demo import demo_labels
from .openvino_cpu import import_openvino

# NNCF samples at most this many frames (the bundled set is 4 maps, 8 with mirrors).
SUBSET = 64
IGNORED_TYPES = ("MVN",)


def import_nncf():
    import logging
    # NNCF imports torch's extension builder, which warns "No CUDA runtime is found" on every
    # CPU-only machine: nothing a user can act on.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        import nncf
    except ImportError:
        raise MissingDependency("--precision", "int8 needs NNCF (OpenVINO's quantizer): pip "
                                               "install nncf") from None
    return nncf


def calibration_files(folder: str | os.PathLike | None) -> list[tuple[Path, Path | None]]:
    """(label map, instance map or None) for every *.png of the folder, in name order;
    InputError for a folder that is missing or holds none."""
    folder = Path(folder) if folder is not None else demo_labels()
    if not folder.is_dir():
        raise InputError(folder, "--calibration: not a folder of label maps"
                         if folder.exists() else "--calibration: no such folder")
    labels = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not labels:
        raise InputError(folder, "--calibration: no label maps (*.png) to calibrate int8 on")
    inst_dir = folder.parent / "instances"
    return [(p, inst_dir / p.name if (inst_dir / p.name).is_file() else None) for p in labels]


def calibration_digest(files: list[tuple[Path, Path | None]]) -> str:
    """What the int8 graph depends on besides the weights: the calibration maps' names and
    bytes (part of its cache key)."""
    import xxhash
    h = xxhash.xxh3_128()
    for label, inst in files:
        for p in (label, inst):
            if p is not None:
                h.update(p.name.encode() + b"\0")
                h.update(p.read_bytes())
    return h.hexdigest()


def _resize_ids(ids: np.ndarray, height: int, width: int) -> np.ndarray:
    if ids.shape == (height, width):
        return ids
    from PIL import Image
    return np.asarray(Image.fromarray(ids.astype(np.int32), mode="I").resize(
        (width, height), Image.NEAREST), dtype=np.int32)


def calibration_frames(files, ckpt, height: int, width: int) -> list[dict[str, np.ndarray]]:
    """The graph's feeds for every calibration map (and its mirror), at the graph's size.
    InputError naming the file for a map that is not of this model (ids beyond its classes)."""
    from ..image_io import read_id_png
    from ..styles import StyleControl
    cfg = ckpt.config
    info = None
    if cfg.feat_num > 0:
        from .base import EngineInfo
        info = EngineInfo(cfg, ckpt.features, ckpt.label_names)
    frames = []
    for label_path, inst_path in files:
        label = read_id_png(label_path)
        top = int(label.max())
        if label.min() < 0 or top >= cfg.label_nc:
            raise InputError(label_path, f"--calibration: label id {top} in a map for a model "
                                         f"with {cfg.label_nc} classes (maps of another model?)")
        inst = read_id_png(inst_path) if inst_path is not None else label
        if inst.shape != label.shape:
            raise InputError(inst_path, f"--calibration: instance map {inst.shape[1]}x"
                                        f"{inst.shape[0]}, its label map is {label.shape[1]}x"
                                        f"{label.shape[0]}")
        label, inst = _resize_ids(label, height, width), _resize_ids(inst, height, width)
        for flip in (False, True):
            lab = label[:, ::-1] if flip else label
            ins = inst[:, ::-1] if flip else inst
            feed = {"label": np.ascontiguousarray(lab)[None, None].astype(np.int32),
                    "inst": np.ascontiguousarray(ins)[None, None].astype(np.int32)}
            if info is not None:
                # Instance features as a run draws them (a seeded cluster centre per object),
                # another seed per frame, so the ranges cover several styles.
                style = StyleControl.from_options(info, seed=len(frames))
                feed["feat"] = style.feature_map(torch.from_numpy(feed["label"]),
                                                 torch.from_numpy(feed["inst"])).numpy()
            frames.append(feed)
    return frames


def kept_in_float(model, cfg) -> list[str]:
    """Names of the convolutions left in float: those reading the network input (the first
    7x7 of G1 and of each enhancer) and the 7x7 to RGB."""
    names = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Convolution":
            continue
        shape = op.input(1).get_partial_shape()
        if not shape.is_static:
            continue
        out_c, in_c, kh, kw = (d.get_length() for d in shape)
        if (kh, kw) == (7, 7) and (in_c == cfg.input_nc or out_c == cfg.output_nc):
            names.append(op.get_friendly_name())
    if not names:
        raise EngineError("", "int8: found none of the first and last convolutions to keep in "
                              "float (not a pix2pixHD generator graph?)")
    return names


def quantize(model, frames: list[dict[str, np.ndarray]], cfg):
    """fp32 ov.Model -> int8 ov.Model (FakeQuantize on the convolutions NNCF may quantize)."""
    nncf = import_nncf()
    import_openvino()
    keep = kept_in_float(model, cfg)
    names = [p.get_any_name() for p in model.inputs]
    dataset = nncf.Dataset(frames, lambda f: {n: f[n] for n in names})
    import logging
    logging.getLogger("nncf").setLevel(logging.WARNING)   # its notes; progress bars stay
    try:
        q = nncf.quantize(model, dataset, preset=nncf.QuantizationPreset.MIXED,
                          subset_size=min(SUBSET, len(frames)),
                          ignored_scope=nncf.IgnoredScope(names=keep,
                                                          types=list(IGNORED_TYPES)))
    except Exception as e:  # noqa: BLE001 - NNCF's own faults, named
        first = (str(e).strip().splitlines() or [""])[0]
        raise EngineError("", f"NNCF could not quantize the model ({e.__class__.__name__}: "
                              f"{first})") from None
    from .base import METADATA_KEY, info_from_json, info_to_json
    info = info_from_json(str(model.get_rt_info(METADATA_KEY).astype(str)), "<int8>")
    info.precision = "int8"
    info.extra.update(int8_kept_in_float=keep + [f"every {t}" for t in IGNORED_TYPES],
                      calibration_frames=len(frames))
    q.set_rt_info(info_to_json(info), [METADATA_KEY])
    return q
