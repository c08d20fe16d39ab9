"""Training across processes: `torchrun --nproc-per-node 2 -m p2phd_infer.train ...` on the CPU
(gloo) trains, writes one checkpoint from rank 0, and its first step's gradients (each rank on
one sample, averaged by DDP) match one process on both samples (batch 2)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from p2phd_infer.checkpoint import load_checkpoint
from p2phd_infer.train.scenes import make_scenes

# G1 + encoder (both DDP-wrapped) + a 2-scale D at 32x16; no VGG (frozen, nothing to all-reduce).
TINY = ["--label-nc", "35", "--ngf", "4", "--n-downsample-global", "1", "--n-blocks-global", "1",
        "--instance-feat", "--feat-num", "2", "--nef", "4", "--n-downsample-e", "1",
        "--ndf", "4", "--n-layers-d", "2", "--num-d", "2", "--no-vgg",
        "--resize-or-crop", "scale_width", "--load-size", "32", "--num-workers", "0",
        "--niter", "10", "--niter-decay", "0", "--no-progress", "--device", "cpu"]

# Runs `python -m p2phd_infer.train` exactly, with a global optimizer hook (a public torch API)
# that saves each optimizer's gradients at its first step() to grads_rank<RANK>.pt.
PROBE = textwrap.dedent("""
    import os, runpy, sys, torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    first = []
    def hook(opt, args, kwargs):
        if any(o is opt for o in first):
            return
        first.append(opt)
        grads = [p.grad.detach().clone() if p.grad is not None else None
                 for g in opt.param_groups for p in g["params"]]
        saved = torch.load(out, weights_only=True) if os.path.exists(out) else []
        torch.save(saved + [grads], out)
    out = os.path.join(sys.argv.pop(1), f"grads_rank{os.environ.get('RANK', '0')}.pt")
    register_optimizer_step_pre_hook(hook)
    sys.argv[0] = "p2phd_infer.train"
    runpy.run_module("p2phd_infer.train", run_name="__main__")
""")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _run(cmd, cwd):
    res = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


@pytest.mark.skipif(not torch.distributed.is_available() or
                    not torch.distributed.is_gloo_available(),
                    reason="this PyTorch build has no gloo backend")
def test_torchrun_ddp_trains_and_matches_one_process_gradients(tmp_path):
    make_scenes(tmp_path / "data", 2, 64, 32, seed=5)
    (tmp_path / "probe.py").write_text(PROBE)
    common = ["--dataroot", tmp_path / "data", "--checkpoints-dir", tmp_path / "ck", *TINY]

    (tmp_path / "one").mkdir()
    _run([sys.executable, tmp_path / "probe.py", tmp_path / "one", *map(str, common),
          "--name", "one", "--batch-size", "2", "--max-steps", "1"], tmp_path)

    (tmp_path / "ddp").mkdir()
    log = _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", tmp_path / "probe.py", tmp_path / "ddp",
                *map(str, common), "--name", "ddp", "--batch-size", "1", "--max-steps", "3"],
               tmp_path)
    assert "2 process(es)" in log, log

    # One checkpoint, written once (rank 0), loadable, after 3 steps.
    run_dir = tmp_path / "ck" / "ddp"
    assert sorted(p.name for p in run_dir.iterdir() if p.is_file()) == \
        ["loss_log.csv", "model.pt", "trainer_state.pt"]
    ckpt = load_checkpoint(run_dir / "model.pt")
    assert ckpt.extra["train_info"]["step"] == 3 and ckpt.encoder is not None
    assert len((run_dir / "loss_log.csv").read_text().splitlines()) == 1 + 3

    one = torch.load(tmp_path / "one" / "grads_rank0.pt", weights_only=True)
    ranks = [torch.load(tmp_path / "ddp" / f"grads_rank{r}.pt", weights_only=True)
             for r in (0, 1)]
    assert len(one) == 2 and all(len(r) == 2 for r in ranks)   # opt_G (G + E), then opt_D
    for which, name in enumerate(("G and E", "D")):
        ref, g0, g1 = one[which], ranks[0][which], ranks[1][which]
        assert len(ref) == len(g0) == len(g1) and len(ref) > 10
        assert all(g is not None for g in ref + g0 + g1), name
        for a, b in zip(g0, g1):                       # all-reduced: every rank holds the same
            assert torch.equal(a, b), name
        # fp32 sums in another order (gloo's all-reduce of two per-sample means against one
        # batch-2 mean inside each conv's backward) agree to ~1e-6 relative. Compared over the
        # whole network, not per tensor: biases in front of an InstanceNorm have a zero gradient
        # in exact arithmetic, so theirs is rounding noise only. A missing all-reduce (one
        # sample's gradient) is off by O(1).
        a = torch.cat([g.flatten() for g in ref])
        b = torch.cat([g.flatten() for g in g0])
        rel = ((b - a).norm() / a.norm()).item()
        assert rel < 1e-4, (name, rel)
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4 * a.abs().max().item(),
                                   msg=lambda m: f"{name}: {m}")
