"""The demo evaluation helpers, and the bundled demo model and sample maps."""
from pathlib import Path

import numpy as np
import pytest
import torch

import p2phd_infer
from p2phd_infer.checkpoint import load_checkpoint
from p2phd_infer.image_io import read_id_png
from p2phd_infer.train.demo import cluster_feature_map, psnr

DEMO = Path(p2phd_infer.__file__).parent / "assets" / "demo"


def test_psnr():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255                      # MSE = 255^2 / 48
    assert psnr(a, b) == pytest.approx(10 * np.log10(48))


def test_cluster_feature_map_fills_each_instance_with_its_centre():
    label = torch.tensor([[[[26, 26, 7], [26, 26, 23]]]], dtype=torch.int32)
    inst = torch.tensor([[[[26000, 26001, 7], [26000, 26001, 23]]]], dtype=torch.int32)
    feats = {26: torch.tensor([[1.0, 2.0], [3.0, 4.0]]), 7: torch.tensor([[5.0, 6.0]])}
    f = cluster_feature_map(feats, label, inst, 2, lambda lab, i, k: 1 if i == 26001 else 0)
    assert f[0, :, 0, 0].tolist() == [1, 2] and f[0, :, 1, 0].tolist() == [1, 2]
    assert f[0, :, 0, 1].tolist() == [3, 4] and f[0, :, 0, 2].tolist() == [5, 6]
    assert f[0, :, 1, 2].tolist() == [0, 0]          # sky: no clusters, zeros


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
