"""Closeness to a reference (PSNR, SSIM, max level difference), flicker between frames, and
diversity across styles (mean pairwise LPIPS).

All on uint8 RGB [H,W,3] images: PSNR is synthesizer.psnr with peak 255, SSIM torchmetrics'
(Gaussian window 11, sigma 1.5, data range 255, the values of Wang et al. 2004), LPIPS the lpips
package (Zhang et al. 2018, AlexNet) with weights from a file or its own and torch's cache.
"""
from __future__ import annotations

import itertools
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, MissingDependency
from ..synthesizer import psnr, psnr_of_mse
from .weights import read_state_dict


def _t(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].double()


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from torchmetrics.functional.image import structural_similarity_index_measure
    return float(structural_similarity_index_measure(_t(a), _t(b), data_range=255.0))


def against(pairs, progress: str | None = None) -> dict:
    """pairs: (name, image, reference) uint8 [H,W,3] (or callables giving them) -> per image and
    overall PSNR (dB, peak 255; overall from the pooled squared error), SSIM (mean) and the
    largest level difference. InputError for a size mismatch."""
    from tqdm import tqdm
    rows, sq, count, worst = [], 0.0, 0, 0
    for name, img, ref in tqdm(list(pairs), desc=progress, unit="img", disable=progress is None,
                               leave=False):
        img = img() if callable(img) else img
        ref = ref() if callable(ref) else ref
        if img.shape != ref.shape:
            raise InputError(name, f"image is {img.shape[1]}x{img.shape[0]}, its reference "
                                   f"{ref.shape[1]}x{ref.shape[0]}")
        a, b = torch.from_numpy(img), torch.from_numpy(ref)
        diff = int((a.int() - b.int()).abs().max())
        rows.append({"name": name, "psnr_db": _db(psnr(a, b, peak=255.0)),
                     "ssim": ssim(img, ref), "max_diff": diff})
        sq += float(((a.double() - b.double()) ** 2).sum())
        count += a.numel()
        worst = max(worst, diff)
    if not rows:
        raise InputError("--against", "no image pairs to compare")
    mse = sq / count
    overall = {"psnr_db": _db(psnr_of_mse(mse, peak=255.0)),
               "ssim": float(np.mean([r["ssim"] for r in rows])), "max_diff": worst,
               "min_psnr_db": min((r["psnr_db"] for r in rows),
                                  key=lambda v: math.inf if v is None else v),
               "images": len(rows)}
    return {"overall": overall, "images": rows}


def _db(v: float) -> float | None:
    """JSON has no infinity: identical images are reported as null dB (and counted as such)."""
    return None if math.isinf(v) else round(v, 3)


