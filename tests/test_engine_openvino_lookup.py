"""The table-lookup first layer: exact against the dense convolution it replaces (alone, in the
whole network, and through OpenVINO), on fresh random inputs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("openvino")

from p2phd_infer.config import ModelConfig  # noqa: E402
from p2phd_infer.engines.openvino_convert import (LookupFirstLayer,  # noqa: E402
                                                  LookupSynthesizer)
from p2phd_infer.labels import encode_labels  # noqa: E402
from p2phd_infer.networks import build_generator  # noqa: E402
from p2phd_infer.synthesizer import Synthesizer  # noqa: E402

from test_engine_openvino import H, TINY, W, cache, checkpoint, inputs, reference  # noqa: E402,F401

# fp32 against fp32: the same products summed in another order; measured 2e-7 on the layer and
# 2e-6 on the network's image. A wrong tap, code or reflection is off by > 1e-2.
TOL = 1e-5


@pytest.mark.parametrize("use_instance,feat_num", [(True, 3), (False, 0)])
def test_lookup_layer_is_the_dense_convolution(use_instance, feat_num):
    cfg = ModelConfig(**{**TINY, "label_nc": 11}, use_instance=use_instance, feat_num=feat_num)
    g = torch.Generator().manual_seed(31)
    conv = torch.nn.Conv2d(cfg.input_nc, 6, 7)
    with torch.no_grad():
        # Scaled as an initialised or trained layer (1/sqrt(fan-in)): outputs of order 1, so
        # the tolerance is relative to them.
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / (cfg.input_nc * 49) ** 0.5)
        conv.bias.copy_(torch.randn(6, generator=g))
    # Ids beyond the classes (an all-zero one-hot) and negative ones are in the mix.
    label = torch.randint(-1, cfg.label_nc + 2, (2, 1, 20, 28), generator=g, dtype=torch.int32)
    inst = torch.randint(0, 4, label.shape, generator=g, dtype=torch.int32)
    feat = torch.randn(2, feat_num, 20, 28, generator=g) if feat_num else None
    x = encode_labels(label, inst, cfg.label_nc, use_instance, feat)
    with torch.no_grad():
        want = F.conv2d(F.pad(x, (3, 3, 3, 3), mode="reflect"), conv.weight, conv.bias)
        got = LookupFirstLayer(conv, cfg)(label, inst, feat)
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= TOL


@pytest.mark.parametrize("netG", ["local", "global"])
def test_lookup_network_is_the_network(netG):
    cfg = ModelConfig(**TINY, netG=netG, feat_num=3)
    torch.manual_seed(32)
    synth = Synthesizer(cfg, build_generator(cfg)).eval()
    g = torch.Generator().manual_seed(33)
    label = torch.randint(0, cfg.label_nc, (2, 1, H, W), generator=g, dtype=torch.int32)
    inst = torch.randint(0, 5, label.shape, generator=g, dtype=torch.int32)
    feat = torch.randn(2, 3, H, W, generator=g)
    with torch.no_grad():
        assert float((LookupSynthesizer(synth)(label, inst, feat) -
                      synth(label, inst, feat)).abs().max()) <= TOL


def test_lookup_graph_on_openvino(tmp_path, cache):
    from p2phd_infer.checkpoint import save_checkpoint
    from p2phd_infer.engines.openvino import open_openvino
    ckpt = checkpoint(seed=34, features=True)
    save_checkpoint(ckpt, tmp_path / "m.pt")
    engine = open_openvino(tmp_path / "m.pt", lookup=True)
    x = inputs(ckpt, 2, seed=35)
    got = engine(x["label"], x["inst"], x["feat"])
    assert float((got - reference(ckpt, x)).abs().max()) <= 1e-4     # TOL of the f32 engine
    inner = engine.engine_for(H, W)
    assert inner.info.extra["lookup_first_layer"]
    from p2phd_infer.engines.openvino_cpu import core
    ops = [op.get_type_name() for op in core().read_model(str(inner.path)).get_ops()]
    assert sum(t.startswith("EmbeddingBag") for t in ops) == 1
    # The replaced convolution is gone; the feature channels' own 3-channel one stands in its
    # place, so the count is the network's.
    convs = [m for m in build_generator(ckpt.config).modules() if isinstance(m, torch.nn.Conv2d)]
    assert sum(t == "Convolution" for t in ops) == len(convs)
