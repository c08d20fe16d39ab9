"""Options declared once (p2phd_infer/options.py, cli/options.py): the click options come from
the options dataclasses, a built options object is checked whole before any work, limits are
one constant each, renamed flags keep a deprecated alias, and usage errors read like the
project's other errors. No engine is opened here: the executors are replaced by a recorder."""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, fields
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from p2phd_infer import limits
from p2phd_infer.cli import main
from p2phd_infer.cli import options as cli_options
from p2phd_infer.cli.options import click_options
from p2phd_infer.errors import OptionError
from p2phd_infer.options import check, flag_of, setting, settings
from p2phd_infer.plan import RunOptions, RunSummary
from p2phd_infer.serve.options import EditOptions, ServeOptions

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def recorded(monkeypatch):
    """`run` with its executor replaced: the RunOptions it was given, nothing synthesized."""
    seen = []

    def fake(opts, on_failure=None):
        seen.append(opts)
        return RunSummary(frames=1, written=1)
    monkeypatch.setattr("p2phd_infer.local_run.run_local", fake)
    monkeypatch.setattr(cli_options, "_warned", set())
    return seen


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


# ------------------------------------------------------------------ the mechanism itself

@dataclass
class Toy:
    count: int = setting(2, "How many.", bounds=(1, 10))
    rate: float = setting(1.0, "A rate.", bounds=(0, 5), open="lo")
    kind: str = setting("a", "Which.", choices=("a", "b"))
    where: str | None = setting(None, "A place.", path="dir", shown_default="here")
    loud: bool = setting(True, "Quiet.", flag="--quiet")
    tags: tuple[str, ...] = setting((), "Tags.", multiple=True)
    new_name: int = setting(0, "Renamed.", bounds=(0, 9), renamed_from=("--old-name",))

    def __post_init__(self):
        check(self)


@pytest.mark.parametrize("kw, flag", [
    (dict(count=0), "--count"), (dict(count=11), "--count"), (dict(count=2.5), "--count"),
    (dict(count=True), "--count"), (dict(rate=0), "--rate"), (dict(rate=float("nan")), "--rate"),
    (dict(rate=float("inf")), "--rate"), (dict(kind="c"), "--kind"), (dict(loud=1), "--quiet"),
    (dict(tags=("x", 1)), "--tags"), (dict(new_name=10), "--new-name"),
])
def test_a_built_options_object_is_checked_by_its_declarations(kw, flag):
    with pytest.raises(OptionError) as e:
        Toy(**kw)
    assert e.value.path == flag


def test_generated_click_options_carry_help_bounds_choices_and_defaults():
    @click.command()
    @click_options(Toy)
    def cmd(**kw):
        click.echo(repr(Toy(**kw)))
    r = CliRunner()
    out = r.invoke(cmd, ["--help"]).output
    assert "How many." in out and "[default: 2; 1<=x<=10]" in out
    assert "[a|b]" in out and "[default: (here)]" in out and "--quiet" in out
    assert "--old-name" not in out                 # the deprecated alias is hidden
    assert r.invoke(cmd, ["--count", "11"]).exit_code == 2      # click refuses it too
    got = r.invoke(cmd, ["--quiet", "--tags", "x", "--tags", "y", "--old-name", "3"])
    assert got.exit_code == 0, got.output
    assert "loud=False" in got.output and "tags=('x', 'y')" in got.output
    assert "new_name=3" in got.output and "--old-name is deprecated; use --new-name" in got.output


# ------------------------------------------------------------------ the commands

def test_run_options_are_generated_from_run_options():
    """Every RunOptions setting is a `run` option (or its argument), with its help text."""
    params = {p.name: p for p in main.commands["run"].params}
    for f, s, _ in settings(RunOptions):
        assert f.name in params, f.name
        if not s.argument:
            assert params[f.name].help == s.help and params[f.name].help
    assert flag_of(next(f for f in fields(RunOptions) if f.name == "progress")) == "--no-progress"


@pytest.mark.parametrize("command", ["run", "serve", "edit", "export", "train", "features",
                                     "evaluate", "import-official", "make-scenes"])
def test_every_option_has_help_and_no_inline_default(command):
    """--help text on every option; a default is shown one way, click's `[default: ...]`, not
    also as `[35]` in the text."""
    for p in main.commands[command].params:
        if isinstance(p, click.Option) and not p.hidden:
            assert p.help, f"{command} {p.opts[0]} has no help"
            assert not re.search(r"\[[^\]|]*\]\s*$", p.help), f"{command} {p.opts[0]}: {p.help}"


def test_serve_and_edit_share_their_defaults():
    """One declaration: the same log level, port, host and batch bounds in serve and edit."""
    s, e = ServeOptions(), EditOptions()
    for name in ("log_level", "host", "port", "max_batch_size", "max_pixels", "device"):
        assert getattr(s, name) == getattr(e, name), name
    assert ServeOptions().log_level == "info"


def test_fps_too_low_for_a_video_fails_before_any_work(recorded, tmp_path):
    r = invoke("run", "--out", tmp_path / "o", "--format", "mp4", "--fps", "0.0001")
    assert r.exit_code == 2 and not recorded
    assert "error: --fps: 0.0001 is below the lowest rate" in r.output
    with pytest.raises(OptionError, match="--fps"):
        RunOptions(fps=0.0001)


