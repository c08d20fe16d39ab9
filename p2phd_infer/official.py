"""Import NVIDIA's pix2pixHD checkpoints (latest_net_G.pth, latest_net_E.pth,
features_clustered_010.npy): the architecture is read off the tensor shapes."""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import torch

from .checkpoint import Checkpoint, check_finite, check_state, torch_load
from .errors import CheckpointError
from .files import write_atomic
from .config import ModelConfig
from .labels import CITYSCAPES_NAMES
from .locations import check_regular
from .networks import build_encoder, build_generator

_STALE = ("running_mean", "running_var", "num_batches_tracked")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    state = torch_load(path, "state dict file")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(path, "expected a plain state dict of tensors")
    # DataParallel prefixes; norm buffers from old PyTorch carry nothing (InstanceNorm, no stats).
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.endswith(_STALE)}


def _indices(state: dict, prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in state if (m := pat.match(k))})


def infer_generator_config(state: dict[str, torch.Tensor], label_nc: int, use_instance: bool,
                           path: str = "generator") -> ModelConfig:
    if "model.1.weight" not in state or state["model.1.weight"].dim() != 4:
        raise CheckpointError(path, "no `model.1.weight` conv: not a pix2pixHD generator")
    enhancers = len({m.group(1) for k in state if (m := re.match(r"model(\d+)_1\.", k))})
    ngf_global, input_nc = state["model.1.weight"].shape[:2]
    blocks = {i for i in _indices(state, "model.") if f"model.{i}.conv_block.1.weight" in state}
    first_block = min(blocks) if blocks else 10**9
    downs = [i for i in _indices(state, "model.") if i < first_block and i != 1
             and state.get(f"model.{i}.weight", torch.empty(0)).dim() == 4]
    n_blocks_local = 0
    if enhancers:
        n_blocks_local = len([i for i in _indices(state, f"model{enhancers}_2.")
                              if f"model{enhancers}_2.{i}.conv_block.1.weight" in state])
    label_channels = label_nc if label_nc > 0 else 3       # label_nc 0: an RGB input image
    extra_nc = int(input_nc) - label_channels - int(use_instance)
    if extra_nc < 0:
        raise CheckpointError(
            f"{path}: model.1.weight takes {input_nc} input channels, fewer than label_nc "
            f"{label_nc}{' (3 RGB channels)' if label_nc == 0 else ''} + instance edge "
            f"{int(use_instance)}; check --label-nc / --no-instance")
    try:
        return ModelConfig(
            label_nc=label_nc, use_instance=use_instance, feat_num=extra_nc,
            netG="local" if enhancers else "global", ngf=int(ngf_global) // 2**enhancers,
            n_downsample_global=len(downs), n_blocks_global=len(blocks),
            n_local_enhancers=enhancers or 1, n_blocks_local=n_blocks_local or 3)
    except ValueError as e:
        raise CheckpointError(path, f"the shapes imply an unusable architecture: {e}") from None


def infer_encoder_shape(state: dict[str, torch.Tensor], path: str = "encoder") -> tuple[int, int, int]:
    """-> (nef, n_downsample_E, feat_num)."""
    convs = [i for i in _indices(state, "model.") if state.get(f"model.{i}.weight") is not None
             and state[f"model.{i}.weight"].dim() == 4]
    if not convs or state[f"model.{convs[0]}.weight"].shape[1] != 3:
        raise CheckpointError(path, "not a pix2pixHD encoder (first conv must take 3 channels)")
    nef = int(state[f"model.{convs[0]}.weight"].shape[0])
    feat_num = int(state[f"model.{convs[-1]}.weight"].shape[0])
    return nef, (len(convs) - 2) // 2, feat_num


def infer_discriminator_shape(state: dict[str, torch.Tensor], path: str = "discriminator"
                              ) -> dict:
    """An official latest_net_D.pth's architecture from its keys and shapes ->
    {num_D, n_layers, ndf, input_nc, intermediate}. Keys `scale{i}_layer{j}.{m}.weight` (trained
    with the feature-matching loss: every group its own module) or `layer{i}.{m}.weight` (one
    flat Sequential per scale); a conv weight is (out, in, 4, 4)."""
    interm = re.compile(r"scale(\d+)_layer(\d+)\.0\.weight$")
    flat = re.compile(r"layer(\d+)\.(\d+)\.weight$")
    convs: dict[int, dict[int, torch.Tensor]] = {}
    intermediate = any(interm.match(k) for k in state)
    for k, v in state.items():
        m = (interm if intermediate else flat).match(k)
        if m and isinstance(v, torch.Tensor) and v.dim() == 4:
            convs.setdefault(int(m[1]), {})[int(m[2])] = v
    if not convs or 0 not in convs:
        raise CheckpointError(path, "no `scale0_layer0.0.weight` or `layer0.0.weight` conv: not "
                                    "a pix2pixHD discriminator")
    first = convs[0][min(convs[0])]
    return {"num_D": len(convs), "n_layers": len(convs[0]) - 2, "ndf": int(first.shape[0]),
            "input_nc": int(first.shape[1]), "intermediate": intermediate}


