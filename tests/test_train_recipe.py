"""The official training recipe: N(0, 0.02) init, random crops, --no-ganFeat-loss, --no-lsgan,
--pool-size, official discriminator keys and --load-d, --label-nc 0 (RGB input).

Tiny networks, 64x32 scenes, one or two steps per run (CPU)."""
import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch.nn import functional as F

from p2phd_infer.checkpoint import load_checkpoint
from p2phd_infer.config import ModelConfig
from p2phd_infer.errors import CheckpointError, InputError
from p2phd_infer.labels import encode_labels
from p2phd_infer.networks import GlobalGenerator, build_generator
from p2phd_infer.synthesizer import Synthesizer
from p2phd_infer.train import trainer as trainer_module
from p2phd_infer.train.datasets import PairedDataset, crop_for
from p2phd_infer.train.discriminator import MultiscaleDiscriminator, load_discriminator, to_layout
from p2phd_infer.train.losses import gan_loss
from p2phd_infer.train.pool import ImagePool
from p2phd_infer.train.scenes import make_scenes
from p2phd_infer.train.trainer import STATE_FILE, TrainOptions, init_weights, train

TINY = dict(ngf=8, n_downsample_global=1, n_blocks_global=1, label_nc=35)
TINY_D = dict(ndf=8, n_layers_d=2, num_d=2)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 2, 64, 32, seed=5)
    return root


def _opts(data, ckdir, name, **kw):
    base = dict(dataroot=str(data), checkpoints_dir=str(ckdir), name=name, batch_size=2,
                resize_or_crop="none", num_workers=0, progress=False, save_every=1000,
                no_vgg=True, niter=1, niter_decay=0, **TINY_D, **TINY)
    base.update(kw)
    return TrainOptions(**base)


