"""The one id-map validator (ids.py): what as_ids takes and gives, what check_maps refuses, and
decode_maps on PNG files; every fault an InputError naming its source."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from p2phd_infer.config import ModelConfig
from p2phd_infer.errors import InputError
from p2phd_infer.ids import (INT32_MAX, as_ids, as_tensor, check_maps, decode_maps,
                             label_range_fault)

CFG = ModelConfig(label_nc=6, ngf=4, n_downsample_global=2, n_blocks_global=1,
                  n_blocks_local=1)                       # stride 8, minimum 16x16
RGB = ModelConfig(label_nc=0, use_instance=False, ngf=4, n_downsample_global=2,
                  n_blocks_global=1, n_blocks_local=1)


def test_label_range_fault():
    assert label_range_fault(0, 5, 6) is None
    assert label_range_fault(0, 6, 6) == "label id 6 out of range: the model has label_nc 6 " \
                                         "(ids 0..5)"
    assert label_range_fault(-1, 3, 6).startswith("label id -1 out of range")


@pytest.mark.parametrize("dtype, kept", [(np.uint8, torch.uint8), (np.int8, torch.int32),
                                         (np.uint16, torch.int32), (np.int64, torch.int32),
                                         (np.uint32, torch.int32), (np.bool_, torch.int32)])
def test_as_ids_keeps_uint8_and_widens_the_rest_to_int32(dtype, kept):
    a = (np.arange(12).reshape(3, 4) % 2).astype(dtype)
    t = as_ids(a, "label map", "x")
    assert t.dtype == kept and t.shape == (3, 4)
    assert np.array_equal(t.numpy(), a.astype(np.int64))
    assert as_ids(torch.from_numpy(a.astype(np.int16)), "label map", "x").dtype == torch.int32


def test_as_ids_keeps_ids_exact_or_refuses_them():
    big = np.array([[0, INT32_MAX]], np.int64)
    assert as_ids(big, "instance map", "x").tolist() == [[0, INT32_MAX]]
    for bad in (np.array([[INT32_MAX + 1]], np.int64), np.array([[2**32 - 1]], np.uint32),
                torch.tensor([[-2**31 - 1]])):
        with pytest.raises(InputError, match="outside int32"):
            as_ids(bad, "instance map", "inst.png")
    with pytest.raises(InputError, match="inst.png: instance map has dtype float32; ids must be "
                                         "integers"):
        as_ids(np.zeros((2, 2), np.float32), "instance map", "inst.png")


def test_as_tensor_gives_a_dense_native_tensor_unchanged():
    a = np.arange(6, dtype=">i4").reshape(2, 3)
    t = as_tensor(a, "label map", "x")
    assert t.dtype == torch.int32 and t.tolist() == [[0, 1, 2], [3, 4, 5]]
    view = np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2]          # not contiguous
    assert as_tensor(view, "label map", "x").tolist() == view.tolist()
    with pytest.raises(InputError, match="label map is a sparse_coo tensor"):
        as_tensor(torch.zeros(2, 2).to_sparse(), "label map", "x")


def test_check_maps_sizes_and_pixel_limit():
    ok = torch.zeros(16, 24, dtype=torch.int32)
    check_maps(ok, ok, CFG, "f")
    with pytest.raises(InputError, match="f: size 24x8 is below this model's minimum 16x16"):
        check_maps(ok[:8], None, CFG, "f")
    with pytest.raises(InputError, match="above the limit of 100"):
        check_maps(ok, None, CFG, "f", max_pixels=100)
    with pytest.raises(InputError, match="differs from the label map's 24x16 \\(f\\)"):
        check_maps(ok, ok[:, :16], CFG, "f", inst_name="g")
    # A fixed-size engine: the frame padded to the stride must be its size.
    check_maps(torch.zeros(17, 20, dtype=torch.int32), None, CFG, "f", size=(24, 24))
    with pytest.raises(InputError, match="size 20x17 \\(padded to 24x24\\): this engine was "
                                         "built for 32x24"):
        check_maps(torch.zeros(17, 20, dtype=torch.int32), None, CFG, "f", size=(24, 32))


def test_check_maps_label_range_and_rgb_input():
    with pytest.raises(InputError, match="label id 6 out of range"):
        check_maps(torch.full((16, 16), 6, dtype=torch.int32), None, CFG, "f")
    check_maps(torch.zeros(3, 16, 16, dtype=torch.uint8), None, RGB, "f")
    with pytest.raises(InputError, match="label_nc 0 model takes an RGB input image"):
        check_maps(torch.zeros(16, 16, dtype=torch.int32), None, RGB, "f")


def test_decode_maps_reads_ids_and_rgb_files(tmp_path):
    label = np.random.default_rng(0).integers(0, 6, (16, 24)).astype(np.uint8)
    inst = (label.astype(np.uint16) * 1000 + 1)
    Image.fromarray(label).save(tmp_path / "l.png")
    Image.fromarray(inst).save(tmp_path / "i.png")
    lab, ins = decode_maps(str(tmp_path / "l.png"), str(tmp_path / "i.png"), CFG)
    assert np.array_equal(lab.numpy(), label) and np.array_equal(ins.numpy(), inst)
    with pytest.raises(InputError, match="no instance map found"):
        decode_maps(str(tmp_path / "l.png"), None, CFG)
    rgb = np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    img, none = decode_maps(str(tmp_path / "rgb.png"), None, RGB)
    assert none is None and img.dtype == torch.uint8 and img.shape == (3, 16, 24)
    assert np.array_equal(img.permute(1, 2, 0).numpy(), rgb)
