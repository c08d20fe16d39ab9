"""The per-class feature dictionary: the reference's area rule, k-means, model.pt and the official
features file."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from p2phd_infer.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from p2phd_infer.cli import main
from p2phd_infer.config import ModelConfig
from p2phd_infer.instance_features import encode_photo
from p2phd_infer.networks import build_encoder, build_generator, downsample_2x
from p2phd_infer.official import read_official_features, write_official_features
from p2phd_infer.train.trainer import encode_features

H, W = 32, 64            # H*W // 32 = 64 pixels: an instance is kept with more than 32 pixels
GLOBAL = ModelConfig(label_nc=35, feat_num=3, netG="global", ngf=4, n_downsample_global=2,
                     n_blocks_global=1, nef=4, n_downsample_E=2)
LOCAL = ModelConfig(label_nc=35, feat_num=3, netG="local", ngf=4, n_downsample_global=1,
                    n_blocks_global=1, n_blocks_local=1, nef=4, n_downsample_E=2)


def run_cli(args):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return res.exit_code, res.output


def tiny_model(path, cfg: ModelConfig, seed: int = 0, features=None):
    torch.manual_seed(seed)
    g, e = build_generator(cfg), build_encoder(cfg)
    save_checkpoint(Checkpoint(cfg, g.state_dict(), e.state_dict(), features), path)
    return e


def area_scene(variant: int) -> np.ndarray:
    """Road (7) everywhere, with car and person instances of chosen sizes around the threshold."""
    inst = np.full((H, W), 7, np.int64)
    if variant == 0:
        inst[0, :33] = 26001                         # 33 px: ratio 0.516 -> kept
        inst[2, :32] = 26002                         # 32 px: ratio exactly 0.5 -> dropped
        inst[4:6, :20] = 26003                       # 40 px -> kept
        inst[8, :31] = 24001                         # 31 px -> dropped: person absent
        inst[10:12, 40:57] = 24002                   # 34 px, but split below
        inst[10, 40:43] = 7                          # 34 - 3 = 31 px -> dropped
    else:
        inst[20:23, 10:26] = 26001                   # 48 px, the same id as in photo 0: separate
        inst[30, :33] = 33001                        # 33 px bicycle -> kept
    return inst


def write_dataset(root, n: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    for d in ("train_label", "train_inst", "train_img"):
        (root / d).mkdir(parents=True, exist_ok=True)
    scenes = []
    for i in range(n):
        inst = area_scene(i)
        label = np.where(inst >= 1000, inst // 1000, inst)
        photo = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(label.astype(np.uint8)).save(root / "train_label" / f"{i:03d}.png")
        Image.fromarray(inst.astype(np.uint16)).save(root / "train_inst" / f"{i:03d}.png")
        Image.fromarray(photo).save(root / "train_img" / f"{i:03d}.png")
        scenes.append((inst, photo))
    return scenes


def masked_means(feat: torch.Tensor, inst: np.ndarray) -> torch.Tensor:
    """feat [F,H,W] -> every pixel replaced by its instance's mean, one masked mean per id."""
    out = torch.empty_like(feat, dtype=torch.float64)
    for i in np.unique(inst):
        mask = torch.from_numpy(inst == i)
        out[:, mask] = feat[:, mask].double().mean(1, keepdim=True)
    return out


