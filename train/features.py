"""The per-class feature dictionary (pix2pixHD's encode_features step), and `p2phd-infer features`.

For every training photo, E (with its instance-wise mean) gives each instance one feature vector;
the instance is recorded under its label together with its area ratio `pixels / (H*W // 32)`.
Instances with ratio <= 0.5 are dropped (too small to say what the class looks like), and the
survivors of each label are clustered with k-means, k = min(N, clusters), random_state 0,
n_init 10. The centres, float32 [k, F] per label, go into model.pt; labels with no surviving
instance are absent (they get zero features at inference).

Choices, against the official code:
  - label of an instance: `id // 1000` for ids >= 1000, else the id itself (label_from_instance),
    as the official code does; instances of every label are kept (the official code breaks on a
    label >= label_nc).
  - resolution: photos are loaded as the trainer loads them (same resize mode and load size), and
    E runs exactly as the trainer runs it for G: at G1's resolution for a local model, its output
    upsampled nearest and averaged again per full-resolution instance
    (p2phd_infer.instance_features.encode_photo; the official code has no local-stage rule).
    The area ratio is taken at the loaded (full) resolution, as the official code takes it on the
    instance map it feeds E's output with.
  - the official code reads each instance's feature at one of its pixels of the instance-mean map;
    every pixel carries the same mean, so this reads the mean directly.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from p2phd_infer.checkpoint import load_checkpoint
from p2phd_infer.config import ModelConfig
from p2phd_infer.engines import resolve_device
from p2phd_infer.errors import CheckpointError
from p2phd_infer.instance_features import encode_photo, encoder_multiple, instance_table
from p2phd_infer.labels import label_from_instance
from p2phd_infer.networks import Encoder

BLOCK_NUM = 32          # the official area unit: H*W // 32 pixels
MIN_AREA_RATIO = 0.5    # instances with ratio <= this are dropped
N_INIT = 10             # k-means restarts (scikit-learn's classic default, as the official run)


def area_ratio(pixels: torch.Tensor | np.ndarray, height: int, width: int):
    return pixels / float(height * width // BLOCK_NUM)


def instance_records(encoder: Encoder, cfg: ModelConfig, image: torch.Tensor, inst: torch.Tensor
                     ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A batch of photos -> per sample (labels int64 [N], features float64 [N,F], area ratios [N]),
    one row per instance id present in the sample."""
    feat = encode_photo(encoder, cfg, image, inst)
    H, W = inst.shape[-2:]
    out = []
    for b in range(inst.shape[0]):
        ids, means, counts = instance_table(feat[b], inst[b])
        out.append((label_from_instance(ids).cpu().numpy(), means.double().cpu().numpy(),
                    area_ratio(counts.double(), H, W).cpu().numpy()))
    return out


def keep_mask(ratios: np.ndarray) -> np.ndarray:
    return ratios > MIN_AREA_RATIO


def cluster_features(per_label: dict[int, np.ndarray], clusters: int = 10
                     ) -> dict[int, torch.Tensor]:
    """{label: float64 [N,F] kept instance features} -> {label: float32 [k,F] k-means centres}."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    out = {}
    for label in sorted(per_label):
        feats = per_label[label]
        if feats.shape[0] == 0:
            continue
        k = min(feats.shape[0], clusters)
        with warnings.catch_warnings():
            # Fewer distinct points than k (identical instances) is expected, not a fault.
            warnings.simplefilter("ignore", ConvergenceWarning)
            km = KMeans(n_clusters=k, random_state=0, n_init=N_INIT).fit(feats)
        out[int(label)] = torch.from_numpy(km.cluster_centers_.astype(np.float32))
    return out


def prefetch(dataset, workers: int):
    """Items of `dataset` in order, decoded `workers` ahead in threads (Pillow and zlib release the
    GIL); errors surface as they are, naming their file."""
    if workers <= 0:
        yield from (dataset[i] for i in range(len(dataset)))
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(workers) as pool:
        pending = deque()
        for i in range(len(dataset)):
            pending.append(pool.submit(dataset.__getitem__, i))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def collect_features(encoder: Encoder, cfg: ModelConfig, dataset, device: torch.device,
                     workers: int = 0) -> tuple[dict[int, np.ndarray], int, int]:
    """Run E over every sample -> ({label: kept features [N,F]}, instances seen, instances kept)."""
    rows: dict[int, list[np.ndarray]] = {}
    seen = kept = 0
    with torch.inference_mode():
        for item in tqdm(prefetch(dataset, workers), total=len(dataset), unit="photo",
                         desc="encode features"):
            image = item["image"][None].to(device)
            inst = item["inst"][None].to(device)
            for labels, feats, ratios in instance_records(encoder, cfg, image, inst):
                keep = keep_mask(ratios)
                seen += len(ratios)
                kept += int(keep.sum())
                for label in np.unique(labels[keep]):
                    rows.setdefault(int(label), []).append(feats[keep & (labels == label)])
    return {k: np.concatenate(v) for k, v in rows.items()}, seen, kept


def training_load_options(ckpt, resize_or_crop: str | None, load_size: int | None
                          ) -> tuple[str, int]:
    """How to load photos: as given, else as the checkpoint says it was trained (train_info),
    else the trainer's defaults (as the official encode_features parses the training options)."""
    from .trainer import TrainOptions
    info = ckpt.extra.get("train_info") or {}
    if resize_or_crop is None:
        resize_or_crop = info.get("resize_or_crop", TrainOptions.resize_or_crop)
    if load_size is None:
        load_size = int(info.get("load_size", TrainOptions.load_size))
    # Trained on random crops: the dictionary takes whole photos at the crops' scale (a crop
    # would cut instances and change their area ratios at random).
    resize_or_crop = {"scale_width_and_crop": "scale_width", "crop": "none"}.get(
        resize_or_crop, resize_or_crop)
    return resize_or_crop, load_size


def build_dictionary(model: str | Path, data: str | Path, clusters: int = 10,
                     device: str | None = None, mode: str = "pix2pixhd", phase: str = "train",
                     resize_or_crop: str | None = None, load_size: int | None = None,
                     workers: int = 0) -> tuple[dict[int, torch.Tensor], int, int]:
    """The dictionary for the model.pt at `model` from the dataset at `data` (not saved)."""
    from .datasets import PairedDataset
    ckpt = load_checkpoint(model)
    cfg = ckpt.config
    resize_or_crop, load_size = training_load_options(ckpt, resize_or_crop, load_size)
    encoder = ckpt.build_encoder()
    if encoder is None:
        raise CheckpointError(model, f"has no encoder (feat_num {cfg.feat_num}); train or import "
                              f"one with features first")
    dev = resolve_device(device)
    encoder = encoder.to(dev).eval()
    multiple = max(cfg.stride, encoder_multiple(cfg))
    # label_nc 0 models train on RGB inputs: the photos are then in <phase>_B/ (train/datasets.py).
    dataset = PairedDataset(data, mode=mode, phase=phase, need_inst=True,
                            resize_or_crop=resize_or_crop, load_size=load_size, multiple=multiple,
                            flip=False, label_nc=0 if cfg.input_kind == "rgb" else None)
    dataset.check_files(cfg.encoder_min_size, workers=max(1, workers))  # every fault, up front
    per_label, seen, kept = collect_features(encoder, cfg, dataset, dev, workers)
    return cluster_features(per_label, clusters), seen, kept
