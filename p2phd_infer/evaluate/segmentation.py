"""The paper's segmentation score: a segmenter run on each image, its prediction compared with the
label map the image was made from (pixel accuracy, mean class accuracy, mean IoU, per class).

A segmenter is a TorchScript or ONNX file (RGB in, class logits [B,C,h,w] out), or torchvision's
DeepLabV3 from a state dict (`arch` deeplabv3_resnet50 / _resnet101 / _mobilenet_v3_large).
How it wants its input comes from a sidecar `<FILE>.json` or the CLI flags:

  {"classes": "cityscapes" | "labels" | ["road", "sidewalk", ...],
   "size": [W, H] or null, "mean": [r, g, b], "std": [r, g, b]}

The input is RGB scaled to [0,1], then (x - mean) / std; `size` resizes it (bilinear) for the
segmenter, and the logits are resized back to the label map's size before the argmax.

Classes: "cityscapes" = the 19 Cityscapes evaluation classes in trainId order (the label maps'
labelIds go through labels.CITYSCAPES_TRAIN_IDS; every other id is 255, ignored); "labels" =
output channel k is label id k of the model's label table; a list of names = output channel k is
the label of that name (model's label names, else Cityscapes'); label ids not in the list are
ignored.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, MissingDependency, OptionError
from ..labels import CITYSCAPES_EVAL_NAMES, CITYSCAPES_NAMES, CITYSCAPES_TRAIN_IDS, IGNORE_ID
from .weights import read_state_dict

ARCHS = ("auto", "torchscript", "onnx", "deeplabv3_resnet50", "deeplabv3_resnet101",
         "deeplabv3_mobilenet_v3_large")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIDECAR_KEYS = {"classes", "size", "mean", "std"}


@dataclass
class Classes:
    """Which label id each output channel is: names[k] for channel k; `lut` maps label ids to
    channel indices (IGNORE_ID where a label is not scored)."""
    kind: str                      # "cityscapes", "labels" or "names"
    names: list[str]
    lut: np.ndarray                # int64 [max label id + 1] -> channel or IGNORE_ID

    def targets(self, label: np.ndarray) -> np.ndarray:
        """int [H,W] label ids -> int64 [H,W] channel indices, IGNORE_ID for unscored ids."""
        label = np.asarray(label, np.int64)
        out = np.full(label.shape, IGNORE_ID, np.int64)
        ok = (label >= 0) & (label < len(self.lut))
        out[ok] = self.lut[label[ok]]
        return out


def make_classes(spec, label_names: dict[int, str] | None, label_nc: int | None,
                 n_out: int, where: str) -> Classes:
    """spec: "cityscapes", "labels", a list of names, or None (guess from the output count).
    InputError naming `where` when the segmenter's classes do not match the label table."""
    table = dict(label_names) if label_names else dict(CITYSCAPES_NAMES)
    if spec is None:
        if n_out == len(CITYSCAPES_EVAL_NAMES):
            spec = "cityscapes"
        elif label_nc is not None and n_out == label_nc:
            spec = "labels"
        else:
            raise InputError(where, f"the segmenter outputs {n_out} classes, which is neither the "
                                    f"19 Cityscapes evaluation classes nor the label table's "
                                    f"{label_nc if label_nc is not None else 'unknown count of'} "
                                    f"labels: say which in its sidecar JSON or with "
                                    f"--segmenter-classes")
    if spec == "cityscapes":
        if n_out != len(CITYSCAPES_EVAL_NAMES):
            raise InputError(where, f"the segmenter outputs {n_out} classes; the Cityscapes "
                                    f"evaluation table has 19 (trainIds 0..18)")
        lut = np.full(max(CITYSCAPES_NAMES) + 1, IGNORE_ID, np.int64)
        for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
            lut[label_id] = train_id
        return Classes("cityscapes", list(CITYSCAPES_EVAL_NAMES), lut)
    if spec == "labels":
        if label_nc is None:
            raise InputError(where, "classes 'labels' need the model's label count: give --engine "
                                    "model.pt")
        if n_out != label_nc:
            raise InputError(where, f"the segmenter outputs {n_out} classes; the model's label "
                                    f"table has {label_nc} (label ids 0..{label_nc - 1})")
        names = [table.get(i, str(i)) for i in range(label_nc)]
        return Classes("labels", names, np.arange(label_nc, dtype=np.int64))
    if not isinstance(spec, (list, tuple)) or not all(isinstance(s, str) for s in spec):
        raise InputError(where, f"classes must be 'cityscapes', 'labels' or a list of label "
                                f"names, not {spec!r}")
    if len(spec) != n_out:
        raise InputError(where, f"the segmenter outputs {n_out} classes; its class list names "
                                f"{len(spec)}")
    by_name = {n: i for i, n in table.items()}
    by_name.update({n.replace(" ", "_"): i for i, n in table.items()})
    ids = []
    for name in spec:
        if name not in by_name:
            raise InputError(where, f"class {name!r} is not in the label table (known: "
                                    f"{', '.join(sorted(set(table.values())))})")
        ids.append(by_name[name])
    if len(set(ids)) != len(ids):
        raise InputError(where, "a label is named twice in the class list")
    lut = np.full(max(ids) + 1, IGNORE_ID, np.int64)
    for k, i in enumerate(ids):
        lut[i] = k
    return Classes("names", [table[i] for i in ids], lut)