def loop_instance_features(encoder, cfg, inst: np.ndarray, photo: np.ndarray):
    """The official way, written plainly: E's output, one masked mean per instance id; for a local
    model at G1's resolution first (the trainer's rule), upsampled, then per full-size instance."""
    image = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 127.5 - 1
    small = inst
    with torch.no_grad():
        x = image
        for _ in range(cfg.enhancers):
            x, small = downsample_2x(x), small[::2, ::2]
        feat = masked_means(encoder.model(x)[0], small)
    s = 2 ** cfg.enhancers
    feat = feat.repeat_interleave(s, 1).repeat_interleave(s, 2)
    out = []
    for i in np.unique(inst):
        mask = torch.from_numpy(inst == i)
        label = int(i) if i < 1000 else int(i) // 1000
        ratio = mask.sum().item() / (inst.size // 32)
        out.append((label, feat[:, mask].mean(1).numpy(), ratio))
    return out


def sorted_rows(a):
    a = np.asarray(a, dtype=np.float64)
    return a[np.lexsort(a.T[::-1])]


def expected_kept(encoder, cfg, scenes):
    kept: dict[int, list] = {}
    for inst, photo in scenes:
        for label, feat, ratio in loop_instance_features(encoder, cfg, inst, photo):
            if ratio > 0.5:
                kept.setdefault(label, []).append(feat)
    return {k: np.stack(v) for k, v in kept.items()}


def test_area_rule_keeps_exactly_the_reference_instances(tmp_path):
    scenes = write_dataset(tmp_path / "data")
    model = tmp_path / "model.pt"
    enc = tiny_model(model, GLOBAL).eval()
    want = expected_kept(enc, GLOBAL, scenes)
    assert sorted(want) == [7, 26, 33] and len(want[26]) == 3     # 26001, 26003, and 26001 again
    # More clusters than instances: every kept instance is its own centre, so the centres are
    # exactly the kept instances' features.
    code, out = run_cli(["features", "--engine", model, "--data", tmp_path / "data",
                         "--clusters", 50, "--device", "cpu", "--resize-or-crop", "none", "--workers", 0])
    assert code == 0, out
    assert "from 6 of 9 instances" in out           # road x2, 26001, 26003, 26001', 33001
    got = load_checkpoint(model).features
    assert sorted(got) == [7, 26, 33]                # person (24): every instance <= 0.5, absent
    for label, feats in want.items():
        assert got[label].dtype == torch.float32
        # fp32 sums over up to ~2000 pixels against a float64 masked mean of the same output:
        # N*eps ~ 1e-4 relative bound.
        np.testing.assert_allclose(sorted_rows(got[label].numpy()), sorted_rows(feats),
                                   rtol=1e-4, atol=1e-5)


def test_kmeans_per_label_capped_at_clusters(tmp_path):
    from sklearn.cluster import KMeans
    scenes = write_dataset(tmp_path / "data")
    model = tmp_path / "model.pt"
    enc = tiny_model(model, GLOBAL).eval()
    want = expected_kept(enc, GLOBAL, scenes)
    code, out = run_cli(["features", "--engine", model, "--data", tmp_path / "data",
                         "--clusters", 2, "--device", "cpu", "--resize-or-crop", "none", "--workers", 1])
    assert code == 0, out
    got = load_checkpoint(model).features
    assert {k: v.shape for k, v in got.items()} == {7: (2, 3), 26: (2, 3), 33: (1, 3)}
    ref = KMeans(n_clusters=2, random_state=0, n_init=10).fit(want[26]).cluster_centers_
    np.testing.assert_allclose(sorted_rows(got[26].numpy()), sorted_rows(ref), rtol=1e-4,
                               atol=1e-5)
    # The generator and encoder are untouched by the rewrite.
    before = Checkpoint(GLOBAL, {}, enc.state_dict())
    after = load_checkpoint(model)
    for k, v in before.encoder.items():
        assert torch.equal(after.encoder[k], v)


def test_local_model_encodes_at_g1_resolution():
    torch.manual_seed(1)
    enc = build_encoder(LOCAL).eval()
    inst = area_scene(0)
    inst[5, 7] = 26009                     # one pixel on an odd row: gone at E's resolution
    photo = np.random.default_rng(3).integers(0, 256, (H, W, 3), dtype=np.uint8)
    image = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 127.5 - 1
    inst_t = torch.from_numpy(inst)[None, None].int()
    with torch.no_grad():
        fmap = encode_photo(enc, LOCAL, image, inst_t)
        # The same function the trainer feeds G with: the dictionary must match what G saw.
        trained = encode_features(enc, image, inst_t, LOCAL.enhancers)
    torch.testing.assert_close(fmap, trained, rtol=0, atol=1e-6)
    for (label, feat, _), i in zip(loop_instance_features(enc, LOCAL, inst, photo), np.unique(inst)):
        px = fmap[0][:, torch.from_numpy(inst == i)]
        np.testing.assert_allclose(px.numpy(), np.broadcast_to(feat[:, None], px.shape),
                                   rtol=1e-4, atol=1e-5)       # fp32 sums, as above


def test_official_features_round_trip(tmp_path):
    cfg = GLOBAL
    rng = np.random.default_rng(0)
    feats = {7: torch.from_numpy(rng.standard_normal((4, 3)).astype(np.float32)),
             26: torch.from_numpy(rng.standard_normal((10, 3)).astype(np.float32)),
             33: torch.from_numpy(rng.standard_normal((1, 3)).astype(np.float32))}
    npy = tmp_path / "features_clustered_010.npy"
    write_official_features(feats, npy)
    raw = np.load(npy, allow_pickle=True).item()                # the official reader's way
    assert sorted(raw) == [7, 26, 33] and raw[26].dtype == np.float64
    torch.manual_seed(0)
    torch.save(build_generator(cfg).state_dict(), tmp_path / "latest_net_G.pth")
    torch.save(build_encoder(cfg).state_dict(), tmp_path / "latest_net_E.pth")
    code, out = run_cli(["import-official", "--generator", tmp_path / "latest_net_G.pth",
                         "--encoder", tmp_path / "latest_net_E.pth", "--features", npy,
                         "--out", tmp_path / "model.pt"])
    assert code == 0, out
    back = load_checkpoint(tmp_path / "model.pt").features
    assert sorted(back) == sorted(feats)
    for k, v in feats.items():
        assert torch.equal(back[k], v)               # float32 -> float64 -> float32 is exact


def test_features_export_official_reads_back(tmp_path):
    write_dataset(tmp_path / "data")
    model = tmp_path / "model.pt"
    tiny_model(model, GLOBAL)
    npy = tmp_path / "out" / "features.npy"
    npy.parent.mkdir()
    code, out = run_cli(["features", "--engine", model, "--data", tmp_path / "data",
                         "--device", "cpu", "--resize-or-crop", "none", "--export-official", npy])
    assert code == 0, out
    stored = load_checkpoint(model).features
    exported = read_official_features(npy)
    assert sorted(exported) == sorted(stored)
    for k in stored:
        assert torch.equal(exported[k], stored[k])
    assert [p.name for p in npy.parent.iterdir()] == ["features.npy"]   # no temporary left


def test_features_errors_are_one_line(tmp_path):
    cfg = ModelConfig(label_nc=35, netG="global", ngf=4, n_downsample_global=2, n_blocks_global=1)
    model = tmp_path / "nofeat.pt"
    torch.manual_seed(0)
    save_checkpoint(Checkpoint(cfg, build_generator(cfg).state_dict()), model)
    write_dataset(tmp_path / "data")
    code, out = run_cli(["features", "--engine", model, "--data", tmp_path / "data",
                         "--device", "cpu", "--resize-or-crop", "none"])
    assert code == 2 and "has no encoder" in out and "Traceback" not in out
    model2 = tmp_path / "model.pt"
    tiny_model(model2, GLOBAL)
    (tmp_path / "data" / "train_img" / "001.png").unlink()
    code, out = run_cli(["features", "--engine", model2, "--data", tmp_path / "data",
                         "--device", "cpu", "--resize-or-crop", "none"])
    assert code == 2 and "001.png" in out and "no photo" in out
    assert load_checkpoint(model2).features is None                 # untouched on failure


def test_photos_load_as_the_model_was_trained(tmp_path):
    from p2phd_infer.train.features import training_load_options
    ckpt = Checkpoint(GLOBAL, {}, extra={"train_info": {"step": 3}})
    assert training_load_options(ckpt, None, None) == ("scale_width", 1024)   # trainer defaults
    ckpt.extra["train_info"].update(resize_or_crop="none", load_size=2048)
    assert training_load_options(ckpt, None, None) == ("none", 2048)
    assert training_load_options(ckpt, "scale_width", 512) == ("scale_width", 512)
    # scale_width to 128: the 64x32 photos are encoded at 128x64, ratios taken there (4x pixels).
    write_dataset(tmp_path / "data")
    model = tmp_path / "model.pt"
    tiny_model(model, GLOBAL)
    code, out = run_cli(["features", "--engine", model, "--data", tmp_path / "data",
                         "--device", "cpu", "--load-size", 128])
    assert code == 0 and "from 6 of 9 instances" in out, out


def test_encoder_size_must_fit():
    enc = build_encoder(GLOBAL)
    with pytest.raises(ValueError, match="64x30 is not a multiple of 4"):
        encode_photo(enc, GLOBAL, torch.zeros(1, 3, 30, 64), torch.zeros(1, 1, 30, 64).int())
