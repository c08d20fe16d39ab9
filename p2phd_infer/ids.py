"""The one place id maps are checked, whatever they come from: PNG files (decode_maps), the
Runtime's in-memory frames and the embedding API (as_ids, then check_maps).

A label map holds class ids 0..label_nc-1; an instance map holds instance ids (Cityscapes:
class*1000+k) that stay exact int32 end to end, never a float and never wrapped. A frame is
refused, naming its source, when an id does not fit, when its size is below the network's
minimum, when the two maps differ in size, or when it has more pixels than the limit (its one-hot
alone would need gigabytes). Any size at or above the minimum is taken: engines pad it to the
stride and crop the image back (Engine.synthesize).
"""
from __future__ import annotations

import numpy as np
import torch

from .config import ModelConfig
from .errors import InputError
from .image_io import read_id_png, read_label_png, read_rgb

INT32_MIN, INT32_MAX = -2**31, 2**31 - 1


def label_range_fault(lo: int, hi: int, label_nc: int) -> str | None:
    """What is wrong with a label map whose ids span lo..hi, or None when they all fit."""
    if lo >= 0 and hi < label_nc:
        return None
    return (f"label id {hi if hi >= label_nc else lo} out of range: the model has label_nc "
            f"{label_nc} (ids 0..{label_nc - 1})")


# The integer types ids may come in (bool: a mask is ids 0 and 1); anything else is refused by
# name, before torch would fail on it with its own message.
ID_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
             torch.uint16, torch.uint32, torch.uint64)


def as_tensor(x, what: str, name: str) -> torch.Tensor:
    """A numpy array or torch tensor -> a dense torch tensor on the CPU or a CUDA device, its
    values and dtype unchanged (a numpy array in the other byte order is converted, exactly).
    InputError naming `name`, `what` and the fault for what no engine input can be made of:
    another type, a sparse or nested layout, a quantized dtype, a meta (or other) device."""
    if isinstance(x, np.ndarray):
        if not x.dtype.isnative:        # big-endian data: torch.from_numpy refuses it
            x = x.astype(x.dtype.newbyteorder("="))
        if x.dtype.hasobject or x.dtype.fields is not None:
            raise InputError(name, f"{what} has dtype {x.dtype}; expected a numeric array")
        return torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise InputError(name, f"{what}: expected a file path, a numpy array or a torch tensor, "
                               f"got {type(x).__name__}")
    if x.is_nested or x.layout != torch.strided:
        layout = "nested" if x.is_nested else str(x.layout).replace("torch.", "")
        raise InputError(name, f"{what} is a {layout} tensor; give a dense one (.to_dense())")
    if x.device.type not in ("cpu", "cuda"):
        raise InputError(name, f"{what} is on device {x.device}; give a CPU or CUDA tensor")
    if x.is_quantized:
        raise InputError(name, f"{what} has the quantized dtype {x.dtype}; give plain integers "
                               f"(.int_repr())")
    return x.detach()


def as_ids(x, what: str, name: str, device: torch.device | None = None) -> torch.Tensor:
    """numpy/torch integer ids, [H,W] or with leading batch/channel dims -> a tensor of the same
    shape: on the host uint8 stays uint8 (a quarter of the bytes to copy to a device; consumers
    widen there) and every other integer type becomes int32 (InputError for ids outside int32:
    they would wrap and merge instances); on `device` (a CUDA device) tensors already there keep
    their dtype, since a range check there would wait for the device. InputError for what
    as_tensor refuses and for non-integer dtypes."""
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
            raise InputError(name, f"{what} has dtype {x.dtype}; ids must be integers")
        if x.dtype.type in (np.uint32, np.uint64):
            if x.size and int(x.max()) > INT32_MAX:
                raise InputError(name, f"{what} holds id {int(x.max())}, outside int32")
            x = x.astype(np.int64)
    t = as_tensor(x, what, name)
    if t.dtype not in ID_DTYPES:
        raise InputError(name, f"{what} has dtype {t.dtype}; ids must be integers")
    if t.is_cuda and device is not None and device.type == "cuda":
        return t if t.device == device else t.to(device)
    t = t.cpu()
    if t.dtype in (torch.int64, torch.uint64, torch.uint32) and t.numel():
        lo, hi = (int(v) for v in torch.aminmax(t.long()))
        if lo < INT32_MIN or hi > INT32_MAX:
            raise InputError(name, f"{what} holds id {hi if hi > INT32_MAX else lo}, outside "
                                   f"int32 (instance ids are kept exact, never wrapped)")
    return t if t.dtype == torch.uint8 else t.to(torch.int32)


