"""Training datasets: both layouts, resizing, flips, int32 ids, and all faults reported at once."""
import numpy as np
import pytest
import torch
from PIL import Image

from p2phd_infer.train.datasets import DatasetError, PairedDataset, find_samples, target_size
from p2phd_infer.train.scenes import make_scenes, render_scene


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 3, 96, 48, seed=11)
    return root


def test_pix2pixhd_items(scenes):
    ds = PairedDataset(scenes, resize_or_crop="none", multiple=16, flip=False)
    item = ds[0]
    assert item["label"].dtype == torch.int32 and item["inst"].dtype == torch.int32
    assert item["label"].shape == (1, 48, 96) and item["image"].shape == (3, 48, 96)
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    s = render_scene(11, 0, 96, 48)
    assert np.array_equal(item["inst"][0].numpy(), s.inst)         # ids > 26000 exact
    assert torch.allclose(item["image"], torch.from_numpy(s.image).permute(2, 0, 1) / 127.5 - 1)


def test_scale_width_resizes_ids_nearest(scenes):
    ds = PairedDataset(scenes, resize_or_crop="scale_width", load_size=64, multiple=16, flip=False)
    item = ds[1]
    assert item["label"].shape == (1, 32, 64) and item["image"].shape == (3, 32, 64)
    s = render_scene(11, 1, 96, 48)
    assert set(item["inst"].unique().tolist()) <= set(np.unique(s.inst).tolist())
    assert set(item["label"].unique().tolist()) <= set(np.unique(s.label).tolist())
    assert target_size(2048, 1024, "scale_width", 1024, 32) == (1024, 512)
    assert target_size(100, 50, "none", 0, 32) == (96, 64)


def test_flips_depend_on_seed_epoch_index_only(scenes):
    ds = PairedDataset(scenes, resize_or_crop="none", multiple=16, flip=True, seed=3)
    plain = PairedDataset(scenes, resize_or_crop="none", multiple=16, flip=False)
    seen = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        a, b = ds[0]["label"], ds[0]["label"]
        assert torch.equal(a, b)
        flipped = torch.equal(a, plain[0]["label"].flip(-1))
        assert flipped or torch.equal(a, plain[0]["label"])
        seen.add(flipped)
    assert seen == {True, False}


def _cityscapes_tree(root, scenes_root):
    for split_city, stem in (("train/aachen", "aachen_000000_000019"),
                             ("train/bremen", "bremen_000001_000019")):
        gt, img = root / "gtFine" / split_city, root / "leftImg8bit" / split_city
        gt.mkdir(parents=True, exist_ok=True)
        img.mkdir(parents=True, exist_ok=True)
        src = sorted((scenes_root / "train_label").iterdir())[0].stem
        (gt / f"{stem}_gtFine_labelIds.png").write_bytes(
            (scenes_root / "train_label" / f"{src}.png").read_bytes())
        (gt / f"{stem}_gtFine_instanceIds.png").write_bytes(
            (scenes_root / "train_inst" / f"{src}.png").read_bytes())
        (img / f"{stem}_leftImg8bit.png").write_bytes(
            (scenes_root / "train_img" / f"{src}.png").read_bytes())


def test_cityscapes_layout(tmp_path, scenes):
    _cityscapes_tree(tmp_path, scenes)
    ds = PairedDataset(tmp_path, mode="cityscapes", resize_or_crop="none", multiple=16, flip=False)
    assert [s.stem for s in ds.samples] == ["aachen_000000_000019", "bremen_000001_000019"]
    assert ds[1]["inst"].max() >= 26000


def test_all_faults_reported_together(tmp_path, scenes):
    make_scenes(tmp_path, 4, 64, 32, seed=2)
    stems = sorted(p.stem for p in (tmp_path / "train_label").iterdir())
    (tmp_path / "train_img" / f"{stems[0]}.png").unlink()                   # missing photo
    (tmp_path / "train_inst" / f"{stems[1]}.png").unlink()                  # missing instance map
    Image.new("RGB", (32, 32)).save(tmp_path / "train_img" / f"{stems[2]}.png")   # size mismatch
    Image.new("RGB", (64, 32)).save(tmp_path / "train_img" / "orphan.png")        # no label
    with pytest.raises(DatasetError) as e:
        find_samples(tmp_path)
    msg = str(e.value)
    assert "4 problems" in msg
    assert f"{stems[0]}.png: no photo" in msg
    assert f"{stems[1]}.png: no instance map" in msg
    assert f"{stems[2]}.png: size mismatch" in msg and "32x32" in msg
    assert "orphan.png: photo without a label map" in msg
    # Without instance maps needed, the missing one is no fault.
    with pytest.raises(DatasetError) as e:
        find_samples(tmp_path, need_inst=False)
    assert "3 problems" in str(e.value)


def test_cityscapes_missing_photo_named(tmp_path, scenes):
    _cityscapes_tree(tmp_path, scenes)
    (tmp_path / "leftImg8bit/train/bremen/bremen_000001_000019_leftImg8bit.png").unlink()
    with pytest.raises(DatasetError, match="bremen_000001_000019_gtFine_labelIds.png: no photo"):
        find_samples(tmp_path, mode="cityscapes")


def test_label_beyond_label_nc_is_named(scenes):
    ds = PairedDataset(scenes, resize_or_crop="none", multiple=16, flip=False, label_nc=20)
    with pytest.raises(ValueError, match="label id 26 >= label_nc 20"):
        ds[0]
