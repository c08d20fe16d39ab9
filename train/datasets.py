"""Paired training data: label ids, instance ids and photos, in the pix2pixHD layout
(`<phase>_label/`, `<phase>_inst/`, `<phase>_img/`, same stem) or the Cityscapes layout
(`gtFine/<split>/<city>/*_gtFine_labelIds.png`, `*_gtFine_instanceIds.png`,
`leftImg8bit/<split>/<city>/*_leftImg8bit.png`).

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

from p2phd_infer.errors import Error, InputError
from p2phd_infer.image_io import read_id_png, read_rgb

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
class Sample:
    stem: str
    label: Path
    inst: Path | None
    image: Path


def _pix2pixhd_pairs(root: Path, phase: str, need_inst: bool, faults: list[str]) -> list[Sample]:
    label_dir, inst_dir, img_dir = (root / f"{phase}_{s}" for s in ("label", "inst", "img"))
    for d in (label_dir, img_dir) + ((inst_dir,) if need_inst else ()):
        if not d.is_dir():
            faults.append(f"{d}: folder missing")
    if faults:
        return []
    images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTS}
    # An instance map pairs by its full name, as `run` pairs it (p2phd_infer/plan.py): a.PNG
    # with a.PNG, never with a.png, so training and inference find the same pairs.
    insts = ({p.name: p for p in sorted(inst_dir.iterdir()) if p.suffix.lower() == ".png"}
             if need_inst else {})
    samples = []
    labels = [p for p in sorted(label_dir.iterdir()) if p.suffix.lower() == ".png"]
    if not labels:
        faults.append(f"{label_dir}: no label maps (*.png)")
    for lp in labels:
        img = images.pop(lp.stem, None)
        inst = insts.pop(lp.name, None) if need_inst else None
        if img is None:
            faults.append(f"{lp}: no photo {img_dir / lp.stem}.png/.jpg")
        if need_inst and inst is None:
            faults.append(f"{lp}: no instance map {inst_dir / lp.name}")
        if img is not None and (inst is not None or not need_inst):
            samples.append(Sample(lp.stem, lp, inst, img))
    faults += [f"{p}: photo without a label map in {label_dir}" for p in images.values()]
    faults += [f"{p}: instance map without a label map in {label_dir}" for p in insts.values()]
    return samples


def _cityscapes_pairs(root: Path, split: str, need_inst: bool, faults: list[str]) -> list[Sample]:
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
            samples.append(Sample(stem, lp, inst if need_inst else None, img))
    faults += [f"{p}: photo without a label map" for p in images.values()]
    return samples


def _check_sizes(samples: list[Sample], faults: list[str]) -> list[Sample]:
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
                 need_inst: bool = True) -> list[Sample]:
    """All pairs of a dataset, or a DatasetError listing every missing file and size mismatch."""
    root = Path(root)
    faults: list[str] = []
    if not root.is_dir():
        raise DatasetError(root, [f"{root}: no such folder"])
    if mode == "pix2pixhd":
        samples = _pix2pixhd_pairs(root, phase, need_inst, faults)
    elif mode == "cityscapes":
        samples = _cityscapes_pairs(root, phase, need_inst, faults)
    else:
        raise ValueError(f"unknown dataset mode {mode!r} (pix2pixhd or cityscapes)")
    samples = _check_sizes(samples, faults)
    if faults:
        raise DatasetError(root, faults)
    return samples


def target_size(width: int, height: int, resize_or_crop: str, load_size: int, multiple: int
                ) -> tuple[int, int]:
    """(W, H) a sample is resized to: `scale_width` sets the width to load_size keeping the aspect;
    then both sides go to the nearest multiple of the generator's stride (as the official
    make_power_2), so the skip sums of G line up."""
    if resize_or_crop == "scale_width":
        height = round(height * load_size / width)
        width = load_size
    elif resize_or_crop != "none":
        raise ValueError(f"unknown resize mode {resize_or_crop!r} (none or scale_width)")
    w = max(multiple, int(round(width / multiple)) * multiple)
    h = max(multiple, int(round(height / multiple)) * multiple)
    return w, h


def flip_for(seed: int, epoch: int, index: int) -> bool:
    """Stateless coin per (seed, epoch, sample): any worker count and any resume see the same flips."""
    return bool(np.random.default_rng([seed, epoch, index]).random() < 0.5)


class PairedDataset(torch.utils.data.Dataset):
    """Items: {'label': int32 [1,H,W], 'inst': int32 [1,H,W] (zeros without instances),
    'image': float32 [3,H,W] in [-1,1], 'index': int}. Labels and instances are resized nearest,
    photos bicubic."""

    def __init__(self, root: str | os.PathLike, mode: str = "pix2pixhd", phase: str = "train",
                 need_inst: bool = True, resize_or_crop: str = "none", load_size: int = 1024,
                 multiple: int = 32, flip: bool = True, seed: int = 0, label_nc: int | None = None):
        self.root = Path(root)
        self.samples = find_samples(root, mode, phase, need_inst)
        self.resize_or_crop, self.load_size, self.multiple = resize_or_crop, load_size, multiple
        self.flip, self.seed, self.epoch = flip, seed, 0
        self.label_nc = label_nc
        target_size(64, 32, resize_or_crop, load_size, multiple)   # validate the mode now

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

        def faults_of(s: Sample) -> list[str]:
            faults: list[str] = []
            label = read(s.label, read_id_png, faults)
            if label is not None:
                fault = self._label_fault(label)
                if fault is not None:
                    faults.append(f"{s.label}: {fault}")
                H, W = label.shape
                w, h = target_size(W, H, self.resize_or_crop, self.load_size, self.multiple)
                if w < min_size or h < min_size:
                    faults.append(f"{s.label}: loads at {w}x{h} ({W}x{H} with --resize-or-crop "
                                  f"{self.resize_or_crop}, --load-size {self.load_size}), below "
                                  f"the network's minimum {min_size}x{min_size}")
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
        label = read_id_png(s.label)
        H, W = label.shape
        w, h = target_size(W, H, self.resize_or_crop, self.load_size, self.multiple)
        image = read_rgb(s.image)
        inst = read_id_png(s.inst) if s.inst is not None else np.zeros_like(label)
        fault = self._label_fault(label)
        if fault is not None:
            raise InputError(s.label, fault)
        if (w, h) != (W, H):
            label = _resize_ids(label, w, h)
            inst = _resize_ids(inst, w, h)
            image = np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))
        if self.flip and flip_for(self.seed, self.epoch, index):
            label, inst, image = label[:, ::-1], inst[:, ::-1], image[:, ::-1]
        img = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 127.5 - 1.0
        return {"label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.int32))[None],
                "inst": torch.from_numpy(np.ascontiguousarray(inst, dtype=np.int32))[None],
                "image": img, "index": index}


def _resize_ids(ids: np.ndarray, w: int, h: int) -> np.ndarray:
    """Nearest neighbour by index arithmetic (Pillow's "I" mode would do, but this keeps the int32
    path obvious): the source pixel whose centre is nearest each target pixel's centre."""
    H, W = ids.shape
    ys = np.minimum(((np.arange(h) + 0.5) * H / h).astype(np.int64), H - 1)
    xs = np.minimum(((np.arange(w) + 0.5) * W / w).astype(np.int64), W - 1)
    return ids[ys[:, None], xs[None, :]]
