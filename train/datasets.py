"""Paired training data: label ids, instance ids and photos, in the pix2pixHD layout
(`<phase>_label/`, `<phase>_inst/`, `<phase>_img/`, same stem) or the Cityscapes layout
(`gtFine/<split>/<city>/*_gtFine_labelIds.png`, `*_gtFine_instanceIds.png`,
`leftImg8bit/<split>/<city>/*_leftImg8bit.png`). With label_nc 0 (the official RGB-input mode) the
input is an image, not a label map, and the folders are the official ones for it: `<phase>_A/`
(input images, .png/.jpg) and `<phase>_B/` (photos), `<phase>_inst/` as before.

Every pair is checked before training starts (files present, sizes equal, readable headers) and all
faults are reported together in one error, so a 3000-image dataset is fixed in one pass. Ids stay
int32 from the PNG to the batch: Cityscapes instance ids reach 33xxx (fp16 merges them, int16
wraps them negative).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from p2phd_infer.errors import Error, InputError, OptionError
from p2phd_infer.image_io import read_id_png, read_rgb
from p2phd_infer.synthesizer import from_uint8

IMAGE_EXTS = (".png", ".jpg", ".jpeg")


class DatasetError(InputError):
    """One error that lists every fault found in a dataset, each line naming the file."""

    def __init__(self, root: str | os.PathLike, faults: list[str]):
        self.faults = faults
        head = f"{root}: {len(faults)} problem{'s' if len(faults) != 1 else ''} in the dataset"
        shown = faults[:50]
        more = [f"  ... and {len(faults) - 50} more"] if len(faults) > 50 else []
        Error.__init__(self, root, "\n".join([head[len(str(root)) + 2:]] +
                                             [f"  {f}" for f in shown] + more))


@dataclass(frozen=True)
class TrainingPair:
    """One training example's files: a label map (or RGB input), its instance map, its photo."""
    stem: str
    label: Path
    inst: Path | None
    image: Path


def _pix2pixhd_pairs(root: Path, phase: str, need_inst: bool, faults: list[str],
                     rgb_input: bool = False) -> list[TrainingPair]:
    names = ("A", "inst", "B") if rgb_input else ("label", "inst", "img")
    label_dir, inst_dir, img_dir = (root / f"{phase}_{s}" for s in names)
    label_exts = IMAGE_EXTS if rgb_input else (".png",)
    for d in (label_dir, img_dir) + ((inst_dir,) if need_inst else ()):
        if not d.is_dir():
            faults.append(f"{d}: folder missing")
    if faults:
        return []
    images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTS}
    # An instance map pairs by its full name, as `run` pairs it (p2phd_infer/plan.py): a.PNG
    # with a.PNG, never with a.png, so training and inference find the same pairs.
    # An RGB input may be a JPEG: its instance map pairs by stem (a.jpg with a.png).
    insts = ({(p.stem if rgb_input else p.name): p for p in sorted(inst_dir.iterdir())
              if p.suffix.lower() == ".png"} if need_inst else {})
    samples = []
    labels = [p for p in sorted(label_dir.iterdir()) if p.suffix.lower() in label_exts]
    if not labels:
        faults.append(f"{label_dir}: no input images (*.png, *.jpg)" if rgb_input
                      else f"{label_dir}: no label maps (*.png)")
    for lp in labels:
        img = images.pop(lp.stem, None)
        inst = insts.pop(lp.stem if rgb_input else lp.name, None) if need_inst else None
        if img is None:
            faults.append(f"{lp}: no photo {img_dir / lp.stem}.png/.jpg")
        if need_inst and inst is None:
            inst_name = lp.stem + ".png" if rgb_input else lp.name
            faults.append(f"{lp}: no instance map {inst_dir / inst_name}")
        if img is not None and (inst is not None or not need_inst):
            samples.append(TrainingPair(lp.stem, lp, inst, img))
    what = "an input image" if rgb_input else "a label map"
    faults += [f"{p}: photo without {what} in {label_dir}" for p in images.values()]
    faults += [f"{p}: instance map without {what} in {label_dir}" for p in insts.values()]
    return samples