def _log(run_dir: Path) -> list[dict]:
    with open(run_dir / "loss_log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _conv_weights(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.endswith(".weight") and v.dim() == 4}


def _assert_normal_002(name: str, w: torch.Tensor):
    """Sample mean and std of n draws of N(0, 0.02): the mean's standard error is 0.02/sqrt(n),
    the std's relative one ~1/sqrt(2n); 5 of each is the tolerance (PyTorch's default init has
    std 1/sqrt(3*fan_in): 0.0137 for the 36x7x7 first conv, 0.068 for an 8x3x3 one)."""
    n = w.numel()
    w = w.double()
    assert abs(w.mean().item()) < 5 * 0.02 / math.sqrt(n), (name, n, w.mean().item())
    assert abs(w.std().item() / 0.02 - 1) < 5 / math.sqrt(2 * n), (name, n, w.std().item())


# ----------------------------------------------------------------------------- 1. init

def test_init_weights_is_the_official_normal():
    torch.manual_seed(0)
    g = init_weights(GlobalGenerator(36, 3, ngf=16, n_downsample=2, n_blocks=1))
    convs = [m for m in g.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in convs)
    for i, m in enumerate(convs):
        if m.weight.numel() >= 1000:
            _assert_normal_002(f"conv {i}", m.weight)
    everything = torch.cat([m.weight.reshape(-1) for m in convs])
    _assert_normal_002("all", everything)
    bn = torch.nn.BatchNorm2d(4000)
    init_weights(bn)
    assert bn.bias.abs().max() == 0
    assert abs(bn.weight.mean().item() - 1) < 5 * 0.02 / math.sqrt(4000)


@pytest.fixture(scope="module")
def init_run(data, tmp_path_factory):
    """One step at a negligible learning rate: the saved weights are the initial ones (Adam's
    first step moves each by at most lr)."""
    ck = tmp_path_factory.mktemp("init")
    path = train(_opts(data, ck, "g", lr=1e-12, max_steps=1, instance_feat=True, feat_num=2,
                       nef=4, n_downsample_E=1))
    return ck, path


def test_trainer_initialises_g_e_and_d(init_run):
    ck, path = init_run
    ckpt = load_checkpoint(path)
    state = torch.load(ck / "g" / STATE_FILE, weights_only=True)
    for what, sd in (("G", ckpt.generator), ("E", ckpt.encoder), ("D", state["D"])):
        weights = _conv_weights(sd)
        assert weights, what
        for k, w in weights.items():
            if w.numel() >= 1000:
                _assert_normal_002(f"{what} {k}", w)
        _assert_normal_002(what, torch.cat([w.reshape(-1) for w in weights.values()]))


def test_loaded_g1_is_untouched_and_the_enhancer_initialised(data, init_run, tmp_path):
    ck, g_path = init_run
    g1 = load_checkpoint(g_path)
    path = train(_opts(data, tmp_path, "l", stage="local", load_global=str(g_path),
                       niter_fix_global=1, n_blocks_local=1, max_steps=1, lr=1e-12,
                       instance_feat=True, **{k: None for k in TINY}))
    local = load_checkpoint(path)
    for k, v in local.generator.items():
        if k.startswith("model."):
            assert torch.equal(v, g1.generator[k]), k       # frozen and loaded: bit-identical
    for k, v in local.encoder.items():
        assert torch.equal(v, g1.encoder[k]), k
    enh = torch.cat([w.reshape(-1) for k, w in _conv_weights(local.generator).items()
                     if not k.startswith("model.")])
    _assert_normal_002("enhancer", enh)


# ----------------------------------------------------------------------------- 2. crops

def _coordinate_scene(root: Path, name: str, W: int = 64, H: int = 48):
    """Pixel (x, y): instance id y*W + x + 1, label (x + y) % 35, photo R = 4x, G = 4y."""
    ys, xs = np.mgrid[0:H, 0:W]
    for d in ("train_label", "train_inst", "train_img"):
        (root / d).mkdir(parents=True, exist_ok=True)
    Image.fromarray(((xs + ys) % 35).astype(np.uint8)).save(root / "train_label" / f"{name}.png")
    Image.fromarray((ys * W + xs + 1).astype(np.uint16)).save(root / "train_inst" / f"{name}.png")
    rgb = np.stack([xs * 4, ys * 4, np.full_like(xs, 128)], -1).astype(np.uint8)
    Image.fromarray(rgb).save(root / "train_img" / f"{name}.png")


def _decode(item, W=64):
    inst = item["inst"][0].numpy().astype(np.int64) - 1
    ix, iy = inst % W, inst // W
    img = np.round((item["image"].numpy() + 1) * 127.5)
    px, py = img[0] / 4, img[1] / 4
    return ix, iy, px, py, item["label"][0].numpy()


@pytest.mark.parametrize("mode,load_size", [("crop", 64), ("scale_width_and_crop", 64)])
def test_crops_keep_label_instances_and_photo_aligned(tmp_path, mode, load_size):
    _coordinate_scene(tmp_path, "a")
    ds = PairedDataset(tmp_path, resize_or_crop=mode, load_size=load_size, multiple=8,
                       flip=True, seed=7, fine_size=32)
    corners = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        item = ds[0]
        assert item["label"].shape == (1, 32, 32) and item["image"].shape == (3, 32, 32)
        ix, iy, px, py, label = _decode(item)
        assert np.array_equal(ix, px) and np.array_equal(iy, py)        # photo on its ids
        assert np.array_equal(label, (ix + iy) % 35)                    # label on its ids
        # A flip is a mirror: x decreases left to right; else it increases.
        assert abs(int(np.diff(ix[0]).sum())) == 31
        corners.add((int(ix.min()), int(iy.min())))
        again = ds[0]
        assert torch.equal(again["inst"], item["inst"])                 # deterministic
    assert len(corners) > 2                                             # and random over epochs
    assert all(0 <= x <= 32 and 0 <= y <= 16 for x, y in corners)
    assert crop_for(7, 3, 0, 32, 16) == crop_for(7, 3, 0, 32, 16)


def test_scale_width_and_crop_scales_first(tmp_path):
    """Width 64 -> 32 (height 48 -> 24), then a 16 square: ids resized nearest, the photo
    bicubic, both from the same place (the photo within a source pixel of the ids)."""
    _coordinate_scene(tmp_path, "a")
    ds = PairedDataset(tmp_path, resize_or_crop="scale_width_and_crop", load_size=32,
                       multiple=8, flip=False, seed=1, fine_size=16)
    for epoch in range(4):
        ds.set_epoch(epoch)
        ix, iy, px, py, label = _decode(ds[0])
        assert ix.shape == (16, 16)
        inner = (slice(2, -2), slice(2, -2))
        assert np.abs(ix - px)[inner].max() <= 1.5 and np.abs(iy - py)[inner].max() <= 1.5
        assert np.array_equal(label, (ix + iy) % 35)


def test_fine_size_must_fit_the_stride(tmp_path):
    _coordinate_scene(tmp_path, "a")
    with pytest.raises(Exception, match="--fine-size: 20 is not a multiple of the network's "
                                        "stride 8"):
        PairedDataset(tmp_path, resize_or_crop="crop", multiple=8, fine_size=20)


# ----------------------------------------------------------------------------- 3. switches

def test_vanilla_gan_loss_is_bce_of_the_sigmoid():
    torch.manual_seed(0)
    s1, s2 = torch.randn(1, 1, 3, 3) * 3, torch.tensor([[[[40.0, -40.0]]]])
    preds = [[torch.zeros(1, 2, 2, 2), s1], [s2]]
    for real in (True, False):
        t = 1.0 if real else 0.0
        sig = torch.sigmoid(s1)
        by_hand = (-(t * torch.log(sig) + (1 - t) * torch.log(1 - sig))).mean()
        # the far-out scores of s2: softplus(-s) for real, softplus(s) for fake, exactly
        by_hand = by_hand + (F.softplus(-s2) if real else F.softplus(s2)).mean()
        assert gan_loss(preds, real, lsgan=False).item() == pytest.approx(by_hand.item(),
                                                                         rel=1e-6)
        # the official Sigmoid + BCELoss on the moderate scores
        official = F.binary_cross_entropy(torch.sigmoid(s1), torch.full_like(s1, t))
        assert gan_loss([[s1]], real, lsgan=False).item() == pytest.approx(official.item(),
                                                                          rel=1e-5)
        assert gan_loss([[s1]], real, lsgan=True).item() == pytest.approx(
            ((s1 - t) ** 2).mean().item(), rel=1e-6)


def test_image_pool_follows_the_official_rule():
    def batch(v):
        return (torch.full((1, 1, 2, 2), v), torch.full((1, 3, 2, 2), float(v)))

    off = ImagePool(0)
    b = batch(1)
    assert off.query(b, 0) is b
    pool = ImagePool(4, seed=3)
    for v in range(4):                                   # filling: every fake shown and kept
        assert pool.query(batch(v), v)[0].flatten()[0].item() == v
    shown_old, stored_ok = 0, True
    values = []
    for step in range(4, 404):
        before = {int(e[0].flatten()[0]) for e in pool.entries}
        label, fake = pool.query(batch(step), step)
        got = int(label.flatten()[0])
        values.append(got)
        assert torch.all(fake == float(got))              # the parts stay together
        if got != step:
            shown_old += 1
            stored_ok &= got in before and step in {int(e[0].flatten()[0]) for e in pool.entries}
    assert stored_ok
    assert 0.4 < shown_old / 400 < 0.6                    # probability 0.5 once full
    again = ImagePool(4, seed=3)
    for v in range(4):
        again.query(batch(v), v)
    assert [int(again.query(batch(s), s)[0].flatten()[0]) for s in range(4, 404)] == values
    other = ImagePool(4, seed=4)
    for v in range(4):
        other.query(batch(v), v)
    assert [int(other.query(batch(s), s)[0].flatten()[0]) for s in range(4, 404)] != values


@pytest.fixture(scope="module")
def switches_run(data, tmp_path_factory):
    """--no-ganFeat-loss --no-lsgan --pool-size 1, random 32x32 crops, custom label names."""
    ck = tmp_path_factory.mktemp("switches")
    names = ck / "names.txt"
    names.write_text("# id name colour\n26 car 0 0 142\n7 road\n11 big building 70 70 70\n")
    calls = {"lsgan": set(), "pool": 0}
    real_gan, real_query = trainer_module.gan_loss, ImagePool.query

    def spy_gan(preds, target, lsgan=True):
        calls["lsgan"].add(lsgan)
        return real_gan(preds, target, lsgan)

    def spy_query(self, parts, step):
        calls["pool"] += 1
        return real_query(self, parts, step)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_module, "gan_loss", spy_gan)
        mp.setattr(ImagePool, "query", spy_query)
        path = train(_opts(data, ck, "s", no_ganfeat_loss=True, no_lsgan=True, pool_size=1,
                           resize_or_crop="scale_width_and_crop", load_size=64, fine_size=32,
                           niter=2, label_names=str(names), batch_size=1))
    return ck, path, calls


