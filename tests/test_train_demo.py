"""The demo evaluation helpers, and the bundled demo model and sample maps."""
from pathlib import Path

import numpy as np
import pytest

import p2phd_infer
from p2phd_infer.checkpoint import load_checkpoint
from p2phd_infer.image_io import read_id_png
from p2phd_infer.train.demo import psnr

DEMO = Path(p2phd_infer.__file__).parent / "assets" / "demo"


def test_psnr():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255                      # MSE = 255^2 / 48
    assert psnr(a, b) == pytest.approx(10 * np.log10(48))


@pytest.mark.skipif(not (DEMO / "model.pt").is_file(), reason="no bundled demo model in this tree")
def test_bundled_demo_model():
    path = DEMO / "model.pt"
    assert path.stat().st_size <= 25 * 2**20
    ckpt = load_checkpoint(path)
    assert ckpt.config.netG == "local" and ckpt.config.feat_num == 3 and ckpt.encoder is not None
    assert ckpt.features and 26 in ckpt.features and len(ckpt.features[26]) >= 2
    labels = sorted((DEMO / "labels").glob("*.png"))
    assert labels
    for p in labels:
        label, inst = read_id_png(p), read_id_png(DEMO / "instances" / p.name)
        assert label.shape == inst.shape
        assert label.shape[0] % ckpt.config.stride == 0 and label.shape[1] % ckpt.config.stride == 0
        assert label.max() < ckpt.config.label_nc