def _cityscapes_pairs(root: Path, split: str, need_inst: bool, faults: list[str]) -> list[TrainingPair]:
    gt, photos = root / "gtFine" / split, root / "leftImg8bit" / split
    for d in (gt, photos):
        if not d.is_dir():
            faults.append(f"{d}: folder missing")
    if faults:
        return []
    images = {p.name[: -len("_leftImg8bit.png")]: p
              for p in sorted(photos.glob("*/*_leftImg8bit.png"))}
    samples = []
    labels = sorted(gt.glob("*/*_gtFine_labelIds.png"))
    if not labels:
        faults.append(f"{gt}: no */*_gtFine_labelIds.png files")
    for lp in labels:
        stem = lp.name[: -len("_gtFine_labelIds.png")]
        city = lp.parent.name
        img = images.pop(stem, None)
        inst = lp.with_name(f"{stem}_gtFine_instanceIds.png")
        if img is None:
            faults.append(f"{lp}: no photo {photos / city / stem}_leftImg8bit.png")
        if need_inst and not inst.is_file():
            faults.append(f"{lp}: no instance map {inst}")
        if img is not None and (inst.is_file() or not need_inst):
            samples.append(TrainingPair(stem, lp, inst if need_inst else None, img))
    faults += [f"{p}: photo without a label map" for p in images.values()]
    return samples


def _check_sizes(samples: list[TrainingPair], faults: list[str]) -> list[TrainingPair]:
    """Header reads only (no decode): every file of a pair must have the same width and height."""
    good = []
    for s in samples:
        sizes = {}
        for path in (s.label, s.inst, s.image):
            if path is None:
                continue
            try:
                with Image.open(path) as im:
                    sizes[path] = im.size
            except Exception as e:  # noqa: BLE001 - any unreadable header is a fault to list
                faults.append(f"{path}: not a readable image ({e.__class__.__name__})")
        if len(sizes) != (3 if s.inst is not None else 2):
            continue
        if len(set(sizes.values())) > 1:
            desc = ", ".join(f"{p.name} {w}x{h}" for p, (w, h) in sizes.items())
            faults.append(f"{s.label}: size mismatch ({desc})")
            continue
        good.append(s)
    return good


def find_samples(root: str | os.PathLike, mode: str = "pix2pixhd", phase: str = "train",
                 need_inst: bool = True, rgb_input: bool = False) -> list[TrainingPair]:
    """All pairs of a dataset, or a DatasetError listing every missing file and size mismatch.
    rgb_input (label_nc 0): the inputs are images in `<phase>_A/`, the photos in `<phase>_B/`."""
    root = Path(root)
    faults: list[str] = []
    if not root.is_dir():
        raise DatasetError(root, [f"{root}: no such folder"])
    if rgb_input and mode != "pix2pixhd":
        raise OptionError("--label-nc", f"0 (RGB input images) needs --dataset-mode pix2pixhd "
                                        f"({phase}_A/, {phase}_B/), not {mode}")
    if mode == "pix2pixhd":
        samples = _pix2pixhd_pairs(root, phase, need_inst, faults, rgb_input)
    elif mode == "cityscapes":
        samples = _cityscapes_pairs(root, phase, need_inst, faults)
    else:
        raise ValueError(f"unknown dataset mode {mode!r} (pix2pixhd or cityscapes)")
    samples = _check_sizes(samples, faults)
    if faults:
        raise DatasetError(root, faults)
    return samples


RESIZE_MODES = ("none", "scale_width", "scale_width_and_crop", "crop")


def target_size(width: int, height: int, resize_or_crop: str, load_size: int, multiple: int
                ) -> tuple[int, int]:
    """(W, H) a sample is resized to: `scale_width` sets the width to load_size keeping the aspect;
    then both sides go to the nearest multiple of the generator's stride (as the official
    make_power_2), so the skip sums of G line up.

    The crop modes resize as the official code does and leave the stride to the crop window
    (crop_size): `scale_width_and_crop` to width load_size and height int(load_size * H / W),
    `crop` not at all."""
    if resize_or_crop == "scale_width_and_crop":
        return load_size, max(1, int(load_size * height / width))
    if resize_or_crop == "crop":
        return width, height
    if resize_or_crop == "scale_width":
        height = round(height * load_size / width)
        width = load_size
    elif resize_or_crop != "none":
        raise ValueError(f"unknown resize mode {resize_or_crop!r} ({', '.join(RESIZE_MODES)})")
    w = max(multiple, int(round(width / multiple)) * multiple)
    h = max(multiple, int(round(height / multiple)) * multiple)
    return w, h


