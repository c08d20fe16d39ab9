"""Discriminator and losses against the reference's numerics (hand-computed on small inputs)."""
import pytest
import torch
from torch.nn import functional as F

from p2phd_infer.networks import downsample_2x
from p2phd_infer.train.discriminator import MultiscaleDiscriminator, NLayerDiscriminator
from p2phd_infer.train.losses import (VGG_SLICES, VGG19Features, VGGLoss, feature_matching_loss,
                                      gan_loss)


def test_nlayer_shapes_and_padding():
    d = NLayerDiscriminator(5, ndf=4, n_layers=3)
    outs = d(torch.randn(1, 5, 32, 64))
    # k4 pad 2: stride 2 maps n -> n//2 + 1, stride 1 maps n -> n + 1.
    assert [tuple(o.shape) for o in outs] == [(1, 4, 17, 33), (1, 8, 9, 17), (1, 16, 5, 9),
                                              (1, 32, 6, 10), (1, 1, 7, 11)]
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.kernel_size == (4, 4) and c.padding == (2, 2) for c in convs)


def test_multiscale_d_sees_the_input_pooled_k_times():
    torch.manual_seed(0)
    md = MultiscaleDiscriminator(3, ndf=4, n_layers=2, num_D=3)
    x = torch.randn(2, 3, 32, 32)
    outs = md(x)
    pooled = x
    for k in range(3):
        ref = md.scales[k](pooled)
        for a, b in zip(outs[k], ref):
            assert torch.equal(a, b)
        pooled = downsample_2x(pooled)


def test_lsgan_and_feature_matching_weights():
    p = [[torch.zeros(1, 2, 3, 3), torch.full((1, 1, 2, 2), 0.5)],
         [torch.zeros(1, 2, 2, 2), torch.full((1, 1, 1, 1), 2.0)]]
    # sum over scales of the last output's MSE to the target
    assert gan_loss(p, True).item() == pytest.approx(0.25 + 1.0)
    assert gan_loss(p, False).item() == pytest.approx(0.25 + 4.0)
    real = [[torch.ones(1, 2, 3, 3), torch.zeros(1, 1, 2, 2)],
            [torch.full((1, 2, 2, 2), 3.0), torch.zeros(1, 1, 1, 1)]]
    # L1 of intermediate outputs only (1 and 3), weighted (1/num_D)*(4/(n_layers+1))*lambda
    w = (1 / 2) * (4 / (3 + 1)) * 10
    assert feature_matching_loss(p, real, 3, 10.0).item() == pytest.approx(w * (1 + 3))


def test_vgg_loads_torchvision_weights_by_key(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers     # torchvision's own vgg19 features
    torch.manual_seed(1)
    state = {f"features.{k}": v for k, v in make_layers(cfgs["E"]).state_dict().items()}
    torch.save(state, tmp_path / "vgg19.pth")
    vgg = VGG19Features(tmp_path / "vgg19.pth")
    assert torch.equal(vgg.slices[4][-2].weight, state["features.28.weight"])   # relu5_1's conv
    assert [len(s) for s in vgg.slices] == [b - a for a, b in VGG_SLICES]
    assert not any(p.requires_grad for p in vgg.parameters())
    x, y = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    fx, fy = vgg(x), vgg(y)
    ref = sum(w * F.l1_loss(a, b) for w, a, b in zip((1 / 32, 1 / 16, 1 / 8, 1 / 4, 1), fx, fy)) * 10
    assert VGGLoss(vgg, 10.0)(x, y).item() == pytest.approx(ref.item(), rel=1e-5)


def test_missing_vgg_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--no-vgg"):
        VGG19Features(tmp_path / "absent.pth")