def check_maps(label: torch.Tensor, inst: torch.Tensor | None, cfg: ModelConfig, name: str, *,
               inst_name: str | None = None, size: tuple[int, int] | None = None,
               max_pixels: int | None = None) -> None:
    """InputError naming `name` (or `inst_name` for the instance map) unless label [..,H,W] and
    inst fit the model: size at least the minimum, equal shapes, label ids in range (on the
    host), and at most `max_pixels` pixels. `size`: the (H, W) an engine was built for, if it
    was; the frame padded to the stride must have it."""
    H, W = label.shape[-2:]
    if max_pixels is not None and H * W > max_pixels:
        raise InputError(name, f"{W}x{H} is {H * W:,} pixels, above the limit of {max_pixels:,} "
                               f"(--max-pixels)")
    m = cfg.min_size
    if H < m or W < m:
        raise InputError(name, f"size {W}x{H} is below this model's minimum {m}x{m}")
    if size is not None and cfg.padded_size(H, W) != tuple(size):
        Hp, Wp = cfg.padded_size(H, W)
        at = f" (padded to {Wp}x{Hp})" if (Hp, Wp) != (H, W) else ""
        raise InputError(name, f"size {W}x{H}{at}: this engine was built for "
                               f"{size[1]}x{size[0]}")
    rgb_input = cfg.input_kind == "rgb"
    if rgb_input and (not label.is_floating_point() and label.dtype != torch.uint8
                      or label.dim() < 3 or label.shape[-3] != 3):
        raise InputError(name, f"a label_nc 0 model takes an RGB input image [3,H,W], not a "
                               f"{label.dtype} map of shape {tuple(label.shape)}")
    if inst is not None and (tuple(inst.shape[-2:]) != (H, W) if rgb_input else
                             tuple(inst.shape) != tuple(label.shape)):
        where = f" ({name})" if inst_name else ""
        raise InputError(inst_name or name, f"instance map size {inst.shape[-1]}x{inst.shape[-2]} "
                                            f"differs from the label map's {W}x{H}{where}")
    if not rgb_input and not label.is_cuda and label.numel():
        fault = label_range_fault(*(int(v) for v in torch.aminmax(label)), cfg.label_nc)
        if fault:
            raise InputError(name, fault)


def label_ids(values: np.ndarray, name: str, *, label_format: str = "ids", palette=None,
              label_map=None) -> np.ndarray:
    """A decoded label map -> int32 [H,W] label ids, by the one rule for every source (files,
    the Runtime's and the API's arrays, serve): CARLA RGB -> its red-channel tags through
    sim.CARLA_TO_CITYSCAPES (or `label_map`, which replaces it); colours [H,W,3] -> ids through
    `label_map` when it maps colours, else `palette`; ids -> `label_map` when given. InputError
    naming `name` for a value the table lacks."""
    if label_format == "carla":
        from .sim import carla_labels
        if values.ndim != 3:
            raise InputError(name, f"a CARLA camera image is RGB [H,W,3], got shape "
                                   f"{tuple(values.shape)}")
        return carla_labels(np.ascontiguousarray(values[..., 0]), name=name,
                            table=label_map.table() if label_map is not None else None)
    if label_map is not None and (values.ndim == 3) == label_map.colors:
        return label_map.apply(values, name)
    if values.ndim == 3:
        if palette is None:
            raise InputError(name, "a colour label map, and no palette to read it with")
        return palette.ids(values, name)
    return values


def instance_ids(label: np.ndarray, inst, name: str, cfg: ModelConfig, *,
                 derive: bool = False, label_format: str = "ids"):
    """The instance map that goes with `label` (int32 ids): `inst` as given (a decoded map; for
    CARLA the instance camera's RGB, read as class*1000 + actor id mod 1000), or, with
    `derive` and no map, one derived from the label map (sim.instances_from_labels). None for a
    model that takes none; InputError naming `name` when one is needed and missing."""
    if not cfg.needs_instance_map:
        return None
    if inst is None:
        if derive:
            from .sim import instances_from_labels
            return instances_from_labels(label, name=name)
        raise InputError(name, "no instance map found (the model needs one): give "
                               "--instances DIR (or --instances auto to derive them from the "
                               "label map), or use Cityscapes names or a *_inst/ sibling folder")
    if label_format == "carla":
        from .sim import carla_instances, split_carla_rgb
        if inst.ndim != 3:
            raise InputError(name, "a CARLA instance camera image is RGB [H,W,3]")
        return carla_instances(label, split_carla_rgb(inst)[1], name=name)
    return inst


