"""What a new user meets first: folders that pair by themselves, a folder-wide fault printed
once with a count, summary lines that say what ran, and export's default size. No network runs
here (the executors are replaced or the pieces called directly), so the module takes seconds."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from p2phd_infer.cli import main
from p2phd_infer.cli.run import FaultReport
from p2phd_infer.config import ModelConfig
from p2phd_infer.engines.base import Engine
from p2phd_infer.engines.choice import describe_engine
from p2phd_infer.errors import EngineError, OptionError
from p2phd_infer.export.options import ExportOptions, engine_size
from p2phd_infer.plan import RunSummary, discover


def png(path: Path, value: int = 1, dtype=np.uint8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype)).save(path)
    return path


@pytest.mark.parametrize("labels, insts", [("labels", "instances"), ("train_A", "train_inst"),
                                           ("test_label", "test_inst")])
def test_sibling_folders_pair_by_themselves(tmp_path, labels, insts):
    """The bundled demo's labels/ <-> instances/ and pix2pixHD's train_A/ <-> train_inst/ (RGB
    inputs) pair without --instances, as test_label/ <-> test_inst/ always did."""
    png(tmp_path / labels / "a.png")
    png(tmp_path / labels / "sub" / "b.png")
    inst_a = png(tmp_path / insts / "a.png", 26001, np.uint16)
    inst_b = png(tmp_path / insts / "sub" / "b.png", 26002, np.uint16)
    got = discover(str(tmp_path / labels))
    assert [(n, i) for n, _, i in got] == [("a", str(inst_a)), ("sub/b", str(inst_b))]


def test_a_folder_without_a_sibling_pairs_nothing(tmp_path):
    png(tmp_path / "maps" / "a.png")
    png(tmp_path / "instances" / "a.png")       # not the sibling of maps/
    assert discover(str(tmp_path / "maps")) == [("a", str(tmp_path / "maps" / "a.png"), None)]


def test_a_fault_every_frame_meets_is_printed_once_with_a_count(capsys):
    report = FaultReport()
    for i in range(1000):
        report({"file": f"f{i:04d}.png", "fault": "engine: built for 2048x1024"})
    report({"file": "odd.png", "fault": "label id 40 >= label_nc 35"})
    report.close()
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: f0000.png: engine: built for 2048x1024",
                   "error: odd.png: label id 40 >= label_nc 35",
                   "error: 999 more frames failed the same way: engine: built for 2048x1024"]


def test_an_empty_folder_is_one_error_without_a_summary_before_it(tmp_path):
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(main, ["run", str(tmp_path / "empty"), "--out", str(tmp_path / "o"),
                                  "--mode", "plain", "--backend", "torch", "--device", "cpu"])
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no label maps" in lines[0], \
        r.output


def test_an_mp4_run_counts_frames_and_videos():
    line = RunSummary(frames=4, written=4, videos=1).line()
    assert line.startswith("4 frames: 4 written in 1 video, 0 skipped")
    assert RunSummary(frames=4, written=4).line().startswith("4 frames: 4 written, 0 skipped")


def engine(backend, **extra):
    info = SimpleNamespace(backend=backend, precision="fp32", extra=extra)
    return SimpleNamespace(info=info, device=torch.device("cpu"), path=Path("/m/city_g.pt"))


def test_the_engine_line_says_what_ran():
    assert "through torch.compile (default)" in describe_engine(
        engine("torch", mode="plain", compile="default"))
    assert "through torch.compile" not in describe_engine(engine("torch", mode="plain"))
    line = describe_engine(engine("openvino", source="pt", openvino="2025.1-x"))
    assert "city_g.pt converted once per frame size" in line and "model.pt" not in line


def ckpt(**train_info):
    return SimpleNamespace(config=ModelConfig(), extra={"train_info": train_info})


def export_opts(fmt, **kw):
    suffix = {"onnx": ".onnx", "openvino": ".xml", "aoti": ".pt2", "tensorrt": ".plan"}[fmt]
    return ExportOptions(engine="m.pt", format=fmt, out=f"m{suffix}", **kw)


def test_export_defaults_to_the_training_frame_size():
    assert engine_size(export_opts("openvino"), ckpt(frame_size=[256, 512])) == \
        ((256, 512), None)
    assert engine_size(export_opts("onnx", height=64, width=128),
                       ckpt(frame_size=[256, 512]))[0] == (64, 128)


def test_export_without_a_recorded_size_is_dynamic_for_onnx_and_names_the_flags_otherwise():
    size, dynamic = engine_size(export_opts("onnx"), ckpt())
    cfg = ModelConfig()
    assert dynamic and dynamic["dynamic_size"] and size[0] % cfg.stride == 0
    for fmt in ("openvino", "aoti", "tensorrt"):
        with pytest.raises(OptionError, match="--height and --width") as e:
            engine_size(export_opts(fmt), ckpt())
        assert e.value.path == "--height/--width"
    with pytest.raises(OptionError, match="give both"):
        export_opts("onnx", height=256)


def test_a_fixed_size_engine_names_the_export_flags_for_another_size():
    fake = SimpleNamespace(name="m.xml", info=SimpleNamespace(size=(1024, 2048), max_batch=None))
    with pytest.raises(EngineError, match="--height 256 --width 512, or --dynamic-size"):
        Engine.check_shape(fake, torch.zeros(1, 1, 256, 512))


def test_export_help_lists_every_format_and_the_size_default():
    out = CliRunner().invoke(main, ["export", "--help"]).output
    assert ".xml" in out and "training frame size" in out and "--dynamic-size" in out
    assert "fixed" not in out


def test_torchs_cuda_toolkit_line_is_dropped_for_aoti():
    """torch.utils.cpp_extension's "No CUDA runtime is found" (a toolkit without a GPU) says
    nothing about a CPU package; its other lines still pass."""
    import logging

    import p2phd_infer.engines.aoti  # noqa: F401 - installs the filter
    log = logging.getLogger("torch.utils.cpp_extension")

    def passes(msg, *args):
        return bool(log.filter(log.makeRecord(log.name, logging.WARNING, __file__, 0, msg, args,
                                              None)))
    assert not passes("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
    assert passes("some other warning")
