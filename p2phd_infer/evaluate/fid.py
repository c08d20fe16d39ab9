"""FID and KID through torchmetrics, on the standard FID Inception network (torch-fidelity's
port of TensorFlow's 2015-12-05 Inception, the one every published FID uses).

Why torchmetrics: it is maintained (monthly releases), its FrechetInceptionDistance and
KernelInceptionDistance take any feature extractor and accumulate in float64, KID comes with its
subset size and standard deviation, and its FID Inception is torch-fidelity's, whose features
match the TensorFlow original. clean-fid's resizing is better than the Inception's built-in one,
so images are resized here the way clean-fid recommends before they reach the network (its own
package has had no release since 2022).

Weights come from a file: `--inception-weights FILE`, else torch's cache (where torch-fidelity
and torchmetrics keep them), else one download of torch-fidelity's file into that cache when the
machine is online. Every file is read with torch.load(weights_only=True): the library's own
loader unpickles without that guard, so it is only ever handed tensors re-serialised here.
"""
from __future__ import annotations

import hashlib
import io
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import InputError, MissingDependency, OptionError
from ..files import write_atomic
from .weights import read_state_dict

FID_SIZE = 299
FEATURES = 2048                 # the pool features every published FID uses
FEATURE_LAYERS = (64, 192, 768, 2048)
# torch-fidelity's file; its name carries the first 8 hex digits of its sha256 (torch.hub's rule).
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[1]
STANDARD_SHA256_PREFIX = "6726825d"
RESIZE = ("each channel resized to 299x299 in float32 with PIL's antialiased bicubic filter and "
          "clipped to 0..255 (clean-fid's 'clean' mode), then rounded to uint8, the type the FID "
          "Inception takes (its own resize is then the identity)")
DOWNLOAD_TIMEOUT_S = 20


def _import_library():
    try:
        import torch_fidelity  # noqa: F401  (torchmetrics' FID Inception lives there)
        import torchmetrics
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as e:
        raise MissingDependency("FID/KID", f"need torchmetrics and torch-fidelity ({e}): "
                                           f"pip install torchmetrics torch-fidelity") from None
    return torchmetrics, NoTrainInceptionV3


def cached_weights() -> Path:
    """Where torch.hub (and so torch-fidelity and torchmetrics) keep the FID Inception."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_weights(given: str | Path | None, download: bool = True) -> Path:
    """--inception-weights FILE, else torch's cache, else a download into it; MissingDependency
    naming the flag when none works (offline, no cache)."""
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise InputError(path, "no such Inception weights file (--inception-weights)"
                             if not path.exists() else "not a file (--inception-weights)")
        return path
    path = cached_weights()
    if path.is_file():
        return path
    why = "downloads are off"
    if download:
        try:
            with urllib.request.urlopen(INCEPTION_URL, timeout=DOWNLOAD_TIMEOUT_S) as r:
                data = r.read()
            if not hashlib.sha256(data).hexdigest().startswith(STANDARD_SHA256_PREFIX):
                raise OSError("the download's sha256 does not match its name")
            write_atomic(path, data)
            return path
        except (OSError, urllib.error.URLError) as e:
            why = f"the download failed: {getattr(e, 'reason', e)}"
    raise MissingDependency("--inception-weights",
                            f"FID/KID need the FID Inception weights ({INCEPTION_FILE}); they are "
                            f"not in torch's cache ({path}) and {why}: give --inception-weights "
                            f"FILE")


def _build(state_dict: dict | None, features: int = FEATURES) -> nn.Module:
    """The library's FID Inception with these weights (None: its own initialisation, for
    random_weights), giving the `features`-wide pool features."""
    _, NoTrainInceptionV3 = _import_library()
    buf = io.BytesIO()
    torch.save(state_dict if state_dict is not None else {}, buf)
    buf.seek(0)
    if state_dict is None:
        from unittest import mock
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict",
                               lambda self, sd, strict=True: None):
            return NoTrainInceptionV3("inception-v3-compat", [str(features)],
                                      feature_extractor_weights_path=buf)
    return NoTrainInceptionV3("inception-v3-compat", [str(features)],
                              feature_extractor_weights_path=buf)


def random_weights(path: str | Path, seed: int = 0) -> Path:
    """Save a randomly initialised FID Inception (He-normal convolutions, so features keep their
    scale through the 94 layers) for tests and offline demos. FIDs measured with it rank images
    but are not comparable with published figures; reports mark them non-standard."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = _build(None)
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    write_atomic(path, buf.getvalue())
    return Path(path)


