"""FastGenerator / FastEngine against the Synthesizer: the same function, ids in, image out.

Random weights (PyTorch's default init) and fresh random inputs each run (seed printed on
failure), tiny configs (ngf 4, 1-2 downsamplings, 1-2 blocks) so the whole file stays well inside
a minute on two CPU cores, the Triton paths included (Triton's interpreter on the CPU).

Tolerance, fp32: max |fast - synthesizer| <= 1e-4 on images in [-1, 1]. Every layer computes the
same sums in another order (lookup vs convolution over the one-hot; Chan-merged vs torch's
instance-norm statistics), i.e. fp32 rounding, ~1e-6 per layer and renormalised by every
InstanceNorm, so a correct network lands near 1e-6; a wrong tap, border, class row, skip or
activation moves pixels by 1e-2 or more.
On CUDA (GPU-only tests): fp16 against the fp32 Synthesizer is held to PSNR >= 40 dB (the
product's quality bar), CUDA-graph replay against the same engine's eager forward to 1e-3
(one fp16 unit; cuDNN may pick other algorithms while capturing).
"""
from __future__ import annotations

import copy
import os
import random

import pytest
import torch

from p2phd_infer.checkpoint import Checkpoint
from p2phd_infer.config import ModelConfig
from p2phd_infer.engines import EngineError, EngineInfo, TorchEngine
from p2phd_infer.engines import pytorch as torch_engine
from p2phd_infer.engines.fast import FastGenerator
from p2phd_infer.errors import OptionError
from p2phd_infer.kernels._backend import interpreting, triton
from p2phd_infer.networks import build_generator
from p2phd_infer.synthesizer import Synthesizer, psnr

CUDA = torch.cuda.is_available()
TRITON_DEV = "cuda" if CUDA and triton is not None else (
    "cpu" if triton is not None and interpreting() else None)
needs_triton = pytest.mark.skipif(
    TRITON_DEV is None, reason="no CUDA, and TRITON_INTERPRET=1 was not set before triton import")
needs_cuda = pytest.mark.skipif(not CUDA or triton is None,
                                reason="needs a CUDA GPU with triton (fp16 kernels, CUDA graphs)")

LOCAL = ModelConfig(label_nc=5, netG="local", ngf=4, n_downsample_global=1, n_blocks_global=1,
                    n_local_enhancers=1, n_blocks_local=1)
GLOBAL_FEAT = ModelConfig(label_nc=6, netG="global", ngf=4, n_downsample_global=2,
                          n_blocks_global=2, feat_num=2)
LOCAL2 = ModelConfig(label_nc=4, use_instance=False, netG="local", ngf=4, n_downsample_global=1,
                     n_blocks_global=1, n_local_enhancers=2, n_blocks_local=1, feat_num=1)


@pytest.fixture
def gen():
    # A fresh seed every run; failures print it (gen.initial_seed()) to replay.
    return torch.Generator().manual_seed(random.randrange(2**31))


