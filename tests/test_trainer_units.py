"""train/trainer.py's units without a dataset or a run folder: one training step, the phase
switch, and save -> restore giving a run that continues with exactly the same numbers."""
from __future__ import annotations

import pytest
import torch

from p2phd_infer.networks import build_encoder, build_generator
from p2phd_infer.train.trainer import (STATE_FILE, Training, TrainOptions, build_discriminator,
                                       init_weights, read_state, resolve_config)

pytestmark = pytest.mark.usefixtures("one_thread")

OPTS = dict(dataroot="unused", stage="global", label_nc=5, ngf=4, n_downsample_global=1,
            n_blocks_global=1, instance_feat=True, feat_num=2, nef=4, n_downsample_E=1, ndf=4,
            n_layers_d=2, num_d=1, no_vgg=True, batch_size=2)


def make(tmp_path, fix_steps=0):
    opts = TrainOptions(checkpoints_dir=str(tmp_path), name="u", **OPTS)
    cfg, _ = resolve_config(opts)
    torch.manual_seed(0)
    G, E = init_weights(build_generator(cfg)), init_weights(build_encoder(cfg))
    D = init_weights(build_discriminator(opts, cfg))
    run = Training(opts, cfg, G, E, D, device=torch.device("cpu"), precision="fp32", world=1,
                   fix_steps=fix_steps, pool=None, vgg_loss=None)
    run.G_run, run.E_run, run.D_run = run.wrap(G), run.wrap(E), run.wrap(D)
    return run


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 5, (2, 1, 16, 16), generator=g, dtype=torch.int32)
    inst = label * 1000 + torch.randint(0, 2, label.shape, generator=g, dtype=torch.int32)
    return label, inst, torch.rand(2, 3, 16, 16, generator=g) * 2 - 1


def test_a_step_updates_g_and_d_and_reports_finite_losses(tmp_path):
    run = make(tmp_path)
    before = [p.clone() for p in (*run.G.parameters(), *run.D.parameters())]
    losses, fake = run.train_step(*batch(1))
    assert set(losses) == {"G_GAN", "G_GAN_Feat", "G_VGG", "D_real", "D_fake"}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert fake.shape == (2, 3, 16, 16) and not fake.requires_grad
    after = [*run.G.parameters(), *run.D.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(before, after))


def test_the_frozen_phase_trains_the_enhancers_only_then_everything():
    opts = TrainOptions(dataroot="unused", stage="global", label_nc=5, ngf=4,
                        n_downsample_global=1, n_blocks_global=1, no_vgg=True)
    cfg = resolve_config(opts)[0]
    from dataclasses import replace
    cfg = replace(cfg, netG="local", n_local_enhancers=1, n_blocks_local=1)
    G = build_generator(cfg)
    run = Training(opts, cfg, G, None, build_discriminator(opts, cfg),
                   device=torch.device("cpu"), precision="fp32", world=1, fix_steps=3,
                   pool=None, vgg_loss=None)
    assert (run.phase_at(2), run.phase_at(3)) == ("fix", "all") and run.phase == "fix"
    trained = {id(p) for g in run.opt_G.param_groups for p in g["params"]}
    assert not any(id(p) in trained for p in G.model.parameters())          # G1 frozen
    run.enter_phase("all")
    trained = {id(p) for g in run.opt_G.param_groups for p in g["params"]}
    assert trained == {id(p) for p in G.parameters()}


def test_save_then_restore_continues_with_the_same_numbers(tmp_path):
    run = make(tmp_path)
    (tmp_path / "u" / "samples").mkdir(parents=True)
    for i in range(2):
        run.train_step(*batch(i))
        run.step += 1
    label, inst, real = batch(0)
    run.save(tmp_path / "u", 2, None, None, (label, real, real))
    assert (tmp_path / "u" / "model.pt").is_file()
    assert (tmp_path / "u" / "samples" / "step_0000002.png").is_file()
    want, _ = run.train_step(*batch(7))

    resumed = make(tmp_path)                 # fresh networks and optimizers
    state = read_state(tmp_path / "u" / STATE_FILE)
    resumed.restore(state, tmp_path / "u" / STATE_FILE)
    assert resumed.step == 2 and resumed.phase == "all"
    got, _ = resumed.train_step(*batch(7))
    assert got == want
    for a, b in zip(run.G.parameters(), resumed.G.parameters()):
        assert torch.equal(a, b)