def temporal(frames, progress: str | None = None) -> dict:
    """frames: (sequence, name, image, label, inst-or-None) in frame order within each sequence.
    Mean absolute change of the image's levels (0..255, over the 3 channels) between consecutive
    frames, over the pixels whose label (and instance) id did not change: 0 for a still scene,
    the flicker a video user sees otherwise."""
    total, pixels, pairs, seqs = 0.0, 0, 0, set()
    prev = None
    for seq, name, img, label, inst in frames:
        img = img() if callable(img) else img
        if img.shape[:2] != label.shape:
            raise InputError(name, f"image is {img.shape[1]}x{img.shape[0]}, its label map "
                                   f"{label.shape[1]}x{label.shape[0]}")
        if prev is not None and prev[0] == seq:
            _, p_img, p_label, p_inst = prev
            if p_img.shape != img.shape:
                raise InputError(name, f"frame is {img.shape[1]}x{img.shape[0]}, the previous "
                                       f"one {p_img.shape[1]}x{p_img.shape[0]}")
            same = label == p_label
            if inst is not None and p_inst is not None:
                same &= inst == p_inst
            n = int(same.sum())
            if n:
                d = np.abs(img.astype(np.int16) - p_img.astype(np.int16))[same]
                total += float(d.sum())
                pixels += n * 3
            pairs += 1
            seqs.add(seq)
        prev = (seq, img, label, inst)
    return {"mean_abs_change": (total / pixels) if pixels else None, "frame_pairs": pairs,
            "sequences": len(seqs), "static_pixels": pixels // 3}


# --- LPIPS ------------------------------------------------------------------------------------

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"      # torchvision's ImageNet AlexNet, in torch's cache


class Lpips:
    """LPIPS (AlexNet) from the lpips package. weights: a state dict of lpips.LPIPS(net='alex')
    (backbone and linear heads, e.g. `torch.save(lpips.LPIPS(net='alex').state_dict(), FILE)`);
    None: the package's own linear heads with torchvision's AlexNet from torch's cache."""

    def __init__(self, weights: str | Path | None = None):
        try:
            import lpips
        except ImportError:
            raise MissingDependency("--styles", "LPIPS needs the lpips package: pip install "
                                                "lpips") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # torchvision's notice about `pretrained`
            self.net = lpips.LPIPS(pretrained=weights is None, net="alex", pnet_rand=True,
                                   verbose=False)
        if weights is None:
            cached = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
            if not cached.is_file():
                raise MissingDependency("--lpips-weights",
                                        f"LPIPS needs AlexNet's ImageNet weights ({ALEXNET_FILE}), "
                                        f"not in torch's cache ({cached}): give --lpips-weights "
                                        f"FILE (a state dict of lpips.LPIPS(net='alex'))")
            self._load_backbone(read_state_dict(cached, "AlexNet weights"), cached)
            self.source = {"file": str(cached), "heads": "lpips package v0.1"}
        else:
            sd = read_state_dict(weights, "LPIPS weights")
            try:
                self.net.load_state_dict(sd)
            except RuntimeError as e:
                raise InputError(weights, f"not an lpips.LPIPS(net='alex') state dict "
                                          f"({str(e).splitlines()[0][:200]})") from None
            self.source = {"file": str(weights)}
        self.net.eval()

    def _load_backbone(self, sd: dict, path: Path) -> None:
        # lpips' slices keep torchvision's indices: net.sliceK.<i>.weight is features.<i>.weight.
        own = self.net.state_dict()
        for name in own:
            if name.startswith("net.slice"):
                _, _, index, kind = name.split(".")
                src = f"features.{index}.{kind}"
                if src not in sd:
                    raise InputError(path, f"no {src} in torchvision's AlexNet weights")
                own[name] = sd[src]
        self.net.load_state_dict(own)

    @torch.inference_mode()
    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        def f(x):
            return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None].float() \
                / 127.5 - 1.0
        return float(self.net(f(a), f(b)))


def random_lpips_weights(path: str | Path, seed: int = 0) -> Path:
    """Save a randomly initialised lpips.LPIPS(net='alex') (linear heads made non-negative, as
    trained ones are) for tests and offline demos: it ranks differences but its values are not
    LPIPS as published; reports name the file."""
    import io
    import lpips
    from ..files import write_atomic
    with warnings.catch_warnings(), torch.random.fork_rng():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        net = lpips.LPIPS(pretrained=False, net="alex", pnet_rand=True, verbose=False)
        for lin in net.lins:
            lin.model[-1].weight.data.abs_()
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    write_atomic(path, buf.getvalue())
    return Path(path)


def diversity(lpips: Lpips, groups, progress: str | None = None) -> dict:
    """groups: (name, [N uint8 images of one label map in N styles]) -> the mean LPIPS over all
    pairs of styles of a map, averaged over the maps (0: every style looks the same)."""
    from tqdm import tqdm
    per_map, pairs = [], 0
    for name, images in tqdm(list(groups), desc=progress, unit="map", disable=progress is None,
                             leave=False):
        d = [lpips(a, b) for a, b in itertools.combinations(images, 2)]
        if d:
            per_map.append({"name": name, "lpips": float(np.mean(d))})
            pairs += len(d)
    if not per_map:
        raise InputError("--styles", "diversity needs at least 2 styles per label map")
    return {"mean_lpips": float(np.mean([m["lpips"] for m in per_map])), "pairs": pairs,
            "maps": per_map, "net": "alex", "weights": lpips.source}