def clean_resize(rgb: np.ndarray, size: int = FID_SIZE) -> np.ndarray:
    """uint8 [H,W,3] -> uint8 [size,size,3], as RESIZE says."""
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(rgb[..., c], np.float32))
                        .resize((size, size), Image.Resampling.BICUBIC)) for c in range(3)]
    return np.rint(np.clip(np.stack(chans, -1), 0, 255)).astype(np.uint8)


class InceptionFeatures:
    """uint8 RGB images -> float64 [N, features] FID Inception pool features (2048: the standard
    FID; 64, 192 or 768: the earlier pools torch-fidelity offers, cheaper, for quick checks)."""

    def __init__(self, weights: str | Path | None = None, *, download: bool = True,
                 device: str | torch.device = "cpu", batch_size: int = 8,
                 features: int = FEATURES):
        if features not in FEATURE_LAYERS:
            raise OptionError("--fid-features", f"{features}: one of "
                                                f"{', '.join(map(str, FEATURE_LAYERS))}")
        self.features = features
        self.path = find_weights(weights, download)
        sd = read_state_dict(self.path, "FID Inception weights")
        try:
            self.net = _build(sd, features).to(device)
        except (RuntimeError, KeyError, ValueError) as e:
            raise InputError(self.path, f"does not fit the FID Inception network "
                                        f"({str(e).splitlines()[0][:200]})") from None
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.sha256 = sha256(self.path)
        self.standard = self.sha256.startswith(STANDARD_SHA256_PREFIX)

    def describe(self) -> dict:
        return {"file": str(self.path), "sha256": self.sha256, "standard": self.standard,
                "network": "FID Inception (TensorFlow 2015-12-05, torch-fidelity's port)",
                "features": self.features, "resize": RESIZE}

    @torch.inference_mode()
    def __call__(self, images, progress: str | None = None) -> torch.Tensor:
        """images: uint8 [H,W,3] arrays, or callables that read one (so a folder is never held in
        memory at once)."""
        images = list(images)
        out = []
        bar = _bar(len(images), progress)
        for i in range(0, len(images), self.batch_size):
            chunk = [clean_resize(_rgb(x)) for x in images[i:i + self.batch_size]]
            x = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).contiguous()
            out.append(self.net(x.to(self.device)).double().cpu())
            bar.update(len(chunk))
        bar.close()
        return torch.cat(out) if out else torch.zeros(0, self.features, dtype=torch.float64)


def _rgb(x) -> np.ndarray:
    return x() if callable(x) else x


def _bar(total: int, desc: str | None):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", disable=desc is None, leave=False)


class _Given(nn.Module):
    """Hands torchmetrics features computed once (both FID and KID use them)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def check_counts(n_fake: int, n_real: int, subset_size: int | None) -> int:
    """The KID subset size to use; InputError saying how many images are needed."""
    if n_fake < 2 or n_real < 2:
        which = "--fake" if n_fake < 2 else "--real"
        raise InputError(which, f"FID/KID need at least 2 images in each of --fake and --real "
                                f"(a covariance needs 2); got {n_fake} fake and {n_real} real")
    if subset_size is None:
        # 1000 as torch-fidelity and the KID paper; half the smaller set below 2000 images, so
        # the subsets differ and the std says something.
        return min(1000, max(2, min(n_fake, n_real) // 2))
    if subset_size > min(n_fake, n_real):
        raise InputError("--kid-subset-size", f"{subset_size} needs at least {subset_size} "
                                              f"images in each set; got {n_fake} fake and "
                                              f"{n_real} real")
    return subset_size


def fid_kid(fake: torch.Tensor, real: torch.Tensor, *, subsets: int = 100,
            subset_size: int | None = None, seed: int = 0) -> dict:
    """FID and KID (mean, std over `subsets` random subsets of `subset_size`) between two feature
    sets, through torchmetrics' metrics. The subsets are drawn from `seed`."""
    torchmetrics, _ = _import_library()
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance
    size = check_counts(len(fake), len(real), subset_size)
    import warnings
    fid = FrechetInceptionDistance(feature=_Given(fake.shape[1]))
    fid.update(real.double(), real=True)
    fid.update(fake.double(), real=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # its notice that it keeps the features
        kid = KernelInceptionDistance(feature=_Given(fake.shape[1]), subsets=subsets,
                                      subset_size=size)
    kid.update(real.double(), real=True)
    kid.update(fake.double(), real=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()),
            "kid": {"mean": float(kid_mean), "std": float(kid_std), "subsets": subsets,
                    "subset_size": size, "seed": seed},
            "fake_images": len(fake), "real_images": len(real),
            "library": f"torchmetrics {torchmetrics.__version__}"}