def remap_arrays(label, inst, cfg: ModelConfig, name: str, *, label_map=None,
                 derive_instances: bool = False):
    """In-memory maps of one frame (numpy or torch, [H,W] or [H,W,3] colours, leading 1-dims
    allowed) -> (label, inst) with `label_map` applied and, with `derive_instances` and no
    instance map, one derived (both as host numpy arrays); as given when neither applies. A map
    on a CUDA device is copied to the host for this (the labelling runs on the CPU)."""
    wants_inst = derive_instances and inst is None and cfg.needs_instance_map
    if cfg.input_kind == "rgb" or (label_map is None and not wants_inst):
        return label, inst
    arr = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if label_map is not None:
        arr = label_ids(arr, name, label_map=label_map)
    if arr.ndim != 2:
        raise InputError(name, f"label map has shape {tuple(arr.shape)}; expected [H,W]")
    if wants_inst:
        inst = instance_ids(as_ids(arr, "label map", name).numpy(), None, name, cfg,
                            derive=True)
    return arr, inst


def remap_batch(label, inst, cfg: ModelConfig, name: str, *, label_map=None,
                derive_instances: bool = False):
    """remap_arrays over a batch: label [H,W], [B,H,W] or [B,1,H,W] (colours [H,W,3] or
    [B,H,W,3] when `label_map` maps colours) -> (label ids [H,W] or [B,H,W], inst) as host
    numpy; inst is as given, or derived frame by frame when none is given."""
    arr = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    colours = label_map is not None and label_map.colors
    batched = arr.ndim >= 4 or (arr.ndim == 3 and not colours)
    out = [remap_arrays(f, None, cfg, name, label_map=label_map,
                        derive_instances=derive_instances and inst is None)
           for f in (arr if batched else [arr])]
    labels = np.stack([o[0] for o in out]) if batched else out[0][0]
    if inst is None and out[0][1] is not None:
        inst = np.stack([o[1] for o in out]) if batched else out[0][1]
    return labels, inst


def decode_maps(label: str, inst: str | None, cfg: ModelConfig, *, size=None,
                max_pixels: int | None = None, label_format: str = "ids",
                palette=None, label_map=None,
                derive_instances: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """PNG locations -> checked tensors (label, inst; inst None for a model that takes no
    instance map). label: int32 [H,W] ids; for a label_nc 0 model the input image itself, uint8
    [3,H,W] (any format Pillow reads; the engine side converts it to x/127.5 - 1).
    label_format: ids, color, auto or carla (image_io.read_label_png); the ids then follow
    label_ids (palette, label_map, the CARLA table) and the instance map instance_ids (given,
    CARLA's instance camera, or derived with `derive_instances`)."""
    inst_t = None
    if cfg.input_kind == "rgb":
        rgb = read_rgb(label, max_pixels)
        label_t = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
        if cfg.needs_instance_map:
            if inst is None:
                raise InputError(label, "no instance map found (the model needs one): give "
                                        "--instances DIR, or use Cityscapes names or a *_inst/ "
                                        "sibling folder")
            inst_t = torch.from_numpy(read_id_png(inst, max_pixels))
    else:
        arr = read_label_png(label, max_pixels, label_format=label_format)
        ids = label_ids(arr, str(label), label_format=label_format, palette=palette,
                        label_map=label_map)
        label_t = torch.from_numpy(ids)
        inst_arr = None
        if inst is not None and cfg.needs_instance_map:
            inst_arr = read_label_png(inst, max_pixels, label_format="carla") \
                if label_format == "carla" else read_id_png(inst, max_pixels)
        inst_arr = instance_ids(ids, inst_arr, str(inst if inst is not None else label), cfg,
                                derive=derive_instances, label_format=label_format)
        inst_t = torch.from_numpy(inst_arr) if inst_arr is not None else None
    check_maps(label_t, inst_t, cfg, str(label), inst_name=None if inst is None else str(inst),
               size=size, max_pixels=max_pixels)
    return label_t, inst_t