def test_switches_change_what_they_should(switches_run):
    ck, path, calls = switches_run
    rows = _log(ck / "s")
    assert len(rows) == 4
    assert all(float(r["G_GAN_Feat"]) == 0 for r in rows)               # no feature matching
    assert all(float(r["G_GAN"]) > 0 and float(r["D_real"]) > 0 for r in rows)
    assert calls["lsgan"] == {False} and calls["pool"] == 4
    state = torch.load(ck / "s" / STATE_FILE, weights_only=True)
    # no intermediate features: the official flat keys, one Sequential per scale
    assert {k.split(".")[0] for k in state["D"]} == {"layer0", "layer1"}
    grid = Image.open(sorted((ck / "s" / "samples").glob("*.png"))[-1])
    assert grid.size == (3 * 32 + 4, 32)                                # 32x32 crops
    ckpt = load_checkpoint(path)
    assert ckpt.extra["train_info"]["resize_or_crop"] == "scale_width_and_crop"
    assert ckpt.label_names == {26: "car", 7: "road", 11: "big building"}
    assert ckpt.extra["label_colors"] == {26: [0, 0, 142], 11: [70, 70, 70]}


def test_feature_matching_on_by_default(init_run):
    ck, _ = init_run
    assert float(_log(ck / "g")[0]["G_GAN_Feat"]) > 0
    state = torch.load(ck / "g" / STATE_FILE, weights_only=True)
    assert "scale1_layer3.0.weight" in state["D"]


