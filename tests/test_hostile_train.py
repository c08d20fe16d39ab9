"""Hostile input for `p2phd-infer train`: bad options, damaged or foreign trainer states and VGG
weights, unwritable run folders, datasets with several bad files. Each is refused before step 1
in one `error:` line naming the file or option (a dataset's faults: one error, every bad file on
its own line), exit status 2, no traceback.

Tiny configs on 64x32 scenes, as tests/test_train.py. The chmod-based case is skipped as root
(root ignores permission bits); the parent-is-a-file case checks the same refusal as anyone.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from p2phd_infer.cli import main
from p2phd_infer.errors import OptionError
from p2phd_infer.train.datasets import DatasetError, find_samples
from p2phd_infer.train.scenes import make_scenes
from p2phd_infer.train.trainer import STATE_FILE, TrainOptions, train

as_root = os.name == "posix" and os.geteuid() == 0
TINY = ["--ngf", 4, "--n-downsample-global", 1, "--n-blocks-global", 1, "--label-nc", 35,
        "--ndf", 4, "--n-layers-d", 1, "--num-d", 1, "--batch-size", 2, "--niter", 1,
        "--niter-decay", 0, "--resize-or-crop", "none", "--num-workers", 0, "--no-progress",
        "--no-vgg", "--device", "cpu"]
TINY_OPTS = dict(ngf=4, n_downsample_global=1, n_blocks_global=1, label_nc=35, ndf=4,
                 n_layers_d=1, num_d=1, batch_size=2, niter=1, niter_decay=0,
                 resize_or_crop="none", num_workers=0, progress=False, no_vgg=True, device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def cli(*args):
    return CliRunner().invoke(main, ["train", *[str(a) for a in args]])


def error_lines(result) -> list[str]:
    """The `error:` line and what follows it; exit status 2, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), result.stderr
    return lines


def error_line(result) -> str:
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    return lines[0]


def usage_error(result, option: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    assert result.stderr.startswith(f"error: {option}: "), result.stderr  # the project's line


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 2, 64, 32, seed=3)
    return root


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """One finished tiny run (1 step): its folder holds model.pt and trainer_state.pt."""
    ck = tmp_path_factory.mktemp("ck")
    r = cli("--dataroot", data, "--checkpoints-dir", ck, "--name", "r", *TINY)
    assert r.exit_code == 0, r.output
    return ck


def copy_run(run: Path, tmp_path: Path) -> Path:
    import shutil
    shutil.copytree(run / "r", tmp_path / "r")
    return tmp_path


def resume(data, ck, *extra):
    return cli("--dataroot", data, "--checkpoints-dir", ck, "--name", "r", "--resume", *TINY,
               *extra)


# ----------------------------------------------------------------------------- options

@pytest.mark.parametrize("option", ["--batch-size", "--save-every", "--ngf", "--load-size",
                                    "--seed", "--niter", "--n-downsample-global", "--lr"])
def test_option_out_of_range_is_refused_by_click(data, tmp_path, option):
    value = {"--seed": -1, "--niter": -1, "--n-downsample-global": 40, "--lr": 0}.get(option, 0)
    usage_error(cli("--dataroot", data, "--checkpoints-dir", tmp_path, *TINY, option, value),
                option)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("field,value,flag", [
    ("batch_size", 0, "--batch-size"), ("save_every", 0, "--save-every"), ("ngf", 0, "--ngf"),
    ("load_size", 0, "--load-size"), ("seed", -1, "--seed"), ("ngf", 10**9, "--ngf"),
    ("n_downsample_E", 40, "--n-downsample-e"), ("lr", float("nan"), "--lr"),
    ("batch_size", 2.5, "--batch-size"), ("stage", "both", "--stage"),
])
def test_train_options_validate_by_option_name(field, value, flag):
    with pytest.raises(OptionError) as info:
        TrainOptions(dataroot="d", **{field: value})
    assert info.value.path == flag


def test_an_absurdly_large_network_is_refused_before_it_is_built(data, tmp_path):
    """Every option within its bounds, their product not: refused, never allocated."""
    line = error_line(cli("--dataroot", data, "--checkpoints-dir", tmp_path, *TINY,
                          "--ngf", 4096, "--n-downsample-global", 8))
    assert line.startswith("error: --ngf/--n-downsample-global/--n-blocks-global: the "
                           "generator would have "), line
    assert line.endswith("parameters, more than 2,000,000,000")


def test_zero_epochs_in_all_is_refused(data, tmp_path):
    line = error_line(cli("--dataroot", data, "--checkpoints-dir", tmp_path, *TINY,
                          "--niter", 0, "--niter-decay", 0))
    assert line == "error: --niter/--niter-decay: 0 epochs in all: nothing to train"


# ----------------------------------------------------------------------------- run folder

def test_checkpoints_dir_under_a_file_is_refused_before_step_1(data, tmp_path):
    (tmp_path / "afile").write_text("x")
    ck = tmp_path / "afile" / "ck"
    line = error_line(cli("--dataroot", data, "--checkpoints-dir", ck, "--name", "r", *TINY))
    assert line == f"error: {ck / 'r' / 'model.pt'}: {tmp_path / 'afile'} is not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.skipif(as_root, reason="root ignores permission bits; the parent-is-a-file case "
                                    "covers the same check")
