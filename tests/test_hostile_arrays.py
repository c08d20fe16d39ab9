"""Unusual arrays handed to the embedding API and the Runtime: the project's InputError naming the
argument and its dtype, layout or device, never torch's own ValueError / NotImplementedError; data
torch cannot take as it is but that holds valid ids exactly (another byte order) is converted."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from helpers import random_checkpoint
from p2phd_infer.api import Pix2PixHD
from p2phd_infer.config import ModelConfig
from p2phd_infer.engines import TorchEngine
from p2phd_infer.errors import InputError
from p2phd_infer.ids import as_ids

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = ModelConfig(label_nc=6, ngf=4, n_downsample_global=2, n_blocks_global=1, n_blocks_local=1)
RGB_IN = ModelConfig(label_nc=0, use_instance=False, ngf=4, n_downsample_global=2,
                     n_blocks_global=1, n_blocks_local=1)
H, W = 16, 24


@pytest.fixture(scope="module")
def p2p():
    return Pix2PixHD(TorchEngine(random_checkpoint(CFG, seed=1, std=0.2), "cpu", mode="plain"))


def scene(seed=0):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 6, (H, W)).astype(np.int32)
    return label, label * 1000 + rng.integers(0, 3, (H, W)).astype(np.int32)


def test_big_endian_arrays_are_read_exactly(p2p):
    """astype('>i4') gave torch's "byte order different from the native byte order"."""
    label, inst = scene()
    want = p2p(label, inst)
    assert np.array_equal(p2p(label.astype(">i4"), inst), want)
    assert np.array_equal(p2p(label, inst.astype(">u2")), want)       # one more: an inst map
    assert np.array_equal(p2p(label.astype(">i8"), inst.astype(">i4")), want)
    with p2p.runtime() as rt:
        assert np.array_equal(rt.submit(label.astype(">i2"), inst.astype(">i4")).result(), want)
    with pytest.raises(InputError, match="holds id 4294967295, outside int32"):
        as_ids(np.full((2, 2), 2**32 - 1, ">u4"), "instance map", "inst")


def _sparse_csr(x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # "sparse CSR support is in beta"
        return x.to_sparse_csr()


def _quantized(x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # quantized tensors are deprecated
        return torch.quantize_per_tensor(x.float(), 1.0, 0, torch.qint32)


def _nested(x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # "nested tensors are a prototype"
        return torch.nested.nested_tensor([x])


@pytest.mark.parametrize("make, fault", [
    (lambda t: t.to_sparse(), "label map is a sparse_coo tensor; give a dense one"),
    (_sparse_csr, "label map is a sparse_csr tensor; give a dense one"),
    (_nested, "label map is a nested tensor; give a dense one"),
    (lambda t: t.to("meta"), "label map is on device meta; give a CPU or CUDA tensor"),
    (_quantized, "label map has the quantized dtype torch.qint32; give plain integers"),
    (lambda t: t.to(torch.complex64), "label map has dtype torch.complex64; ids must be integers"),
])
def test_tensors_no_engine_input_is_made_of_are_refused_by_name(p2p, make, fault):
    """Sparse and meta tensors gave NotImplementedError from deep inside torch."""
    label, inst = scene()
    bad = make(torch.from_numpy(label))
    with pytest.raises(InputError, match=fault) as e:
        p2p(bad, inst)
    assert e.value.path == "label map"
    with p2p.runtime() as rt:                     # the Runtime's in-memory frames alike
        with pytest.raises(InputError, match=fault):
            rt.submit(bad, inst, name="frame 7").result()


def test_the_instance_map_and_an_rgb_input_are_named_too(p2p):
    label, inst = scene()
    with pytest.raises(InputError, match="instance map is on device meta") as e:
        p2p(label, torch.from_numpy(inst).to("meta"))
    assert e.value.path == "instance map"
    rgb = Pix2PixHD(TorchEngine(random_checkpoint(RGB_IN, seed=2), "cpu", mode="plain"))
    image = torch.zeros(H, W, 3, dtype=torch.uint8)
    with pytest.raises(InputError, match="input image is a sparse_coo tensor"):
        rgb(image.to_sparse())
    with pytest.raises(InputError, match="input image is on device meta"):
        rgb(image.to("meta"))


@pytest.mark.parametrize("array, fault", [
    (np.array([[object()] * W] * H), "dtype object; ids must be integers"),
    (np.zeros((H, W), dtype=[("a", "<i4")]), r"dtype \[\('a', '<i4'\)\]; ids must be integers"),
    ([[0] * W] * H, "expected a file path, a numpy array or a torch tensor, got list"),
])
def test_numpy_arrays_of_no_integer_type_are_refused_by_name(p2p, array, fault):
    with pytest.raises(InputError, match=fault):
        p2p(array, scene()[1])
