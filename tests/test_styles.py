"""Style control: dictionary choices by name / id / '*', seeded random choices that follow an
instance across frames, zeros for absent labels, and styles taken from an example photo."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from p2phd_infer.checkpoint import Checkpoint, save_checkpoint
from p2phd_infer.config import ModelConfig
from p2phd_infer.engines import EngineInfo, TorchEngine
from p2phd_infer.labels import CITYSCAPES_NAMES
from p2phd_infer.networks import build_encoder, build_generator, downsample_2x
from p2phd_infer.styles import StyleControl, mix32
from p2phd_infer.synthesizer import Synthesizer

H, W = 32, 64
CFG = ModelConfig(label_nc=35, feat_num=3, netG="global", ngf=4, n_downsample_global=2,
                  n_blocks_global=1, nef=4, n_downsample_E=2)
LOCAL = ModelConfig(label_nc=35, feat_num=3, netG="local", ngf=4, n_downsample_global=1,
                    n_blocks_global=1, n_blocks_local=1, nef=4, n_downsample_E=2)


def dictionary(seed: int = 0) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {7: torch.randn(3, 3, generator=g), 26: torch.randn(5, 3, generator=g),
            24: torch.randn(1, 3, generator=g)}          # 11 building, 23 sky: absent


def info(cfg=CFG, features=None) -> EngineInfo:
    return EngineInfo(cfg, dictionary() if features is None else features, CITYSCAPES_NAMES)


def scene(shift: int = 0, cars=(26001, 26002, 26003, 26004)) -> tuple[torch.Tensor, torch.Tensor]:
    """Road, sky and building stuff (ids < 1000 = label) and cars; `shift` moves the cars."""
    label = np.full((H, W), 7, np.int32)
    label[:8] = 23
    label[8:12] = 11
    inst = label.copy()
    for n, cid in enumerate(cars):
        x = (4 + 14 * n + shift) % (W - 8)
        inst[16:24, x:x + 8] = cid
        label[16:24, x:x + 8] = 26
    return torch.from_numpy(label)[None, None], torch.from_numpy(inst)[None, None]


def pixel_of(inst: torch.Tensor, iid: int) -> tuple[int, int]:
    ys, xs = torch.nonzero(inst[0, 0] == iid, as_tuple=True)
    return int(ys[0]), int(xs[0])


def python_pick(seed: int, iid: int, k: int) -> int:
    """The documented hash on Python integers (no tensors): mix32(mix32(seed ^ C) ^ id) % k."""
    s = mix32((seed & 0xFFFFFFFF) ^ 0x5BD1E995)
    return mix32((iid & 0xFFFFFFFF) ^ s) % k


# ---------------------------------------------------------------- random, seeded choices

def test_random_choice_is_the_seeded_hash_of_each_instance():
    d = dictionary()
    label, inst = scene(cars=tuple(26000 + i for i in range(1, 5)))
    for seed in (0, 1, 2**40 + 5):
        fmap = StyleControl.from_options(info(), None, seed=seed).feature_map(label, inst)
        assert fmap.shape == (1, 3, H, W) and fmap.dtype == torch.float32
        for iid in (7, 26001, 26002, 26003, 26004, 24):
            lab = iid // 1000 if iid >= 1000 else iid
            if not (inst == iid).any():
                continue
            y, x = pixel_of(inst, iid)
            want = d[lab][python_pick(seed, iid, d[lab].shape[0])]
            assert torch.equal(fmap[0, :, y, x], want)
            assert torch.equal(fmap[0][:, inst[0, 0] == iid],          # the whole instance
                               want[:, None].expand(3, int((inst == iid).sum())))


def test_random_choices_cover_the_clusters():
    label = torch.full((1, 1, 1, 500), 26, dtype=torch.int32)
    inst = (26000 + torch.arange(500, dtype=torch.int32)).view(1, 1, 1, 500)
    fmap = StyleControl.from_options(info(), None, seed=0).feature_map(label, inst)
    picks = [int(torch.nonzero((dictionary()[26] == fmap[0, :, 0, i]).all(1))[0])
             for i in range(500)]
    counts = np.bincount(picks, minlength=5)
    assert counts.min() > 60, counts                         # about 100 each


def test_same_instance_same_features_in_two_frames():
    sc = StyleControl.from_options(info(), None, seed=7)
    la, ia = scene(0)
    lb, ib = scene(5, cars=(26003, 26001, 26009, 26002))     # moved, reordered, one new car
    fa, fb = sc.feature_map(la, ia), sc.feature_map(lb, ib)
    for iid in (26001, 26002, 26003, 7):
        ya, xa = pixel_of(ia, iid)
        yb, xb = pixel_of(ib, iid)
        assert torch.equal(fa[0, :, ya, xa], fb[0, :, yb, xb])
    # A batch of both frames gives the same maps as one frame at a time.
    both = sc.feature_map(torch.cat([la, lb]), torch.cat([ia, ib]))
    assert torch.equal(both, torch.cat([fa, fb]))


def test_same_seed_same_image_two_seeds_or_clusters_differ():
    torch.manual_seed(0)
    synth = Synthesizer(CFG, build_generator(CFG)).eval()
    label, inst = scene()

    def image(**kw):
        fmap = StyleControl.from_options(info(), **kw).feature_map(label, inst)
        with torch.no_grad():
            return synth(label, inst, fmap)

    a, b = image(style=None, seed=3), image(style=None, seed=3)
    assert torch.equal(a, b)
    assert not torch.allclose(a, image(style=None, seed=4), atol=1e-4)
    c0, c1 = image(style="car=0"), image(style="car=1")
    assert not torch.allclose(c0, c1, atol=1e-4)
    assert torch.equal(c0, image(style="26=0"))                # by name or by id


# ---------------------------------------------------------------- fixed choices and errors

def test_star_and_per_label_overrides():
    d = dictionary()
    label, inst = scene()
    f = StyleControl.from_options(info(), "*=0").feature_map(label, inst)
    for iid, lab in ((7, 7), (26001, 26), (26004, 26)):
        y, x = pixel_of(inst, iid)
        assert torch.equal(f[0, :, y, x], d[lab][0])
    f = StyleControl.from_options(info(), "*=0, car=4, road=2", seed=9).feature_map(label, inst)
    for iid in (26001, 26002, 26003, 26004):
        y, x = pixel_of(inst, iid)
        assert torch.equal(f[0, :, y, x], d[26][4])
    y, x = pixel_of(inst, 7)
    assert torch.equal(f[0, :, y, x], d[7][2])
    # A fixed label, the others random.
    f = StyleControl.from_options(info(), "road=1", seed=9).feature_map(label, inst)
    y, x = pixel_of(inst, 26002)
    assert torch.equal(f[0, :, y, x], d[26][python_pick(9, 26002, 5)])


def test_absent_labels_get_zeros():
    label, inst = scene()
    inst[0, 0, 0, :4] = 40                 # a label outside the dictionary's range too
    label[0, 0, 0, :4] = 40
    for style in (None, "*=0"):
        f = StyleControl.from_options(info(), style, seed=1).feature_map(label, inst)
        stuff = (label[0, 0] == 23) | (label[0, 0] == 11) | (label[0, 0] == 40)
        assert stuff.sum() > 0 and torch.count_nonzero(f[0][:, stuff]) == 0
        assert torch.count_nonzero(f[0][:, label[0, 0] == 26]) > 0
    # No dictionary at all: zeros everywhere.
    f = StyleControl.from_options(info(features={})).feature_map(label, inst)
    assert torch.count_nonzero(f) == 0


def test_label_below_1000_comes_from_the_label_map():
    d = dictionary()
    label = torch.full((1, 1, 4, 4), 26, dtype=torch.int32)
    inst = torch.full((1, 1, 4, 4), 5, dtype=torch.int32)    # a non-Cityscapes instance id
    f = StyleControl.from_options(info(), "car=3").feature_map(label, inst)
    assert torch.equal(f[0, :, 0, 0], d[26][3])


def test_unknown_name_and_out_of_range_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown label name 'carr'"):
        StyleControl.from_options(info(), "carr=1")
    with pytest.raises(ValueError, match=r"cluster 5 is out of range for label 'car' \(26\): "
                                         r"valid 0\.\.4"):
        StyleControl.from_options(info(), "car=5")
    with pytest.raises(ValueError, match=r"out of range .* valid 0\.\.2"):
        StyleControl.from_options(info(), "7=-1")
    with pytest.raises(ValueError, match=r"'\*=1'.*'person' \(24\), which has clusters 0.*"
                                         r"every label has \(0\)"):
        StyleControl.from_options(info(), "*=1")
    StyleControl.from_options(info(), "*=1,person=0")         # the override makes it valid
    with pytest.raises(ValueError, match=r"'sky' \(23\) has no feature clusters"):
        StyleControl.from_options(info(), "sky=0")
    with pytest.raises(ValueError, match=r"expected LABEL=CLUSTER"):
        StyleControl.from_options(info(), "car")
    with pytest.raises(ValueError, match=r"feat_num 0"):
        StyleControl.from_options(info(ModelConfig(netG="global", ngf=4)), "car=0")


# ---------------------------------------------------------------- style from an example photo

def write_photo(tmp_path, seed=0):
    """A photo with cars 26001, 26005 and a person 24003; road 7 and sky 23 (stuff)."""
    rng = np.random.default_rng(seed)
    inst = np.full((H, W), 7, np.int32)
    inst[:6] = 23
    inst[10:20, 4:20] = 26001
    inst[12:22, 30:44] = 26005
    inst[20:30, 50:60] = 24003
    photo = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(inst.astype(np.uint16)).save(tmp_path / "photo_inst.png")
    return photo, inst


def loop_photo_means(encoder, cfg, photo, inst) -> dict[int, torch.Tensor]:
    """Plain loops: E's output (at G1's resolution for a local model, the trainer's rule), one
    masked mean per instance id."""
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 127.5 - 1
    small = inst
    for _ in range(cfg.enhancers):
        x, small = downsample_2x(x), small[::2, ::2]
    with torch.no_grad():
        raw = encoder.model(x)[0].double()
    first = torch.empty_like(raw)
    for i in np.unique(small):
        m = torch.from_numpy(small == i)
        first[:, m] = raw[:, m].mean(1, keepdim=True)
    s = 2 ** cfg.enhancers
    first = first.repeat_interleave(s, 1).repeat_interleave(s, 2)
    return {int(i): first[:, torch.from_numpy(inst == i)].mean(1) for i in np.unique(inst)}


@pytest.mark.parametrize("cfg", [CFG, LOCAL], ids=["global", "local"])
def test_style_from_photo_matches_a_per_instance_loop(tmp_path, cfg):
    torch.manual_seed(2)
    enc = build_encoder(cfg).eval()
    photo, pinst = write_photo(tmp_path)
    means = loop_photo_means(enc, cfg, photo, pinst)
    car_mean = (means[26001] + means[26005]) / 2           # each instance once, not by area
    d = dictionary()
    # Target: car 26001 (in the photo), car 26002 (label only), person 24003 (in the photo),
    # road/sky (ids = labels, in the photo), building 11 (absent from photo and dictionary),
    # a bus 28001 (absent from the photo; not in the dictionary either).
    label, inst = scene(cars=(26001, 26002, 24003, 28001))
    label = torch.where(inst >= 1000, inst // 1000, label)
    sc = StyleControl.from_options(info(cfg), "car=1", seed=0, style_image=tmp_path / "photo.png",
                                   style_inst=tmp_path / "photo_inst.png", encoder=enc)
    f = sc.feature_map(label, inst)
    want = {26001: means[26001], 26002: car_mean, 24003: means[24003], 7: means[7],
            23: means[23], 11: torch.zeros(3), 28001: torch.zeros(3)}
    for iid, w in want.items():
        got = f[0][:, inst[0, 0] == iid]
        # fp32 sums over up to ~1000 pixels against a float64 loop: N*eps ~ 6e-5 relative bound.
        torch.testing.assert_close(got, w.float()[:, None].expand_as(got), rtol=1e-4, atol=1e-5)
    # Without the photo the fixed choice applies; with it, the photo wins where it has a match.
    y, x = pixel_of(inst, 26002)
    plain = StyleControl.from_options(info(cfg), "car=1").feature_map(label, inst)
    assert torch.equal(plain[0, :, y, x], d[26][1])


def test_style_photo_through_an_engine(tmp_path):
    torch.manual_seed(0)
    g, e = build_generator(CFG), build_encoder(CFG)
    save_checkpoint(Checkpoint(CFG, g.state_dict(), e.state_dict(), dictionary(),
                               CITYSCAPES_NAMES), tmp_path / "model.pt")
    write_photo(tmp_path)
    engine = TorchEngine(tmp_path / "model.pt", "cpu")
    sc = StyleControl.for_engine(engine, seed=1, style_image=tmp_path / "photo.png",
                                 style_inst=tmp_path / "photo_inst.png")
    label, inst = scene()
    img = engine(label, inst, sc.feature_map(label, inst))
    assert img.shape == (1, 3, H, W) and torch.isfinite(img).all()
    with pytest.raises(ValueError, match="needs its instance map"):
        StyleControl.for_engine(engine, style_image=tmp_path / "photo.png")
    with pytest.raises(ValueError, match="photo.png: size 64x32 differs"):
        Image.fromarray(np.zeros((16, 16), np.uint16)).save(tmp_path / "small_inst.png")
        StyleControl.for_engine(engine, style_image=tmp_path / "photo.png",
                                style_inst=tmp_path / "small_inst.png")
    with pytest.raises(ValueError, match="needs the model's encoder"):
        StyleControl.from_options(engine.info, style_image=tmp_path / "photo.png",
                                  style_inst=tmp_path / "photo_inst.png")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: checks that "
                    "feature_map never synchronises with the host")
def test_feature_map_is_sync_free_on_cuda():
    sc = StyleControl.from_options(info(), "road=1", seed=3, device="cuda")
    label, inst = (t.cuda() for t in scene())
    ref = StyleControl.from_options(info(), "road=1", seed=3).feature_map(*scene())
    sc.feature_map(label, inst)                            # warm up (first-use allocations)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = sc.feature_map(label, inst)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(out.cpu(), ref)