def crop_size(width: int, height: int, fine_size: int, multiple: int) -> tuple[int, int]:
    """(w, h) of the crop window in a (width, height) image: the official crop is a square of
    fine_size; a side of the image shorter than that is kept whole (the official code would pad
    it with black), floored to the stride."""
    return ((min(fine_size, width) // multiple) * multiple,
            (min(fine_size, height) // multiple) * multiple)


def flip_for(seed: int, epoch: int, index: int) -> bool:
    """Stateless coin per (seed, epoch, sample): any worker count and any resume see the same flips."""
    return bool(np.random.default_rng([seed, epoch, index]).random() < 0.5)


def crop_for(seed: int, epoch: int, index: int, free_x: int, free_y: int) -> tuple[int, int]:
    """Top-left corner (x, y) of the crop, uniform over the free room, a pure function of
    (seed, epoch, sample) like the flips (its own stream: the flips are the same with or without
    crops)."""
    rng = np.random.default_rng([seed, epoch, index, 1])
    return int(rng.integers(0, free_x + 1)), int(rng.integers(0, free_y + 1))


class PairedDataset(torch.utils.data.Dataset):
    """Items: {'label': int32 [1,H,W], 'inst': int32 [1,H,W] (zeros without instances),
    'image': float32 [3,H,W] in [-1,1], 'index': int}. Labels and instances are resized nearest,
    photos bicubic. With label_nc 0, 'label' is the input image, float32 [3,H,W] in [-1,1],
    resized bicubic as the photo is.

    Crop modes (`scale_width_and_crop`, `crop`): one window of crop_size, at crop_for's corner,
    cut from the label, instance map and photo alike (after the resize, before the flip, as the
    official code orders them)."""

    def __init__(self, root: str | os.PathLike, mode: str = "pix2pixhd", phase: str = "train",
                 need_inst: bool = True, resize_or_crop: str = "none", load_size: int = 1024,
                 multiple: int = 32, flip: bool = True, seed: int = 0, label_nc: int | None = None,
                 fine_size: int = 512):
        self.root = Path(root)
        self.rgb_input = label_nc == 0
        self.samples = find_samples(root, mode, phase, need_inst, self.rgb_input)
        self.resize_or_crop, self.load_size, self.multiple = resize_or_crop, load_size, multiple
        self.flip, self.seed, self.epoch = flip, seed, 0
        self.label_nc = label_nc
        self.crop = "crop" in resize_or_crop
        self.fine_size = fine_size
        target_size(64, 32, resize_or_crop, load_size, multiple)   # validate the mode now
        if self.crop and (fine_size < multiple or fine_size % multiple):
            raise OptionError("--fine-size", f"{fine_size} is not a multiple of the network's "
                                             f"stride {multiple} (crops must be)")

    def loaded_size(self, width: int, height: int) -> tuple[int, int]:
        """(W, H) of the item made from a (width, height) file."""
        w, h = target_size(width, height, self.resize_or_crop, self.load_size, self.multiple)
        return crop_size(w, h, self.fine_size, self.multiple) if self.crop else (w, h)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _label_fault(self, label: np.ndarray) -> str | None:
        if self.label_nc is not None and label.size and int(label.max()) >= self.label_nc:
            return f"label id {int(label.max())} >= label_nc {self.label_nc}"
        return None

    def check_files(self, min_size: int = 1, workers: int = 1, progress: bool = False) -> None:
        """Decode every file of every sample now (label and instance maps, photos), check the
        label ids against label_nc and the loaded size against the network's minimum: a
        DatasetError lists every fault at once, before the first step, instead of one crash per
        bad file mid-training. Costs one decode pass (one epoch of data loading)."""
        from concurrent.futures import ThreadPoolExecutor

        def read(path: Path, reader, faults: list[str]):
            try:
                return reader(path)
            except InputError as e:
                faults.append(str(e))
            except Exception as e:  # noqa: BLE001 - whatever a decoder raises is this file's fault
                faults.append(f"{path}: not readable ({e.__class__.__name__}: {e})")
            return None

        def faults_of(s: TrainingPair) -> list[str]:
            faults: list[str] = []
            label = read(s.label, read_rgb if self.rgb_input else read_id_png, faults)
            if label is not None:
                fault = None if self.rgb_input else self._label_fault(label)
                if fault is not None:
                    faults.append(f"{s.label}: {fault}")
                H, W = label.shape[:2]
                w, h = self.loaded_size(W, H)
                if w < min_size or h < min_size:
                    crop = f", --fine-size {self.fine_size}" if self.crop else ""
                    faults.append(f"{s.label}: loads at {w}x{h} ({W}x{H} with --resize-or-crop "
                                  f"{self.resize_or_crop}, --load-size {self.load_size}{crop}), "
                                  f"below the network's minimum {min_size}x{min_size}")
            for path, reader in ((s.inst, read_id_png), (s.image, read_rgb)):
                if path is not None:
                    read(path, reader, faults)
            return faults

        # Threads: PNG and JPEG decoding release the GIL.
        with ThreadPoolExecutor(max(1, workers)) as pool:
            results = pool.map(faults_of, self.samples)
            if progress:
                from tqdm import tqdm
                results = tqdm(results, total=len(self.samples), desc="check dataset",
                               unit="sample", leave=False)
            faults = [f for r in results for f in r]
        if faults:
            raise DatasetError(self.root, faults)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        s = self.samples[index]
        label = read_rgb(s.label) if self.rgb_input else read_id_png(s.label)
        H, W = label.shape[:2]
        w, h = target_size(W, H, self.resize_or_crop, self.load_size, self.multiple)
        image = read_rgb(s.image)
        inst = read_id_png(s.inst) if s.inst is not None else np.zeros((H, W), np.int32)
        fault = None if self.rgb_input else self._label_fault(label)
        if fault is not None:
            raise InputError(s.label, fault)
        if (w, h) != (W, H):
            label = _resize_rgb(label, w, h) if self.rgb_input else _resize_ids(label, w, h)
            inst = _resize_ids(inst, w, h)
            image = _resize_rgb(image, w, h)
        if self.crop:
            cw, ch = crop_size(w, h, self.fine_size, self.multiple)
            x0, y0 = crop_for(self.seed, self.epoch, index, w - cw, h - ch)
            window = (slice(y0, y0 + ch), slice(x0, x0 + cw))
            label, inst, image = label[window], inst[window], image[window]
        if self.flip and flip_for(self.seed, self.epoch, index):
            label, inst, image = label[:, ::-1], inst[:, ::-1], image[:, ::-1]
        img = _to_float(image)
        label_t = _to_float(label) if self.rgb_input else \
            torch.from_numpy(np.ascontiguousarray(label, dtype=np.int32))[None]
        return {"label": label_t,
                "inst": torch.from_numpy(np.ascontiguousarray(inst, dtype=np.int32))[None],
                "image": img, "index": index}


def _to_float(rgb: np.ndarray) -> torch.Tensor:
    """uint8 [H,W,3] -> float32 [3,H,W] in [-1,1]."""
    return from_uint8(torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1))


def _resize_rgb(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BICUBIC))


def _resize_ids(ids: np.ndarray, w: int, h: int) -> np.ndarray:
    """Nearest neighbour by index arithmetic (Pillow's "I" mode would do, but this keeps the int32
    path obvious): the source pixel whose centre is nearest each target pixel's centre."""
    H, W = ids.shape
    ys = np.minimum(((np.arange(h) + 0.5) * H / h).astype(np.int64), H - 1)
    xs = np.minimum(((np.arange(w) + 0.5) * W / w).astype(np.int64), W - 1)
    return ids[ys[:, None], xs[None, :]]