def _parse_size(text) -> tuple[int, int] | None:
    if text is None:
        return None
    if isinstance(text, str):
        try:
            w, h = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise OptionError("--segmenter-size", f"{text!r}: expected WxH, e.g. 2048x1024") \
                from None
    else:
        if not (isinstance(text, (list, tuple)) and len(text) == 2):
            raise ValueError(f"size {text!r}: expected [W, H]")
        w, h = text
    if not (isinstance(w, int) and isinstance(h, int) and 8 <= w <= 8192 and 8 <= h <= 8192):
        raise OptionError("--segmenter-size", f"{text!r}: sides 8..8192")
    return w, h


def _triple(value, what: str) -> tuple[float, float, float]:
    if isinstance(value, str):
        value = value.split(",")
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise OptionError(what, f"{value!r}: expected three numbers r,g,b") from None
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise OptionError(what, f"{value!r}: expected three finite numbers r,g,b")
    if what.endswith("std") and min(out) <= 0:
        raise OptionError(what, f"{value!r}: must be positive")
    return out


def read_sidecar(path: Path) -> dict:
    side = path.with_name(path.name + ".json")
    if not side.is_file():
        return {}
    try:
        doc = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(side, f"not a readable JSON sidecar ({e})") from None
    if not isinstance(doc, dict):
        raise InputError(side, "expected a JSON object {classes, size, mean, std}")
    unknown = set(doc) - SIDECAR_KEYS
    if unknown:
        raise InputError(side, f"unknown fields {sorted(unknown)} (known: "
                               f"{', '.join(sorted(SIDECAR_KEYS))})")
    return doc


@dataclass
class Segmenter:
    """A segmentation network: uint8 RGB [H,W,3] -> int64 [H,W] class channel indices."""
    path: Path
    arch: str
    run: object                                   # float [1,3,h,w] -> logits [1,C,h',w']
    n_out: int
    size: tuple[int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    classes: Classes | None = None
    extra: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"file": str(self.path), "arch": self.arch, "classes": self.n_out,
                "class_kind": self.classes.kind if self.classes else None,
                "input_size": list(self.size) if self.size else None,
                "mean": list(self.mean), "std": list(self.std)}

    @torch.inference_mode()
    def predict(self, rgb: np.ndarray) -> np.ndarray:
        H, W = rgb.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
        x = (x - torch.tensor(self.mean).view(1, 3, 1, 1)) / torch.tensor(self.std).view(1, 3, 1, 1)
        if self.size is not None and (W, H) != self.size:
            x = torch.nn.functional.interpolate(x, size=(self.size[1], self.size[0]),
                                                mode="bilinear", align_corners=False)
        logits = self.run(x)
        if logits.dim() != 4 or logits.shape[0] != 1 or logits.shape[1] != self.n_out:
            raise InputError(self.path, f"the segmenter returned shape {tuple(logits.shape)}; "
                                        f"expected logits [1, {self.n_out}, h, w]")
        if logits.shape[-2:] != (H, W):
            logits = torch.nn.functional.interpolate(logits.float(), size=(H, W),
                                                     mode="bilinear", align_corners=False)
        return logits.argmax(1)[0].numpy().astype(np.int64)