def _inputs(gen, cfg, B, H, W):
    label = torch.randint(0, cfg.label_nc, (B, 1, H, W), generator=gen, dtype=torch.int32)
    label[:, :, : H // 3] = cfg.label_nc - 1                      # the last class, as a region
    label.view(-1)[torch.randperm(label.numel(), generator=gen)[:3]] = cfg.label_nc  # no class
    inst = torch.randint(0, 3, (B, 1, H, W), generator=gen, dtype=torch.int32) + 26000
    feat = torch.randn(B, cfg.feat_num, H, W, generator=gen) if cfg.feat_num else None
    return label, inst, feat


def _model(gen, cfg):
    torch.manual_seed(gen.initial_seed())
    return build_generator(cfg).eval()


def _check(out, ref, gen, tol=1e-4):
    assert out.shape == ref.shape
    assert ref.std() > 0.05, "degenerate reference image"
    err = (out.float() - ref.float()).abs().max().item()
    assert err <= tol, f"max |fast - synthesizer| = {err:.3g} > {tol} (seed {gen.initial_seed()})"


@pytest.mark.parametrize("cfg", [LOCAL, GLOBAL_FEAT, LOCAL2], ids=["local", "global-feat",
                                                                  "local2-feat-noinst"])
def test_reference_walk_equals_synthesizer(gen, cfg):
    g = _model(gen, cfg)
    label, inst, feat = _inputs(gen, cfg, 2, 32, 40)
    with torch.no_grad():
        ref = Synthesizer(cfg, g)(label, inst, feat)
        fast = FastGenerator(cfg, copy.deepcopy(g), "cpu", torch.float32, backend="torch")
        _check(fast(label, inst, feat), ref, gen)
        # feat omitted on a features model: zeros, as the Synthesizer does.
        if cfg.feat_num:
            _check(fast(label, inst), Synthesizer(cfg, g)(label, inst), gen)


@needs_triton
@pytest.mark.parametrize("cfg,levers", [
    (LOCAL, {"lookup_pooled": True}),
    (GLOBAL_FEAT, {"lookup_full": False}),
    (LOCAL, {"fused_norm": False}),
], ids=["local-all-lookups", "global-feat-dense-first", "local-defaults-torch-norm"])
def test_triton_path_equals_synthesizer(gen, cfg, levers):
    g = _model(gen, cfg)
    B, H, W = (1, 24, 20) if TRITON_DEV == "cpu" else (2, 64, 96)
    label, inst, feat = _inputs(gen, cfg, B, H, W)
    with torch.no_grad():
        ref = Synthesizer(cfg, g)(label, inst, feat)
        fast = FastGenerator(cfg, copy.deepcopy(g), TRITON_DEV, torch.float32, backend="triton",
                             **levers)
        dev = torch.device(TRITON_DEV)
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # fp32 on a GPU too
            out = fast(label.to(dev), inst.to(dev), None if feat is None else feat.to(dev))
        _check(out.cpu(), ref, gen)


def test_fast_generator_on_cpu_and_the_engine_modes(gen):
    cfg = LOCAL
    g = _model(gen, cfg)
    ckpt = Checkpoint(cfg, {k: v.clone() for k, v in g.state_dict().items()})
    label, inst, _ = _inputs(gen, cfg, 2, 16, 24)
    with torch.no_grad():
        ref = Synthesizer(cfg, g)(label, inst)
        fast = FastGenerator(cfg, ckpt, "cpu", torch.float32)      # the references, on the CPU
        _check(fast(label, inst), ref, gen)
    plain = TorchEngine(ckpt, "cpu")
    assert plain.mode == "plain" and plain.info.extra["mode"] == "plain"   # auto on a CPU
    assert isinstance(plain.info, EngineInfo) and plain.info.precision == "fp32"
    with pytest.raises(OptionError, match="fast is the CUDA path"):
        TorchEngine(ckpt, "cpu", mode="fast")
    with pytest.raises(OptionError, match="precision"):
        TorchEngine(ckpt, "cpu", precision="fp8")
    with pytest.raises(OptionError, match="190x slower"):
        TorchEngine(ckpt, "cpu", precision="fp16")
    plain.info.size = (32, 32)
    with pytest.raises(EngineError, match="built for"):
        plain.check_shape(label)


@pytest.fixture
def auto_tries_fast(monkeypatch):
    """mode auto as on CUDA: the fast path is built and checked (here on the CPU, without CUDA
    graphs: the FastGenerator runs its references)."""
    monkeypatch.setattr(torch_engine, "_wants_fast", lambda mode, device: mode != "plain")
    return {"cuda_graphs": False}


def _engine_pair(gen):
    cfg = LOCAL
    g = _model(gen, cfg)
    ckpt = Checkpoint(cfg, {k: v.clone() for k, v in g.state_dict().items()})
    label, inst, _ = _inputs(gen, cfg, 1, 16, 24)
    return ckpt, label, inst, TorchEngine(ckpt, "cpu", mode="plain")(label, inst)


def test_auto_uses_the_fast_path_when_it_checks_out(gen, auto_tries_fast, recwarn):
    ckpt, label, inst, want = _engine_pair(gen)
    eng = TorchEngine(ckpt, "cpu", fast_options=auto_tries_fast)
    assert eng.mode == "fast" and eng.fallback_reason is None
    assert not [w for w in recwarn if issubclass(w.category, torch_engine.FastPathWarning)]
    _check(eng(label, inst), want, gen)


def test_auto_falls_back_when_the_fast_path_cannot_be_built(gen, auto_tries_fast, monkeypatch):
    ckpt, label, inst, want = _engine_pair(gen)

    def broken(*a, **k):
        raise RuntimeError("ptxas: no such toolchain")
    monkeypatch.setattr("p2phd_infer.engines.fast.FastGenerator.__init__", broken)
    with pytest.warns(torch_engine.FastPathWarning, match="ptxas: no such toolchain"):
        eng = TorchEngine(ckpt, "cpu", fast_options=auto_tries_fast)
    assert eng.mode == "plain" and "ptxas" in eng.fallback_reason
    assert torch.equal(eng(label, inst), want)                  # the plain network, exactly


def test_auto_falls_back_when_the_fast_path_is_wrong(gen, auto_tries_fast, monkeypatch):
    ckpt, label, inst, want = _engine_pair(gen)
    real = FastGenerator.forward
    monkeypatch.setattr(FastGenerator, "forward", lambda self, *a: real(self, *a).flip(-1))
    with pytest.warns(torch_engine.FastPathWarning, match="differs from the plain network"):
        eng = TorchEngine(ckpt, "cpu", fast_options=auto_tries_fast)
    assert eng.mode == "plain"
    assert torch.equal(eng(label, inst), want)


def test_a_fast_path_failing_later_falls_back_for_that_call(gen, auto_tries_fast, monkeypatch):
    """A failure after the check (a capture at a new size) still gives the plain image."""
    ckpt, label, inst, want = _engine_pair(gen)
    eng = TorchEngine(ckpt, "cpu", fast_options=auto_tries_fast)
    assert eng.mode == "fast"

    def capture_fails(self, *a):
        raise RuntimeError("CUDA graph capture failed")
    monkeypatch.setattr(FastGenerator, "forward", capture_fails)
    with pytest.warns(torch_engine.FastPathWarning, match="capture failed"):
        got = eng(label, inst)
    assert eng.mode == "plain" and eng.info.extra["mode"] == "plain"
    assert torch.equal(got, want)


@needs_triton
def test_custom_ops_have_matching_fakes():
    """torch.compile traces the kernels as custom ops; their fake (meta) outputs must match the
    real ones in shape, dtype and strides."""
    from p2phd_infer.kernels.label_conv import LabelConv, label_codes
    dev = TRITON_DEV
    x = torch.randn(1, 4, 8, 9, device=dev).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.p2phd_infer.instance_norm_act.default, (x, True, None, 1),
                          test_utils=("test_schema", "test_faketensor"))
    lc = LabelConv(torch.randn(5, 3, 7, 7), torch.randn(5), 2, False).to(dev, torch.float32)
    code = label_codes(torch.randint(0, 3, (1, 1, 8, 9), device=dev), None, 2)
    torch.library.opcheck(torch.ops.p2phd_infer.label_conv.default,
                          (code, lc.table, lc.bias, 5, False, None, torch.float32, True),
                          test_utils=("test_schema", "test_faketensor"))