def test_read_only_checkpoints_dir_is_refused_before_step_1(data, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = error_line(cli("--dataroot", data, "--checkpoints-dir", ro, "--name", "r", *TINY))
        assert line == f"error: {ro / 'r' / 'model.pt'}: folder {ro} is not writable"
    finally:
        ro.chmod(0o755)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_resume_removes_stale_temporary_files_of_a_killed_write(data, run, tmp_path):
    ck = copy_run(run, tmp_path)
    dead = ck / "r" / f".trainer_state.pt.{_dead_pid()}-0123abcd.p2tmp"
    live = ck / "r" / f".model.pt.{os.getpid()}-89abcdef.p2tmp"     # a live writer's: kept
    dead.write_bytes(b"half a state")
    live.write_bytes(b"being written")
    r = resume(data, ck)
    assert r.exit_code == 0, r.output
    assert not dead.exists() and live.exists()


# ----------------------------------------------------------------------------- --resume

def test_resume_without_a_state_names_the_file(data, tmp_path):
    line = error_line(resume(data, tmp_path))
    assert line.startswith(f"error: {tmp_path / 'r' / STATE_FILE}: no trainer state to resume "
                           f"from"), line


@pytest.mark.parametrize("kind,fault", [
    ("truncated", "truncated or damaged torch zip archive"),
    ("random", "neither a torch zip archive nor a torch pickle"),
    ("model.pt", "not a trainer state: no `options` (this is a model.pt)"),
    ("list", "not a trainer state (holds a list)"),
    ("step-string", "`step` is a str"),
    ("foreign-G", "does not fit this run: G: keys do not fit"),
    ("foreign-optimizer", "does not fit this run (ValueError"),
    ("foreign-moments", "does not fit this run: opt_G: exp_avg of shape (1,)"),
    ("foreign-config", "bad architecture config: ngf 0 is out of range"),
    ("foreign-options", "saved options of another version: ['colour']"),
])
def test_resume_from_a_foreign_or_damaged_state_is_one_line(data, run, tmp_path, kind, fault):
    ck = copy_run(run, tmp_path)
    path = ck / "r" / STATE_FILE
    good = path.read_bytes()
    state = torch.load(path, weights_only=True)
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "model.pt":
        path.write_bytes((ck / "r" / "model.pt").read_bytes())
    elif kind == "list":
        torch.save([1, 2], path)
    else:
        if kind == "step-string":
            state["step"] = "1"
        elif kind == "foreign-G":
            state["G"] = {"model.1.weight": torch.zeros(1)}
        elif kind == "foreign-optimizer":
            state["opt_G"]["param_groups"] = state["opt_G"]["param_groups"] * 2
        elif kind == "foreign-moments":
            first = state["opt_G"]["param_groups"][0]["params"][0]
            state["opt_G"]["state"][first]["exp_avg"] = torch.zeros(1)
        elif kind == "foreign-config":
            state["config"]["ngf"] = 0
        elif kind == "foreign-options":
            state["options"]["colour"] = "red"
        torch.save(state, path)
    before = {p.name: p.read_bytes() for p in (ck / "r").iterdir() if p.is_file()}
    line = error_line(resume(data, ck))
    assert line.startswith(f"error: {path}: ") and fault in line, line
    assert "weights_only" not in line
    after = {p.name: p.read_bytes() for p in (ck / "r").iterdir() if p.is_file()}
    assert after == before, "a refused resume changed the run folder"


def test_resume_names_the_options_its_saved_state_overrides(data, run, tmp_path):
    ck = copy_run(run, tmp_path)
    r = resume(data, ck, "--lr", 0.001, "--ngf", 16)
    assert r.exit_code == 0, r.output
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, r.stderr
    assert "--lr 0.001 (the run uses 0.0002)" in warnings[0]
    assert "--ngf 16 (the run uses 4)" in warnings[0]
    # Options the run may change, and options given with the saved value: no warning.
    r = resume(data, ck, "--max-steps", 1, "--ngf", 4)
    assert r.exit_code == 0, r.output
    assert "warning:" not in r.stderr


def test_resume_through_the_api_warns_about_options_off_their_defaults(data, run, tmp_path,
                                                                       capsys):
    ck = copy_run(run, tmp_path)
    train(TrainOptions(dataroot=str(data), checkpoints_dir=str(ck), name="r", resume=True,
                       **{**TINY_OPTS, "n_blocks_global": 2}))
    assert "--n-blocks-global 2 (the run uses 1)" in capsys.readouterr().err


# ----------------------------------------------------------------------------- VGG weights

@pytest.mark.parametrize("kind,fault", [
    ("random", "not a readable torch VGG19 weights file: neither a torch zip"),
    ("list", "not torchvision VGG19 weights (expected a state dict)"),
    ("wrong-shapes", "not torchvision VGG19 weights: VGG19 features: keys do not fit"),
])
def test_garbage_vgg_weights_are_named(data, tmp_path, kind, fault):
    path = tmp_path / "vgg19.pth"
    if kind == "random":
        path.write_bytes(os.urandom(2048))
    elif kind == "list":
        torch.save([1.0], path)
    else:
        torch.save({"features.0.weight": torch.zeros(3)}, path)
    args = [a for a in TINY if a != "--no-vgg"]
    line = error_line(cli("--dataroot", data, "--checkpoints-dir", tmp_path / "ck", "--name",
                          "r", *args, "--vgg-weights", path))
    assert line.startswith(f"error: {path}: ") and fault in line, line
    assert not (tmp_path / "ck" / "r" / "model.pt").exists()


def test_missing_vgg_weights_are_named_before_the_data_is_read(tmp_path):
    args = [a for a in TINY if a != "--no-vgg"]
    line = error_line(cli("--dataroot", tmp_path / "no-data", "--checkpoints-dir", tmp_path,
                          *args, "--vgg-weights", tmp_path / "nope.pth"))
    assert line.startswith(f"error: {tmp_path / 'nope.pth'}: no such VGG19 weights file")
    assert "--no-vgg" in line


# ----------------------------------------------------------------------------- the dataset

def test_every_bad_file_is_reported_before_step_1_in_one_error(tmp_path):
    data = tmp_path / "d"
    make_scenes(data, 4, 64, 32, seed=8)
    stems = sorted(p.stem for p in (data / "train_label").iterdir())
    photo = data / "train_img" / f"{stems[0]}.png"
    photo.write_bytes(photo.read_bytes()[:200])                          # truncated pixels
    label = data / "train_label" / f"{stems[1]}.png"
    ids = np.asarray(Image.open(label)).copy()
    ids[0, 0] = 40                                                       # >= label_nc 35
    Image.fromarray(ids).save(label)
    inst = data / "train_inst" / f"{stems[2]}.png"
    raw = bytearray(inst.read_bytes())
    raw[60:90] = b"\0" * 30                                              # damaged stream
    inst.write_bytes(bytes(raw))
    r = cli("--dataroot", data, "--checkpoints-dir", tmp_path / "ck", "--name", "r", *TINY)
    lines = error_lines(r)
    assert lines[0] == f"error: {data}: 3 problems in the dataset", lines
    body = "\n".join(lines[1:])
    assert len(lines) == 4, lines
    assert f"{photo}: not a readable image" in body
    assert f"{label}: label id 40 >= label_nc 35" in body
    assert f"{inst}: not a readable PNG" in body
    assert not (tmp_path / "ck" / "r" / "loss_log.csv").exists(), "training started"


def test_too_small_a_load_size_is_a_dataset_fault_before_step_1(data, tmp_path):
    """At --load-size 16 the 64x32 scenes load at 16x8, below the 4-halving G1's minimum."""
    args = [a for a in TINY if a not in ("none",)]
    args[args.index("--resize-or-crop") + 1:args.index("--resize-or-crop") + 1] = ["scale_width"]
    args[args.index("--n-downsample-global") + 1] = 4
    r = cli("--dataroot", data, "--checkpoints-dir", tmp_path, "--name", "r", *args,
            "--load-size", 16)
    lines = error_lines(r)
    assert lines[0] == f"error: {data}: 2 problems in the dataset"
    assert all("below the network's minimum 32x32" in line for line in lines[1:]), lines
    assert "--load-size 16" in lines[1]


def test_upper_case_png_is_found_by_training_and_by_run_alike(tmp_path):
    """Training and `run` agree on which files are label maps: *.PNG as well as *.png."""
    from p2phd_infer.plan import discover
    data = tmp_path / "d"
    make_scenes(data, 2, 64, 32, seed=2)
    for folder in ("train_label", "train_inst", "train_img"):
        for p in (data / folder).iterdir():
            p.rename(p.with_suffix(".PNG"))
    samples = find_samples(data)
    frames = discover(str(data / "train_label"))
    assert [s.stem for s in samples] == [name for name, _, _ in frames] and len(samples) == 2
    assert [str(s.label) for s in samples] == [label for _, label, _ in frames]
    assert [str(s.inst) for s in samples] == [inst for _, _, inst in frames]
    # An instance map whose name differs only in case pairs in neither.
    first = sorted((data / "train_inst").iterdir())[0]
    first.rename(first.with_suffix(".png"))
    if first.exists():
        pytest.skip("a case-insensitive filesystem: a.png is a.PNG")
    with pytest.raises(DatasetError, match="no instance map"):
        find_samples(data)
    assert discover(str(data / "train_label"))[0][2] is None


def test_dataset_error_keeps_every_fault_readable():
    """Over 50 faults: the first 50, one a line, then a count of the rest."""
    e = DatasetError("root", [f"f{i}.png: bad" for i in range(53)])
    lines = str(e).splitlines()
    assert lines[0] == "root: 53 problems in the dataset"
    assert lines[1:51] == [f"  f{i}.png: bad" for i in range(50)]
    assert lines[51] == "  ... and 3 more" and len(e.faults) == 53