@pytest.mark.parametrize("args, flag", [
    (["--batch-size", "0"], "--batch-size"), (["--batch-size", "4097"], "--batch-size"),
    (["--num-workers", "100001"], "--num-workers"), (["--workers", "0"], "--workers"),
    (["--max-queue-delay-us", str(limits.MAX_DELAY_US + 1)], "--max-queue-delay-us"),
    (["--max-pixels", str(2**34 + 1)], "--max-pixels"), (["--jpeg-quality", "0"], "--jpeg-quality"),
    (["--photos", "p"], "--photos"), (["--format", "mp4", "--ray"], "--format"),
])
def test_bad_run_options_are_one_error_line_before_any_work(recorded, tmp_path, args, flag):
    r = invoke("run", "--out", tmp_path / "o", *args)
    assert r.exit_code == 2 and not recorded, r.output
    assert r.output.startswith(f"error: {flag}: ") and "Error:" not in r.output, r.output
    assert r.output.count("\n") == 1


def test_usage_errors_use_the_projects_error_line():
    for args in (["run"], ["run", "--bogus"], ["nosuch"], ["serve", "--port", "x"]):
        r = invoke(*args)
        assert r.exit_code == 2 and r.output.startswith("error: "), (args, r.output)
        assert "Usage:" not in r.output and "Error:" not in r.output
    # train also runs on its own (python -m p2phd_infer.train, which torchrun launches)
    from p2phd_infer.cli.train import train_cmd
    r = CliRunner().invoke(train_cmd, ["--dataroot", "x", "--batch-size", "0"])
    assert r.exit_code == 2 and r.output.startswith("error: --batch-size: "), r.output


@pytest.mark.parametrize("old, new, value, field", [
    ("--max-delay-us", "--max-queue-delay-us", "500", "max_queue_delay_us"),
    ("--quality", "--jpeg-quality", "80", "jpeg_quality"),
    ("--model", "--engine", "m.pt", "engine"),
])
def test_a_renamed_run_flag_still_works_and_warns_once(recorded, tmp_path, old, new, value,
                                                       field):
    for _ in range(2):
        r = invoke("run", "--out", tmp_path / "o", old, value)
        assert r.exit_code == 0, r.output
    assert str(getattr(recorded[-1], field)) == value
    assert r.output.count(f"{old} is deprecated; use {new}") == 0        # once per process
    both = invoke("run", "--out", tmp_path / "o", old, value, new, value)
    assert both.exit_code == 2 and f"error: {old}: is the old name of {new}" in both.output


def test_serve_checks_its_options_before_binding_or_loading():
    for args, flag in ((["--host", "0.0.0.0"], "--host"),
                       (["--model-repository", ".", "--load-model", "a"], "--load-model"),
                       (["--model-control-mode", "explicit"], "--model-control-mode"),
                       (["--model-name", "a/b"], "--model-name"),
                       (["--engine", "x.pt", "--model-repository", "."], "--model-repository"),
                       (["--max-delay-us", "-1"], "--max-delay-us")):
        r = invoke("serve", *args)
        assert r.exit_code == 2 and r.output.startswith(f"error: {flag}"), (args, r.output)


# ------------------------------------------------------------------ one constant per limit

def test_each_limit_is_defined_once():
    """The limits' literals appear only in limits.py, anywhere in the package, the trainer and
    the exporters."""
    literals = {4096, 60_000_000, 2**34, 100_000}
    # Other limits that happen to be the same number, each named once: the most filters of a
    # layer (config.py), the ring of accounted batches (serve/stats.py).
    others = {"MAX_FILTERS", "_OPEN_BATCHES"}
    found = []
    for path in [p for d in ("p2phd_infer", "train", "export") for p in (ROOT / d).rglob("*.py")]:
        if path.name == "limits.py":
            continue
        tree = ast.parse(path.read_text())
        named = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)
                 and any(getattr(t, "id", None) in others for t in n.targets)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and type(node.value) is int and \
                    node.value in literals and id(node) not in named:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value}")
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) and \
                    getattr(node.left, "value", None) == 2 and \
                    getattr(node.right, "value", None) == 34:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} 2**34")
    assert not found, found


@pytest.mark.parametrize("args, flag", [
    (["--format", "onnx", "--out", "m.onnx", "--precision", "int8"], "--precision"),
    (["--format", "openvino", "--out", "m.xml", "--calibration", "d"], "--calibration"),
    (["--format", "onnx", "--out", "m.xml"], "m.xml"),
    (["--format", "aoti", "--out", "m.pt2", "--dynamic-size"], "--dynamic-size"),
    (["--format", "onnx", "--out", "m.onnx", "--min-size", "64x64"], "--min-size"),
    (["--format", "onnx", "--out", "m.onnx", "--dynamic-size", "--min-size", "64"], "--min-size"),
    (["--format", "onnx", "--out", "m.onnx", "--width", "64"], "--height/--width"),
])
def test_export_options_are_checked_before_the_model_is_read(tmp_path, args, flag):
    """The model path does not exist: every fault here is found before it is opened."""
    r = invoke("export", "--engine", tmp_path / "missing.pt", *args)
    assert r.exit_code == 2 and r.output.startswith(f"error: {flag}: "), r.output