# --- GPU only --------------------------------------------------------------------------------

def _psnr(a, b):
    return psnr(a, b)          # images span [-1, 1]


@needs_cuda
def test_cuda_fp16_graph_engine_quality_and_replay(gen):
    cfg = ModelConfig(label_nc=35, netG="local", ngf=8, n_downsample_global=2, n_blocks_global=2,
                      n_local_enhancers=1, n_blocks_local=1)
    g = _model(gen, cfg)
    ckpt = Checkpoint(cfg, {k: v.clone() for k, v in g.state_dict().items()})
    label, inst, _ = _inputs(gen, cfg, 2, 128, 256)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        ref = Synthesizer(cfg, g.cuda())(label.cuda(), inst.cuda()).cpu()
    eager = TorchEngine(ckpt, "cuda", precision="fp16", mode="fast",
                        fast_options={"cuda_graphs": False})
    graphed = TorchEngine(ckpt, "cuda", precision="fp16", mode="fast")
    a = eager(label.cuda(), inst.cuda()).float().cpu()
    assert _psnr(a, ref) >= 40, f"fp16 PSNR {_psnr(a, ref):.1f} dB (seed {gen.initial_seed()})"
    b1 = graphed(label.cuda(), inst.cuda()).float().cpu()          # captures
    label2, inst2, _ = _inputs(gen, cfg, 2, 128, 256)
    b2 = graphed(label2, inst2).float().cpu()                      # replays, host inputs
    assert (b1 - a).abs().max().item() <= 1e-3 * 2
    c2 = eager(label2.cuda(), inst2.cuda()).float().cpu()
    assert (b2 - c2).abs().max().item() <= 1e-3 * 2
    assert len(graphed._fast._graphs) == 2        # the check input's size, and this one


