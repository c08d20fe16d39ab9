"""The two-stage trainer on a tiny config (CPU, 64x32 scenes, a few steps).

The perceptual loss here uses a randomly initialised VGG19 (no weights are downloaded in tests):
that exercises the loss's code path and shapes, not its ImageNet meaning.
"""
import csv
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from p2phd_infer.checkpoint import load_checkpoint
from p2phd_infer.cli.train import train_cmd
from p2phd_infer.train.scenes import make_scenes
from p2phd_infer.train.trainer import STATE_FILE, TrainOptions, train

TINY_G1 = dict(ngf=8, n_downsample_global=1, n_blocks_global=1, nef=4, n_downsample_E=1,
               feat_num=2, instance_feat=True, label_nc=35)
TINY_D = dict(ndf=8, n_layers_d=2, num_d=2)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 4, 64, 32, seed=21)
    return root


def _opts(data, ckdir, name, **kw):
    base = dict(dataroot=str(data), checkpoints_dir=str(ckdir), name=name, batch_size=2,
                resize_or_crop="none", num_workers=0, progress=False, save_every=1000,
                no_vgg=True, **TINY_D)
    base.update(kw)
    return TrainOptions(**base)


def _log(run_dir: Path) -> list[dict]:
    with open(run_dir / "loss_log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def global_run(data, tmp_path_factory):
    """Stage global at 32x16: G1 + E, VGG, 1 epoch constant + 2 epochs decay. No VGG19 weights
    are available offline: the lookup is patched to find none, so VGG19 keeps its random init
    (the loss still runs end to end)."""
    ck = tmp_path_factory.mktemp("ck")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("p2phd_infer.train.losses.find_vgg_weights", lambda path: None)
        path = train(_opts(data, ck, "g", stage="global", resize_or_crop="scale_width",
                           load_size=32, niter=1, niter_decay=2, no_vgg=False, **TINY_G1))
    return ck, path


def test_global_stage_writes_a_loadable_model(global_run):
    ck, path = global_run
    ckpt = load_checkpoint(path)
    assert ckpt.config.netG == "global" and ckpt.config.feat_num == 2
    assert ckpt.encoder is not None
    # scale_width to 32 of the 64x32 scenes: the training frames are 32x16, export's default.
    assert ckpt.extra["train_info"]["frame_size"] == [16, 32]
    rows = _log(ck / "g")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    for r in rows:
        for k in ("G_GAN", "G_GAN_Feat", "G_VGG", "D_real", "D_fake"):
            assert math.isfinite(float(r[k])), (k, r)
    assert float(rows[0]["G_VGG"]) > 0
    # lr constant for niter epochs (2 steps each), then linear to 0 over niter_decay, per step.
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == pytest.approx([2e-4, 2e-4, 2e-4, 1.5e-4, 1e-4, 0.5e-4])
    assert list((ck / "g" / "samples").glob("step_*.png"))


def _params(state, prefix):
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def test_local_stage_freezes_g1_then_trains_everything_and_resumes_exactly(data, global_run,
                                                                           tmp_path):
    ck_g, g_path = global_run
    g1 = load_checkpoint(g_path)
    local = dict(stage="local", load_global=str(g_path), niter=2, niter_decay=1, niter_fix_global=1,
                 n_blocks_local=1, save_every=1)
    # Interrupted run: stop at the end of the frozen epoch (2 steps), then resume to the end.
    train(_opts(data, tmp_path, "a", max_steps=2, **local))
    at_switch = load_checkpoint(tmp_path / "a" / "model.pt")
    for k, v in _params(at_switch.generator, "model.").items():
        assert torch.equal(v, g1.generator[k]), f"G1 {k} moved while frozen"
    for k, v in at_switch.encoder.items():
        assert torch.equal(v, g1.encoder[k]), f"E {k} moved while frozen"
    enh = _params(at_switch.generator, "model1_")
    assert enh

    train(_opts(data, tmp_path, "a", max_steps=None, resume=True, **local))
    end = load_checkpoint(tmp_path / "a" / "model.pt")
    assert end.config.netG == "local" and end.config.ngf == 4
    moved = [k for k, v in _params(end.generator, "model.").items()
             if not torch.equal(v, g1.generator[k])]
    assert len(moved) == len(_params(end.generator, "model.")), "G1 was not unfrozen"
    assert any(not torch.equal(v, g1.encoder[k]) for k, v in end.encoder.items())

    # The live optimizer after the switch covers all G and E parameters and follows the schedule.
    state = torch.load(tmp_path / "a" / STATE_FILE, weights_only=True)
    n_params = sum(1 for k in state["G"]) + sum(1 for k in state["E"])     # every G and E tensor
    assert len(state["opt_G"]["param_groups"][0]["params"]) == n_params
    rows = _log(tmp_path / "a")
    assert [r["phase"] for r in rows] == ["fix", "fix", "all", "all", "all", "all"]
    assert float(state["opt_G"]["param_groups"][0]["lr"]) == pytest.approx(float(rows[-1]["lr"]))
    assert float(rows[-1]["lr"]) < float(rows[0]["lr"])

    # Uninterrupted run: the same losses and the same weights.
    train(_opts(data, tmp_path, "b", **{**local, "save_every": 1000}))
    rows_b = _log(tmp_path / "b")
    keys = ("G_GAN", "G_GAN_Feat", "D_real", "D_fake", "lr", "phase")
    assert [[r[k] for k in keys] for r in rows] == [[r[k] for k in keys] for r in rows_b]
    state_b = torch.load(tmp_path / "b" / STATE_FILE, weights_only=True)
    for part in ("G", "E", "D"):
        for k, v in state[part].items():
            torch.testing.assert_close(v, state_b[part][k], rtol=1e-6, atol=1e-7)


def test_run_command_loads_the_trained_model(data, global_run, tmp_path):
    from p2phd_infer.cli import main
    ck_g, g_path = global_run
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["run", str(data / "train_label"), "--engine", str(g_path),
                                                 "--instances", str(data / "train_inst"),
                                                 "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert len(list(out.glob("*.png"))) == 4


def test_a_tiny_model_learns(tmp_path):
    """Fitted to 2 scenes, G's L1 to the photos drops below its value at initialisation."""
    from p2phd_infer.networks import build_generator
    from p2phd_infer.synthesizer import Synthesizer
    from p2phd_infer.train.datasets import PairedDataset
    make_scenes(tmp_path / "d", 2, 64, 32, seed=4)
    opts = _opts(tmp_path / "d", tmp_path, "fit", stage="global", niter=40, niter_decay=0,
                 no_flip=True, ngf=8, n_downsample_global=2, n_blocks_global=1)
    ds = PairedDataset(tmp_path / "d", resize_or_crop="none", multiple=4, flip=False)
    batch = [ds[i] for i in range(2)]
    label = torch.stack([b["label"] for b in batch])
    inst = torch.stack([b["inst"] for b in batch])
    real = torch.stack([b["image"] for b in batch])

    def l1(ckpt_cfg, gen):
        with torch.no_grad():
            return (Synthesizer(ckpt_cfg, gen)(label, inst) - real).abs().mean().item()

    path = train(opts)
    ckpt = load_checkpoint(path)
    torch.manual_seed(opts.seed)
    before = l1(ckpt.config, build_generator(ckpt.config))
    after = l1(ckpt.config, ckpt.build_generator())
    print(f"L1 to the photos: {before:.3f} at initialisation, {after:.3f} after 40 steps")
    assert after < 0.75 * before, (before, after)


def test_cli_reports_dataset_faults_and_missing_vgg(tmp_path):
    make_scenes(tmp_path / "d", 2, 64, 32, seed=1)
    stems = sorted(p.stem for p in (tmp_path / "d" / "train_img").iterdir())
    for s in stems:
        (tmp_path / "d" / "train_img" / f"{s}.png").unlink()
    r = CliRunner().invoke(train_cmd, ["--dataroot", str(tmp_path / "d"), "--no-vgg",
                                       "--checkpoints-dir", str(tmp_path / "ck")])
    assert r.exit_code == 2
    assert "2 problems" in r.output and all(f"{s}.png: no photo" in r.output for s in stems)
    assert "Traceback" not in r.output
    r = CliRunner().invoke(train_cmd, ["--dataroot", str(tmp_path / "d"),
                                       "--vgg-weights", str(tmp_path / "nope.pth"),
                                       "--checkpoints-dir", str(tmp_path / "ck")])
    assert r.exit_code == 2 and "nope.pth" in r.output and "--no-vgg" in r.output
    r = CliRunner().invoke(train_cmd, ["--dataroot", str(tmp_path / "d"), "--stage", "local",
                                       "--no-vgg", "--checkpoints-dir", str(tmp_path / "ck")])
    assert r.exit_code == 2 and "--load-global" in r.output
