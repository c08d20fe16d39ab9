"""Hostile files and outputs for model.pt, `export`, `import-official` and `features`: each is
refused in one `error:` line naming the file or option and the fault (exit status 2, no
traceback), and nothing is created or changed where the command refuses.

The read-only-folder cases use a path whose parent is a FILE (no permission bits involved, so
they hold when the tests run as root); the chmod-based variants are skipped as root, which
ignores permission bits.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from p2phd_infer.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from p2phd_infer.cli import main
from p2phd_infer.config import ModelConfig
from p2phd_infer.errors import CheckpointError
from p2phd_infer.networks import build_encoder, build_generator
from p2phd_infer.official import read_official_features, write_official_features

ROOT = Path(__file__).resolve().parent.parent
TINY = ModelConfig(label_nc=4, feat_num=0, netG="global", ngf=2, n_downsample_global=2,
                   n_blocks_global=1)                     # stride 4, minimum 8x8
FEAT = ModelConfig(label_nc=4, feat_num=2, netG="global", ngf=2, n_downsample_global=1,
                   n_blocks_global=1, nef=2, n_downsample_E=1)
as_root = os.name == "posix" and os.geteuid() == 0


pytestmark = pytest.mark.usefixtures("one_thread")


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(result, progress: bool = False) -> str:
    """The one `error:` line of a refused command (exit status 2, nothing else on stderr but,
    where `progress`, the progress bars of work done before the fault)."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    # A progress bar redraws its line with carriage returns: what stays on screen is the text
    # after the last one.
    lines = [seg for line in result.stderr.split("\n") if (seg := line.split("\r")[-1].strip())
             and not (progress and "%|" in seg)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def usage_error(result, option: str) -> str:
    """A refused option value: exit status 2, one `error: OPTION: ...` line, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {option}: "), result.stderr
    return result.stderr


def model(path: Path, cfg: ModelConfig = TINY) -> Path:
    torch.manual_seed(0)
    enc = build_encoder(cfg).state_dict() if cfg.feat_num else None
    save_checkpoint(Checkpoint(cfg, build_generator(cfg).state_dict(), enc), path)
    return path


def tampered(tmp_path: Path, name: str, change) -> Path:
    """A copy of a good model.pt with its dict changed by `change(data)`."""
    data = torch.load(model(tmp_path / "good.pt"), weights_only=True)
    change(data)
    path = tmp_path / name
    torch.save(data, path)
    return path


class Evil:
    """A pickle that runs a shell command when loaded by an unrestricted unpickler."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------- model.pt

def _set(key, value):
    def change(data):
        data[key] = value
    return change


def _cfg(**fields):
    def change(data):
        data["config"].update(fields)
    return change


def _gen(change_state):
    def change(data):
        change_state(data["generator"])
    return change


MALFORMED = [
    ("no-generator", lambda d: d.pop("generator"), "no `generator`"),
    ("no-config", lambda d: d.pop("config"), "no `config`"),
    ("ngf-1e9", _cfg(ngf=10**9), "ngf 1000000000 is out of range"),
    ("ngf-0", _cfg(ngf=0), "ngf 0 is out of range"),
    ("ngf-negative", _cfg(ngf=-4), "ngf -4 is out of range"),
    ("ngf-string", _cfg(ngf="64"), "ngf must be an integer"),
    ("ngf-float", _cfg(ngf=2.0), "ngf must be an integer"),
    ("label-nc-negative", _cfg(label_nc=-1), "label_nc -1 is out of range"),
    ("label-nc-huge", _cfg(label_nc=10**7), "label_nc 10000000 is out of range"),
    ("blocks-negative", _cfg(n_blocks_global=-1), "n_blocks_global -1 is out of range"),
    ("downsample-40", _cfg(n_downsample_global=40), "n_downsample_global 40 is out of range"),
    ("feat-negative", _cfg(feat_num=-1), "feat_num -1 is out of range"),
    ("netG", _cfg(netG="huge"), "netG must be"),
    ("config-list", _set("config", [1, 2]), "bad architecture config"),
    ("unknown-field", _cfg(colour="red"), "unknown architecture fields"),
    ("generator-list", _set("generator", [1, 2]), "generator: expected a state dict"),
    ("generator-string-value", _gen(lambda s: s.update({"model.1.weight": "x"})),
     "generator.model.1.weight: expected a tensor"),
    ("generator-int-tensor", _gen(lambda s: s.update({"model.1.bias": torch.zeros(2, dtype=torch.int64)})),
     "generator.model.1.bias: expected floating-point weights"),
    ("generator-wrong-shape", _gen(lambda s: s.update({"model.1.weight": torch.zeros(3, 3)})),
     "model.1.weight has shape (3, 3)"),
    ("generator-missing-key", _gen(lambda s: s.pop("model.1.weight")), "missing ['model.1.weight']"),
    ("encoder-string", _set("encoder", "weights"), "encoder: expected a state dict"),
    ("features-list", _set("features", [1.0]), "features: expected a dict"),
    ("features-bad-centres", _set("features", {3: torch.zeros(2)}),
     "features: label 3: expected float centres"),
    ("label-names", _set("label_names", {1: 5}), "label_names: expected a dict"),
    ("version", _set("version", 99), "checkpoint version 99"),
]


@pytest.mark.parametrize("name,change,fault", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_model_pt_is_refused_at_load_by_field(tmp_path, monkeypatch, name, change,
                                                        fault):
    path = tampered(tmp_path, f"{name}.pt", change)
    built = []
    real_build = build_generator
    # A bad config must be refused before any network is built from it (no allocation).
    monkeypatch.setattr("p2phd_infer.checkpoint.build_generator",
                        lambda cfg: built.append(cfg) or real_build(cfg))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and fault in msg, msg
    assert "\n" not in msg
    if any(w in fault for w in ("out of range", "must be", "architecture config",
                                "unknown architecture", "no `config`")):
        assert built == [], "a network was built from a config that is refused"


def test_absurd_config_through_the_cli_is_one_line(tmp_path):
    path = tampered(tmp_path, "huge.pt", _cfg(ngf=10**9, n_downsample_global=40))
    line = error_line(cli("export", "--engine", path, "--format", "onnx",
                          "--out", tmp_path / "x.onnx"))
    assert str(path) in line and "ngf 1000000000" in line
    assert not (tmp_path / "x.onnx").exists()


def _tiny_onnx_bytes() -> bytes:
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return helper.make_model(graph).SerializeToString()


def _not_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = model(tmp_path / "good.pt").read_bytes()
    marker = tmp_path / "MARKER"
    files = {
        "engine.onnx": (_tiny_onnx_bytes(), "an exported engine (.onnx file)"),
        "random.pt": (bytes(range(256)) * 4, "neither a torch zip archive nor a torch pickle"),
        "empty.pt": (b"", "the file is empty"),
        "truncated.pt": (good[: len(good) // 2], "truncated or damaged"),
        "evil-raw.pt": (pickle.dumps(Evil(marker)), "neither a torch zip archive nor a torch pickle"),
    }
    out = {}
    for name, (data, fault) in files.items():
        (tmp_path / name).write_bytes(data)
        out[name] = (tmp_path / name, fault)
    torch.save({"format": "p2phd-infer", "x": Evil(marker)}, tmp_path / "evil.pt")
    out["evil.pt"] = (tmp_path / "evil.pt", "holds a pickled posix.system, which is refused"
                      if os.name == "posix" else "which is refused")
    return out


def test_non_checkpoints_get_our_own_one_line_message(tmp_path):
    """An ONNX file, random bytes, an empty or truncated file and pickles carrying os.system:
    our message, never torch's advice to turn the weights-only loader off; nothing runs."""
    for name, (path, fault) in _not_checkpoints(tmp_path).items():
        line = error_line(cli("export", "--engine", path, "--format", "onnx",
                              "--out", tmp_path / "x.onnx"))
        assert line.startswith(f"error: {path}: ") and fault in line, (name, line)
        assert "weights_only" not in line and "Re-running" not in line, line
    assert not (tmp_path / "MARKER").exists()
    assert not (tmp_path / "x.onnx").exists()


def test_no_message_or_code_suggests_turning_the_safe_loaders_off():
    """No source file may call torch.load or np.load with the unsafe setting, nor print advice
    to: the strings are built here so this file does not match itself."""
    unsafe = [re.compile(r"weights_only\s*=\s*" + "False"), re.compile(r"allow_pickle\s*=\s*" + "True"),
              re.compile("weights_only` set to `" + "False")]
    offenders = []
    for folder in ("p2phd_infer", "train", "export", "kernels", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text(errors="replace")
            offenders += [f"{path.relative_to(ROOT)}: {p.pattern}" for p in unsafe
                          if p.search(text)]
    assert offenders == []


# ----------------------------------------------------------------------------- export

def test_export_below_the_minimum_size_is_refused_before_exporting(tmp_path, monkeypatch):
    path = model(tmp_path / "m.pt")
    monkeypatch.setattr("p2phd_infer.export.onnx_export.export_onnx",
                        lambda *a, **k: pytest.fail("export started"))
    line = error_line(cli("export", "--engine", path, "--format", "onnx",
                          "--out", tmp_path / "x.onnx", "--height", 4, "--width", 4))
    assert "--height/--width" in line and "4x4" in line and "minimum 8x8" in line, line
    line = error_line(cli("export", "--engine", path, "--format", "onnx",
                          "--out", tmp_path / "x.onnx", "--height", 12, "--width", 10))
    assert "multiples of 4" in line, line
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("cfg", [
    TINY, FEAT,
    ModelConfig(label_nc=2, feat_num=0, netG="global", ngf=2, n_downsample_global=0,
                n_blocks_global=1),
    ModelConfig(label_nc=2, feat_num=0, netG="local", ngf=2, n_downsample_global=1,
                n_blocks_global=1, n_blocks_local=1),
], ids=["global-2", "global-1", "global-0", "local-1"])
def test_min_size_is_the_smallest_size_the_generator_takes(cfg):
    """cfg.min_size runs; the next smaller multiple of the stride does not (so the check that
    uses it refuses exactly what would fail inside the network)."""
    G = build_generator(cfg).eval()
    m, s = cfg.min_size, cfg.stride
    assert m % s == 0
    with torch.no_grad():
        assert G(torch.zeros(1, cfg.input_nc, m, m)).shape[-2:] == (m, m)
        if m - s > 0:
            with pytest.raises((RuntimeError, ValueError)):
                G(torch.zeros(1, cfg.input_nc, m - s, m - s))


def test_export_into_an_unwritable_place_names_the_output(tmp_path):
    path = model(tmp_path / "m.pt")
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "x.onnx"
    line = error_line(cli("export", "--engine", path, "--format", "onnx", "--out", out))
    assert line == f"error: {out}: {tmp_path / 'afile'} is not a folder", line


@pytest.mark.skipif(as_root, reason="root ignores permission bits; the parent-is-a-file case "
                                    "covers the same check")
def test_export_into_a_read_only_folder_names_it(tmp_path):
    path = model(tmp_path / "m.pt")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = error_line(cli("export", "--engine", path, "--format", "onnx",
                              "--out", ro / "x.onnx"))
        assert line == f"error: {ro / 'x.onnx'}: folder {ro} is not writable", line
    finally:
        ro.chmod(0o755)


def test_a_write_that_fails_after_the_export_reports_the_real_error(tmp_path, monkeypatch):
    """The output goes bad between the check and the write (simulated: the check is skipped):
    the write's own error reaches the user, not a cleanup's, and no temporary file is left."""
    import onnx
    path = model(tmp_path / "m.pt")
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "sub" / "x.onnx"
    monkeypatch.setattr("p2phd_infer.cli.export.check_writable", lambda p: None)
    monkeypatch.setattr("p2phd_infer.export.onnx_export.export_onnx_model",
                        lambda *a, **k: onnx.load_from_string(_tiny_onnx_bytes()))
    line = error_line(cli("export", "--engine", path, "--format", "onnx", "--out", out))
    assert line.startswith(f"error: {out}: cannot create its folder"), line
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["afile", "m.pt"]


# ----------------------------------------------------------------------------- import-official

def official_files(tmp_path: Path, cfg: ModelConfig = FEAT) -> tuple[Path, Path]:
    torch.manual_seed(1)
    g, e = tmp_path / "latest_net_G.pth", tmp_path / "latest_net_E.pth"
    torch.save(build_generator(cfg).state_dict(), g)
    torch.save(build_encoder(cfg).state_dict(), e)
    return g, e


def import_args(g: Path, e: Path, out: Path, *extra) -> list:
    return ["import-official", "--generator", g, "--encoder", e, "--label-nc", 4,
            "--out", out, *extra]


def test_import_official_refuses_an_unwritable_out_before_reading(tmp_path):
    g, e = official_files(tmp_path)
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "model.pt"
    line = error_line(cli(*import_args(g, e, out)))
    assert line == f"error: {out}: {tmp_path / 'afile'} is not a folder", line


@pytest.mark.skipif(as_root, reason="root ignores permission bits; the parent-is-a-file case "
                                    "covers the same check")
def test_import_official_refuses_a_read_only_out_folder(tmp_path):
    g, e = official_files(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = error_line(cli(*import_args(g, e, ro / "model.pt")))
        assert "is not writable" in line and str(ro) in line
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("value", ["-1", "65537", "x"])
def test_import_official_label_nc_range(tmp_path, value):
    g, e = official_files(tmp_path)
    out = tmp_path / "model.pt"
    usage_error(cli("import-official", "--generator", g, "--label-nc", value, "--out", out),
                "--label-nc")
    assert not out.exists()


def _npy_with_pickle(path: Path, obj) -> Path:
    """An .npy file whose body is the pickle of `obj`, as np.save writes an object array."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False,
                                                 "shape": ()})
        f.write(pickle.dumps(obj, protocol=3))
    return path


def test_official_features_that_are_not_a_features_file(tmp_path):
    g, e = official_files(tmp_path)
    marker = tmp_path / "MARKER"
    cases = {
        "random.npy": (lambda p: p.write_bytes(os.urandom(64)), "not an .npy file"),
        "raw-pickle.npy": (lambda p: p.write_bytes(pickle.dumps({7: [1.0, 2.0]})),
                           "not an .npy file"),
        "raw-evil.npy": (lambda p: p.write_bytes(pickle.dumps(Evil(marker))), "not an .npy file"),
        "numbers.npy": (lambda p: np.save(p, np.arange(4.0)), "expected a dict {label: centres}"),
        "list.npy": (lambda p: _npy_with_pickle(p, [1, 2]), "expected a dict {label: centres}"),
        "string-keys.npy": (lambda p: _npy_with_pickle(p, {"car": np.zeros((1, 2))}),
                            "label 'car': expected an integer label"),
        "nan.npy": (lambda p: _npy_with_pickle(p, {26: np.full((1, 2), np.nan)}),
                    "label 26: centres hold NaN"),
        "evil.npy": (lambda p: _npy_with_pickle(p, Evil(marker)), "refused to load"),
        "evil-inside.npy": (lambda p: _npy_with_pickle(p, {26: Evil(marker)}), "refused to load"),
        "truncated.npy": (lambda p: _npy_with_pickle(p, {26: np.zeros((3, 2))}) and
                          p.write_bytes(p.read_bytes()[:-20]), "truncated"),
    }
    for name, (make, fault) in cases.items():
        path = tmp_path / name
        make(path)
        out = tmp_path / f"{name}.pt"
        line = error_line(cli(*import_args(g, e, out, "--features", path)))
        assert line.startswith(f"error: {path}: ") and fault in line, (name, line)
        if name.startswith("evil"):
            assert "system" in line, line          # the refused callable is named
        assert not out.exists()
    assert not marker.exists(), "a pickle in a features file ran code"


def test_official_features_round_trip(tmp_path):
    """The official format as NVIDIA's encode_features writes it (np.save of a dict with numpy
    int64 label keys and float64 centres) imports; and our writer's file reads back exactly."""
    g, e = official_files(tmp_path)
    rng = np.random.default_rng(0)
    table = {np.int64(26): rng.standard_normal((3, 2)), 24: rng.standard_normal((1, 2)),
             7: np.zeros((0, 2))}
    np.save(tmp_path / "features_clustered_010.npy", table)
    out = tmp_path / "model.pt"
    r = cli(*import_args(g, e, out, "--features", tmp_path / "features_clustered_010.npy"))
    assert r.exit_code == 0, r.output
    ckpt = load_checkpoint(out)
    assert sorted(ckpt.features) == [24, 26]              # empty labels are left out
    for k in (24, 26):
        assert torch.equal(ckpt.features[k], torch.from_numpy(table[k].astype(np.float32)))
    write_official_features(ckpt.features, tmp_path / "again.npy")
    back = read_official_features(tmp_path / "again.npy")
    assert sorted(back) == [24, 26] and all(torch.equal(back[k], ckpt.features[k]) for k in back)


# ----------------------------------------------------------------------------- features

@pytest.fixture
def feature_setup(tmp_path):
    from p2phd_infer.train.scenes import make_scenes
    data = tmp_path / "data"
    make_scenes(data, 2, 64, 32, seed=5)
    m = model(tmp_path / "model.pt", FEAT)
    return m, data, m.read_bytes()


def test_features_export_into_an_uncreatable_folder_is_checked_first(tmp_path, feature_setup,
                                                                     monkeypatch):
    m, data, before = feature_setup
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "missing" / "features.npy"
    monkeypatch.setattr("p2phd_infer.cli.features.build_dictionary",
                        lambda *a, **k: pytest.fail("the slow work ran before the check"))
    line = error_line(cli("features", "--engine", m, "--data", data, "--export-official", out,
                          "--device", "cpu", "--workers", 0))
    assert line == f"error: {out}: {tmp_path / 'afile'} is not a folder", line
    assert m.read_bytes() == before
    assert (tmp_path / "afile").read_text() == "x"


def test_features_export_into_a_missing_folder_creates_it(tmp_path, feature_setup):
    """A missing folder that can be created is (as every output of this project): the point
    is that it is checked before the slow work, and model.pt is rewritten last."""
    m, data, before = feature_setup
    out = tmp_path / "new" / "deeper" / "features_clustered_010.npy"
    r = cli("features", "--engine", m, "--data", data, "--export-official", out,
            "--device", "cpu", "--workers", 0, "--resize-or-crop", "none")
    assert r.exit_code == 0, r.output
    feats = read_official_features(out)
    ckpt = load_checkpoint(m)
    assert sorted(feats) == sorted(ckpt.features) and feats
    assert m.read_bytes() != before


def test_features_failures_leave_model_pt_byte_identical(tmp_path, feature_setup, monkeypatch):
    m, data, before = feature_setup
    out = tmp_path / "official.npy"
    # A damaged photo: found by the up-front check, before any encoding.
    photo = sorted((data / "train_img").iterdir())[1]
    photo.write_bytes(photo.read_bytes()[:120])
    r = cli("features", "--engine", m, "--data", data, "--export-official", out,
            "--device", "cpu", "--workers", 0, "--resize-or-crop", "none")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert f"{photo}: not a readable image" in r.stderr, r.stderr
    assert m.read_bytes() == before and not out.exists()
    from p2phd_infer.train.scenes import make_scenes
    make_scenes(data, 2, 64, 32, seed=5)                # the same scenes, undamaged
    # The official file cannot be written at the end: model.pt, written last, is untouched.
    from p2phd_infer.errors import OutputError

    def refuse(features, path):
        raise OutputError(path, "cannot be written (No space left on device)")
    monkeypatch.setattr("p2phd_infer.cli.features.write_official_features", refuse)
    line = error_line(cli("features", "--engine", m, "--data", data, "--export-official", out,
                          "--device", "cpu", "--workers", 0, "--resize-or-crop", "none"),
                      progress=True)
    assert line == f"error: {out}: cannot be written (No space left on device)"
    assert m.read_bytes() == before