def _torchscript(path: Path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # torch.jit's deprecation notice
            module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as e:  # noqa: BLE001 - any unreadable archive is this one fault
        raise InputError(path, f"not a TorchScript file ({e.__class__.__name__}); a torchvision "
                               f"DeepLabV3 state dict takes --segmenter-arch "
                               f"deeplabv3_resnet50 (or _resnet101, _mobilenet_v3_large)") from None

    def run(x):
        out = module(x)
        if isinstance(out, dict):
            out = out["out"]
        return out
    return run


def _onnx(path: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependency("--segmenter", "an ONNX segmenter needs onnxruntime: pip install "
                                               "onnxruntime") from None
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        raise InputError(path, f"not an ONNX model onnxruntime can open ({str(e)[:200]})") \
            from None
    name = sess.get_inputs()[0].name

    def run(x):
        return torch.from_numpy(sess.run(None, {name: x.numpy()})[0])
    return run


def _deeplab(path: Path, arch: str):
    from torchvision.models import segmentation
    sd = read_state_dict(path, f"{arch} weights")
    head = sd.get("classifier.4.weight")
    if head is None:
        raise InputError(path, f"not a {arch} state dict (no classifier.4.weight)")
    build = getattr(segmentation, arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build(weights=None, weights_backbone=None, num_classes=int(head.shape[0]),
                    aux_loss=any(k.startswith("aux_classifier.") for k in sd))
    try:
        net.load_state_dict(sd)
    except RuntimeError as e:
        raise InputError(path, f"does not fit {arch}: {str(e).splitlines()[0][:200]}") from None
    net.eval()
    return lambda x: net(x)["out"]


def open_segmenter(path: str | Path, arch: str = "auto", *, classes=None, size=None, mean=None,
                   std=None, label_names: dict[int, str] | None = None,
                   label_nc: int | None = None) -> Segmenter:
    """The segmenter in FILE; flags (classes/size/mean/std) override its sidecar JSON."""
    path = Path(path)
    if arch not in ARCHS:
        raise OptionError("--segmenter-arch", f"{arch!r}: one of {', '.join(ARCHS)}")
    if not path.is_file():
        raise InputError(path, "no such segmenter file" if not path.exists() else "not a file")
    side = read_sidecar(path)
    where = str(path.with_name(path.name + ".json")) if side else str(path)
    if arch == "auto":
        arch = "onnx" if path.suffix.lower() == ".onnx" else "torchscript"
    run = _onnx(path) if arch == "onnx" else _torchscript(path) if arch == "torchscript" \
        else _deeplab(path, arch)
    try:
        size = _parse_size(size if size is not None else side.get("size"))
    except ValueError as e:
        raise InputError(where, str(e)) from None
    deeplab = arch.startswith("deeplabv3")
    mean = _triple(mean if mean is not None else side.get("mean", IMAGENET_MEAN if deeplab
                                                              else (0.0, 0.0, 0.0)), "--segmenter-mean")
    std = _triple(std if std is not None else side.get("std", IMAGENET_STD if deeplab
                                                           else (1.0, 1.0, 1.0)), "--segmenter-std")
    seg = Segmenter(path, arch, run, 0, size, mean, std)
    probe = (size[1], size[0]) if size is not None else (64, 128)
    try:
        with torch.inference_mode():
            out = run(torch.zeros(1, 3, *probe))
    except Exception as e:  # noqa: BLE001 - a segmenter that cannot run is the file's fault
        raise InputError(path, f"the segmenter fails on a {probe[1]}x{probe[0]} RGB input "
                               f"({e.__class__.__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                               f"give its input size with --segmenter-size WxH") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        raise InputError(path, f"the segmenter must return logits [B, C, h, w], got "
                               f"{getattr(out, 'shape', type(out).__name__)}")
    seg.n_out = int(out.shape[1])
    spec = classes if classes is not None else side.get("classes")
    if isinstance(spec, str) and spec not in ("cityscapes", "labels"):
        spec = [s.strip() for s in spec.split(",")]
    seg.classes = make_classes(spec, label_names, label_nc, seg.n_out, where)
    return seg


# --- scores -----------------------------------------------------------------------------------


def confusion(target: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """int64 [n, n]: rows are the label map's classes, columns the prediction's; pixels whose
    target is IGNORE_ID (or out of range) are left out."""
    if target.shape != pred.shape:
        raise ValueError(f"target {target.shape} and prediction {pred.shape} differ")
    ok = (target >= 0) & (target < n)
    return np.bincount(n * target[ok] + pred[ok], minlength=n * n).reshape(n, n)


def scores(hist: np.ndarray, names: list[str]) -> dict:
    """The paper's table from a confusion matrix: pixel accuracy, mean class accuracy and mean
    IoU (means over the classes present in the label maps or predicted), and per class."""
    hist = hist.astype(np.float64)
    tp = np.diag(hist)
    gt = hist.sum(1)
    pred = hist.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = tp / gt                           # nan where a class is absent from the labels
        iou = tp / (gt + pred - tp)             # nan where absent from both
    total = hist.sum()
    per_class = {name: {"iou": _num(iou[k]), "accuracy": _num(acc[k]), "pixels": int(gt[k])}
                 for k, name in enumerate(names)}
    return {"pixel_accuracy": _num(tp.sum() / total) if total else None,
            "mean_class_accuracy": _num(np.nanmean(acc)) if np.isfinite(acc).any() else None,
            "mean_iou": _num(np.nanmean(iou)) if np.isfinite(iou).any() else None,
            "scored_pixels": int(total), "classes_present": int((gt > 0).sum()),
            "per_class": per_class}


def _num(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def segmentation_score(segmenter: Segmenter, pairs, progress: str | None = None) -> dict:
    """pairs: (name, rgb uint8 [H,W,3] or a callable giving it, label int [H,W]) -> scores()."""
    from tqdm import tqdm
    names = segmenter.classes.names
    n = len(names)
    hist = np.zeros((n, n), np.int64)
    pairs = list(pairs)
    for name, rgb, label in tqdm(pairs, desc=progress, unit="img", disable=progress is None,
                                 leave=False):
        rgb = rgb() if callable(rgb) else rgb
        if rgb.shape[:2] != label.shape:
            raise InputError(name, f"image is {rgb.shape[1]}x{rgb.shape[0]}, its label map "
                                   f"{label.shape[1]}x{label.shape[0]}")
        hist += confusion(segmenter.classes.targets(label), segmenter.predict(rgb), n)
    out = scores(hist, names)
    out["images"] = len(pairs)
    return out
