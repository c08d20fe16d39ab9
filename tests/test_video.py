"""Video out: write_video (PyAV, H.264) and `run --format mp4`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

av = pytest.importorskip("av")

from p2phd_infer.checkpoint import Checkpoint, save_checkpoint  # noqa: E402
from p2phd_infer.cli import main  # noqa: E402
from p2phd_infer.config import ModelConfig  # noqa: E402
from p2phd_infer.errors import InputError, OptionError  # noqa: E402
from p2phd_infer.video import read_video, write_video  # noqa: E402

TINY = ModelConfig(label_nc=8, ngf=4, n_downsample_global=1, n_blocks_global=1, n_blocks_local=1)


def smooth_frames(n, h, w):
    """Moving gradients: content H.264 keeps close at crf 18 (noise would not be)."""
    y, x = np.mgrid[0:h, 0:w]
    return [np.stack([(x * 255 // max(w - 1, 1) + 8 * t) % 256, y * 255 // max(h - 1, 1),
                      np.full_like(x, 40 + 20 * t)], -1).astype(np.uint8) for t in range(n)]


def test_eight_frames_decode_back_to_eight_frames_of_the_size(tmp_path):
    frames = smooth_frames(8, 48, 64)
    assert write_video(iter(frames), tmp_path / "v.mp4", fps=24) == 8
    got = read_video(tmp_path / "v.mp4")
    assert len(got) == 8 and all(f.shape == (48, 64, 3) for f in got)
    for a, b in zip(frames, got):          # lossy, but the same picture
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 6
    with av.open(str(tmp_path / "v.mp4")) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and s.average_rate == 24
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]      # no temporary file left


def test_odd_sides_are_padded_and_bad_input_is_refused(tmp_path):
    frames = [torch.from_numpy(f) for f in smooth_frames(3, 33, 47)]    # torch frames too
    write_video(frames, tmp_path / "odd.mp4", fps=29.97)
    got = read_video(tmp_path / "odd.mp4")
    assert len(got) == 3 and got[0].shape == (34, 48, 3)
    mixed = smooth_frames(2, 32, 32) + smooth_frames(1, 16, 32)
    with pytest.raises(InputError, match="c.png: size 32x16 differs from the video's first "
                                         "frame \\(32x32\\)"):
        write_video(mixed, tmp_path / "mixed.mp4", names=["a.png", "b.png", "c.png"])
    with pytest.raises(InputError, match="expected uint8 \\[H,W,3\\]"):
        write_video([np.zeros((8, 8), np.uint8)], tmp_path / "gray.mp4")
    with pytest.raises(InputError, match="no frames"):
        write_video([], tmp_path / "empty.mp4")
    with pytest.raises(OptionError, match="--fps"):
        write_video(smooth_frames(1, 8, 8), tmp_path / "slow.mp4", fps=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.mp4"]


def write_scenes(root, names, size=(32, 48)):
    rng = np.random.default_rng(0)
    for name in names:
        for sub, dtype, hi, base in (("test_label", np.uint8, 8, 0),
                                     ("test_inst", np.uint16, 4, 26000)):
            path = root / sub / name
            path.parent.mkdir(parents=True, exist_ok=True)
            a = rng.integers(0, hi, size) * (1000 if base else 1) + base
            Image.fromarray(a.astype(dtype)).save(path)


def run(args):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return res.exit_code, res.output


def test_run_format_mp4_one_video_per_folder_and_a_rerun_skips_it(tmp_path):
    torch.manual_seed(0)
    from p2phd_infer.networks import build_generator
    net = build_generator(TINY)
    save_checkpoint(Checkpoint(TINY, net.state_dict()), tmp_path / "m.pt")
    # 8 frames at the top, 3 in a sub-folder, named out of order on purpose.
    write_scenes(tmp_path / "d", [f"{i:04d}.png" for i in (3, 1, 0, 2, 7, 5, 4, 6)] +
                 [f"cam2/{i}.png" for i in range(3)])
    args = ["run", tmp_path / "d" / "test_label", "--engine", tmp_path / "m.pt", "--out",
            tmp_path / "o", "--format", "mp4", "--fps", 12, "--batch-size", 3, "--no-progress",
            "--mode", "plain"]
    code, out = run(args)
    assert code == 0, out
    assert "11 frames: 11 written in 2 videos, 0 skipped" in out      # frames and videos
    top = read_video(tmp_path / "o" / "test_label.mp4")
    assert len(top) == 8 and top[0].shape == (32, 48, 3)
    assert len(read_video(tmp_path / "o" / "cam2.mp4")) == 3
    # Frames are in name order: frame k of the video is closest to the PNG of frame k.
    code, out = run(["run", tmp_path / "d" / "test_label", "--engine", tmp_path / "m.pt",
                     "--out", tmp_path / "png", "--mode", "plain", "--no-progress"])
    assert code == 0, out
    pngs = [np.asarray(Image.open(tmp_path / "png" / f"{i:04d}.png")).astype(int)
            for i in range(8)]
    for k, f in enumerate(top):
        errs = [np.abs(f.astype(int) - p).mean() for p in pngs]
        assert int(np.argmin(errs)) == k
    code, out = run(args)
    assert code == 0 and "11 frames: 0 written in 0 videos, 11 skipped" in out, out
    code, out = run(args + ["--ray"])
    assert code == 2 and "mp4 is encoded by the local executor" in out