@needs_cuda
@pytest.mark.skipif(os.environ.get("P2PHD_TEST_COMPILE") != "1",
                    reason="torch.compile takes minutes; set P2PHD_TEST_COMPILE=1")
def test_cuda_compiled_fast_generator(gen):
    cfg = LOCAL
    g = _model(gen, cfg)
    ckpt = Checkpoint(cfg, {k: v.clone() for k, v in g.state_dict().items()})
    label, inst, _ = _inputs(gen, cfg, 1, 64, 64)
    eager = TorchEngine(ckpt, "cuda", precision="fp16", mode="fast",
                        fast_options={"cuda_graphs": False})
    comp = TorchEngine(ckpt, "cuda", precision="fp16", mode="fast", compile="default")
    a = eager(label.cuda(), inst.cuda()).float()
    b = comp(label.cuda(), inst.cuda()).float()
    assert _psnr(a, b) >= 40


@needs_triton
def test_custom_op_path_equals_direct_path(gen):
    """The path torch.compile traces (kernels as custom ops) computes what the direct one does."""
    cfg = GLOBAL_FEAT if TRITON_DEV == "cpu" else LOCAL
    g = _model(gen, cfg)
    label, inst, feat = _inputs(gen, cfg, 1, 16, 20)
    dev = torch.device(TRITON_DEV)
    args = (label.to(dev), inst.to(dev), None if feat is None else feat.to(dev))
    for lookup_full in (True, False):
        fast = FastGenerator(cfg, copy.deepcopy(g), TRITON_DEV, torch.float32, backend="triton",
                             lookup_full=lookup_full)
        with torch.no_grad():
            direct = fast(*args)
            fast.use_custom_ops = True
            via_ops = fast(*args)
        _same_or_close(direct, via_ops)


@needs_triton
def test_traces_as_one_graph_for_torch_compile(gen):
    """torch.compile sees the whole forward as one graph (fullgraph: no break at a kernel, a
    shape read or a host sync); aot_eager runs it without a C++ or GPU code generator."""
    cfg = LOCAL
    g = _model(gen, cfg)
    label, inst, _ = _inputs(gen, cfg, 1, 16, 20)
    dev = torch.device(TRITON_DEV)
    fast = FastGenerator(cfg, copy.deepcopy(g), TRITON_DEV, torch.float32, backend="triton")
    with torch.no_grad():
        ref = fast(label.to(dev), inst.to(dev))
        fast.use_custom_ops = True
        compiled = torch.compile(fast, backend="aot_eager", fullgraph=True, dynamic=False)
        out = compiled(label.to(dev), inst.to(dev))
    _same_or_close(out, ref)


def _same_or_close(a, b):
    """Equal on the CPU; on CUDA two runs of the same cuDNN convolution may pick different
    algorithms (not bitwise deterministic), so fp32 agreement within 1e-5 is the bound."""
    if a.is_cuda:
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    else:
        assert torch.equal(a, b)