# The official features_clustered_010.npy is np.save of a pickled dict {label: float64 [k, F]}.
# A pickle can name any callable, so it is read with an unpickler that knows only what np.save
# writes for such a dict: arrays and dtypes (dict, int, float and str need no class lookup).
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name} (only numpy arrays, "
                                     f"dtypes, dicts, numbers and strings are allowed)")


def _read_npy_object(path: Path):
    """The object an .npy file holds: a plain array, or the pickled object of an object array,
    through the allow-listed unpickler."""
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise CheckpointError(path, "not an .npy file (the official features file is "
                                        "np.save of a dict {label: centres})")
        f.seek(0)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        if dtype.hasobject:
            return _ArrayUnpickler(f, encoding="latin1").load()
    return np.load(path)          # numeric data: numpy refuses pickles by default


def read_official_features(path: str | Path) -> dict[int, torch.Tensor]:
    """features_clustered_010.npy: np.save of a pickled {label: float64 [k, feat_num]}."""
    path = Path(path)
    check_regular(path, "features file", CheckpointError)
    try:
        obj = _read_npy_object(path)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        raise CheckpointError(path, f"not a features file: {e}") from None
    except Exception as e:  # noqa: BLE001 - any other fault is a bad file
        raise CheckpointError(path, f"not a readable features file ({e.__class__.__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else ''})") from None
    table = obj.item() if isinstance(obj, np.ndarray) and obj.dtype == object and \
        obj.shape == () else obj
    if not isinstance(table, dict):
        raise CheckpointError(path, f"expected a dict {{label: centres}}, got "
                                    f"{type(table).__name__}")
    out = {}
    for k, v in table.items():
        if not isinstance(k, (int, np.integer)) or not isinstance(v, np.ndarray) or \
                v.dtype.kind != "f":
            raise CheckpointError(path, f"label {k!r}: expected an integer label and a float "
                                        f"array of centres")
        arr = np.asarray(v, dtype=np.float64)
        if arr.ndim != 2:
            raise CheckpointError(path, f"label {k}: centres of shape {arr.shape}, expected [k, F]")
        if arr.shape[0] == 0:
            continue
        if not np.isfinite(arr).all():
            raise CheckpointError(path, f"label {k}: centres hold NaN or infinite values")
        out[int(k)] = torch.from_numpy(arr.astype(np.float32))
    return out


def write_official_features(features: dict[int, torch.Tensor], path: str | Path) -> None:
    """The official format, written as np.save would write the dict (a 0-d object array,
    pickled), so NVIDIA's code reads it; atomically."""
    table = {int(k): np.asarray(v, dtype=np.float64) for k, v in features.items()}
    holder = np.empty((), dtype=object)
    holder[()] = table

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "|O", "fortran_order": False, "shape": ()})
            pickle.dump(holder, f, protocol=3)

    write_atomic(path, write)


def import_official(generator: str | Path, encoder: str | Path | None = None,
                    features: str | Path | None = None, label_nc: int = 35,
                    use_instance: bool = True) -> Checkpoint:
    g_state = read_state_dict(generator)
    cfg = infer_generator_config(g_state, label_nc, use_instance, str(generator))
    e_state = None
    if encoder is not None:
        e_state = read_state_dict(encoder)
        nef, n_down_e, feat_num = infer_encoder_shape(e_state, str(encoder))
        if feat_num != cfg.feat_num:
            raise CheckpointError(
                f"{encoder}: the encoder outputs {feat_num} feature channels, the generator takes "
                f"{cfg.feat_num} (model.1.weight has {cfg.input_nc} inputs = label_nc {label_nc} + "
                f"edge {int(use_instance)} + features)")
        try:
            cfg = ModelConfig(**{**cfg.to_dict(), "nef": nef, "n_downsample_E": n_down_e})
        except ValueError as e:
            raise CheckpointError(encoder, f"the shapes imply an unusable encoder: {e}") from None
    with torch.device("meta"):
        try:
            check_state(build_generator(cfg), g_state, "generator")
        except CheckpointError as e:
            raise CheckpointError(f"{generator}: {e}") from None
        if e_state is not None:
            try:
                check_state(build_encoder(cfg), e_state, "encoder")
            except CheckpointError as e:
                raise CheckpointError(f"{encoder}: {e}") from None
    for path, state, what in ((generator, g_state, "generator"), (encoder, e_state, "encoder")):
        if state is not None:
            try:
                check_finite(state, what)
            except CheckpointError as e:
                raise CheckpointError(f"{path}: {e}") from None
    feats = None
    if features is not None:
        feats = read_official_features(features)
        for k, v in feats.items():
            if v.shape[1] != cfg.feat_num:
                raise CheckpointError(f"{features}: label {k} has {v.shape[1]}-dim centres, the "
                                      f"model uses {cfg.feat_num} feature channels")
    names = CITYSCAPES_NAMES if label_nc == 35 else None
    return Checkpoint(cfg, g_state, e_state, feats, names)