# ----------------------------------------------------------------------------- 4. D keys

def _official_d_shapes(input_nc, ndf, n_layers, num_D):
    """The official MultiscaleDiscriminator's state dict with getIntermFeat, by key names and
    shapes: per scale i, group j's conv at `scale{i}_layer{j}.0` (k4); filters ndf, doubling to
    at most 512, then 1."""
    chans = [input_nc, ndf]
    for _ in range(1, n_layers + 1):
        chans.append(min(chans[-1] * 2, 512))
    chans.append(1)
    shapes = {}
    for i in range(num_D):
        for j in range(n_layers + 2):
            shapes[f"scale{i}_layer{j}.0.weight"] = (chans[j + 1], chans[j], 4, 4)
            shapes[f"scale{i}_layer{j}.0.bias"] = (chans[j + 1],)
    return shapes


def test_discriminator_keys_are_the_official_ones():
    with torch.device("meta"):
        d = MultiscaleDiscriminator(39, 64, 3, 3)
    got = {k: tuple(v.shape) for k, v in d.state_dict().items()}
    assert got == _official_d_shapes(39, 64, 3, 3)
    assert got["scale2_layer4.0.weight"] == (1, 512, 4, 4)
    with torch.device("meta"):
        flat = MultiscaleDiscriminator(39, 64, 3, 3, intermediate=False)
    # flat: conv at 0, 2, 5, 8, 11 of one Sequential per scale
    assert {k for k in flat.state_dict() if k.endswith("weight")} == {
        f"layer{i}.{m}.weight" for i in range(3) for m in (0, 2, 5, 8, 11)}


def test_the_last_stored_scale_judges_full_resolution():
    d = MultiscaleDiscriminator(3, 4, 2, 2)
    with torch.no_grad():
        for i, bias in ((0, -5.0), (1, 5.0)):
            last = getattr(d, f"scale{i}_layer3")[0]
            last.weight.zero_()
            last.bias.fill_(bias)
    out = d(torch.randn(1, 3, 32, 32))
    assert torch.all(out[0][-1] == 5.0) and torch.all(out[1][-1] == -5.0)
    assert out[0][-1].shape[-1] > out[1][-1].shape[-1]


def test_layouts_convert_both_ways():
    torch.manual_seed(0)
    a = MultiscaleDiscriminator(5, 4, 3, 2)
    flat = MultiscaleDiscriminator(5, 4, 3, 2, intermediate=False)
    load_discriminator(flat, a.state_dict(), "a.pth")
    x = torch.randn(1, 5, 32, 32)
    for sa, sf in zip(a(x), flat(x)):
        torch.testing.assert_close(sa[-1], sf[-1])
    back = to_layout(flat.state_dict(), a)
    assert all(torch.equal(back[k], v) for k, v in a.state_dict().items())


def test_load_d_starts_from_official_weights_and_refuses_a_misfit(data, tmp_path):
    torch.manual_seed(1)
    # D inputs: 35 one-hot + 1 edge + 3 image; the state dict as NVIDIA's code saves it
    # (DataParallel prefix included, which the import drops).
    official = {f"module.{k}": torch.randn(s) for k, s in _official_d_shapes(39, 8, 2, 2).items()}
    torch.save(official, tmp_path / "latest_net_D.pth")
    lr = 1e-4
    train(_opts(data, tmp_path, "ft", load_d=str(tmp_path / "latest_net_D.pth"), max_steps=1,
                lr=lr))
    d = torch.load(tmp_path / "ft" / STATE_FILE, weights_only=True)["D"]
    for k, v in official.items():
        # Adam's first step moves each weight by at most lr: D started from the file
        assert (d[k.removeprefix("module.")] - v).abs().max() <= lr * 1.01, k

    bad = dict(official)
    bad["module.scale0_layer1.0.weight"] = torch.randn(16, 9, 4, 4)
    torch.save(bad, tmp_path / "bad_D.pth")
    from p2phd_infer.cli import main
    r = CliRunner().invoke(main, ["train", "--dataroot", str(data), "--checkpoints-dir",
                                  str(tmp_path), "--name", "bad", "--no-vgg", "--ndf", "8",
                                  "--n-layers-d", "2", "--load-d", str(tmp_path / "bad_D.pth"),
                                  "--device", "cpu", "--no-progress"])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, r.output
    assert lines[0].startswith(f"error: {tmp_path / 'bad_D.pth'}: ")
    assert "scale0_layer1.0.weight has shape (16, 9, 4, 4), the architecture needs " \
           "(16, 8, 4, 4)" in lines[0]
    assert not (tmp_path / "bad" / "model.pt").exists()
    with pytest.raises(CheckpointError, match="the file holds num_D 2, n_layers 2, ndf 8"):
        train(_opts(data, tmp_path, "bad2", load_d=str(tmp_path / "latest_net_D.pth"),
                    num_d=3))


# ----------------------------------------------------------------------------- 6. label_nc 0

def test_label_nc_0_config_encoding_and_synthesizer():
    cfg = ModelConfig(label_nc=0, use_instance=True, feat_num=2, netG="global", ngf=4,
                      n_downsample_global=1, n_blocks_global=1)
    assert cfg.input_nc == 3 + 1 + 2
    rgb = torch.rand(2, 3, 8, 8) * 2 - 1
    inst = torch.zeros(2, 1, 8, 8, dtype=torch.int32)
    inst[:, :, :, 4:] = 26001
    feat = torch.randn(2, 2, 8, 8)
    x = encode_labels(rgb, inst, 0, True, feat)
    assert torch.equal(x[:, :3], rgb) and torch.equal(x[:, 4:], feat)
    assert x[:, 3].sum() == 2 * 8 * 2                       # the edge map, 2 px thick
    with pytest.raises(InputError, match="label_nc 0 model takes an RGB input image"):
        encode_labels(torch.zeros(2, 1, 8, 8, dtype=torch.int32), inst, 0, True)
    synth = Synthesizer(cfg).eval()
    with torch.no_grad():
        out = synth(rgb, inst, feat)
        ref = synth.generator(torch.cat([rgb, x[:, 3:4], feat], 1))
    assert out.shape == (2, 3, 8, 8) and torch.equal(out, ref)
    assert build_generator(cfg).model[1].weight.shape[1] == 6


def test_train_label_nc_0_on_rgb_inputs(tmp_path):
    """train_A/ (input images) + train_B/ (photos) + train_inst/, as the official layout."""
    make_scenes(tmp_path / "scenes", 2, 64, 32, seed=8)
    root = tmp_path / "rgb"
    for src, dst in (("train_img", "train_B"), ("train_inst", "train_inst")):
        (root / dst).mkdir(parents=True)
        for p in (tmp_path / "scenes" / src).iterdir():
            (root / dst / p.name).write_bytes(p.read_bytes())
    (root / "train_A").mkdir()
    for p in sorted((tmp_path / "scenes" / "train_img").iterdir()):    # inputs: grey photos
        Image.open(p).convert("L").convert("RGB").save(root / "train_A" / (p.stem + ".jpg"))
    path = train(_opts(root, tmp_path, "rgb", label_nc=0, niter=2, instance_feat=True,
                       feat_num=2, nef=4, n_downsample_E=1))
    ckpt = load_checkpoint(path)
    assert ckpt.config.label_nc == 0 and ckpt.config.input_nc == 3 + 1 + 2
    assert ckpt.generator["model.1.weight"].shape[1] == 6
    assert ckpt.label_names is None
    state = torch.load(tmp_path / "rgb" / STATE_FILE, weights_only=True)
    assert state["D"]["scale0_layer0.0.weight"].shape[1] == 3 + 1 + 3    # input, edge, image
    rows = _log(tmp_path / "rgb")
    assert len(rows) == 2 and all(math.isfinite(float(r["G_GAN"])) for r in rows)
    # The generator runs on an RGB input through the Synthesizer, as `run` will.
    ds = PairedDataset(root, resize_or_crop="none", multiple=2, flip=False, label_nc=0)
    item = ds[0]
    assert item["label"].dtype == torch.float32 and item["label"].shape == (3, 32, 64)
    with torch.no_grad():
        out = Synthesizer(ckpt.config, ckpt.build_generator())(item["label"][None],
                                                               item["inst"][None])
    assert out.shape == (1, 3, 32, 64)
    # and the feature dictionary reads the same layout
    from p2phd_infer.cli import main
    r = CliRunner().invoke(main, ["features", "--engine", str(path), "--data", str(root),
                                  "--device", "cpu", "--resize-or-crop", "none", "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert load_checkpoint(path).features


def test_label_nc_0_refuses_the_cityscapes_layout(tmp_path):
    with pytest.raises(Exception, match="--label-nc: 0 .* needs --dataset-mode pix2pixhd"):
        PairedDataset(tmp_path, mode="cityscapes", label_nc=0)


def test_import_official_label_nc_0(tmp_path):
    """An official label_nc 0 generator (RGB + edge = 4 inputs) imports as label_nc 0."""
    from p2phd_infer.official import import_official
    torch.save(GlobalGenerator(4, 3, ngf=4, n_downsample=1, n_blocks=1).state_dict(),
               tmp_path / "latest_net_G.pth")
    ckpt = import_official(tmp_path / "latest_net_G.pth", label_nc=0, use_instance=True)
    assert ckpt.config.label_nc == 0 and ckpt.config.feat_num == 0 and ckpt.config.input_nc == 4
    with pytest.raises(CheckpointError, match="fewer than label_nc 0 \\(3 RGB channels\\)"):
        torch.save(GlobalGenerator(3, 3, ngf=4, n_downsample=1, n_blocks=1).state_dict(),
                   tmp_path / "g3.pth")
        import_official(tmp_path / "g3.pth", label_nc=0, use_instance=True)
