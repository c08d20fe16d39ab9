"""Video out: frames (uint8 [H,W,3]) -> one H.264 MP4 through PyAV (the `av` package).

    write_video(frames, "out/clip.mp4", fps=30)      # any iterable: encoded as it is consumed

`run --format mp4` writes each folder of frames as one video: frames grouped by their output
sub-folder (`a/b/0001.png` -> `OUT/a/b.mp4`; frames directly in LABELS -> `OUT/<LABELS' name>.mp4`),
in name order. H.264 in yuv420p needs even sides: an odd side is padded by one copy of the last
row or column. Every frame of a video must have the first frame's size.

The file is written under a temporary name in its folder and renamed when complete
(files.write_atomic), so a killed run leaves no partial video and a rerun skips finished ones.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import InputError, MissingDependency, OptionError
from .files import write_atomic
from .limits import MAX_FPS

# A video's time base: a rate is stored as a fraction with at most this denominator
# (29.97 -> 30000/1001, NTSC's).
RATE_DENOMINATOR = 1001


def frame_rate(fps) -> Fraction:
    """The frame rate a video stores for `fps`; OptionError (--fps) for one it cannot store.
    RunOptions checks --fps with this, so a bad rate fails before any frame is synthesized."""
    try:
        rate = Fraction(fps).limit_denominator(RATE_DENOMINATOR)
    except (TypeError, ValueError, OverflowError):
        raise OptionError("--fps", f"{fps!r} is not a number") from None
    if rate <= 0 < fps:
        raise OptionError("--fps", f"{fps!r} is below the lowest rate a video stores "
                                   f"(1/{RATE_DENOMINATOR} frames per second)")
    if not 0 < rate <= MAX_FPS:
        raise OptionError("--fps", f"{fps!r} is outside (0, {MAX_FPS:g}]")
    return rate


def _as_rgb(frame, index: int) -> np.ndarray:
    if hasattr(frame, "detach"):                      # a torch tensor, possibly on the GPU
        frame = frame.detach().cpu().numpy()
    a = np.asarray(frame)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise InputError(f"frame {index}", f"expected uint8 [H,W,3], got {a.dtype} "
                                           f"{list(a.shape)}")
    return a


def _even(a: np.ndarray) -> np.ndarray:
    H, W, _ = a.shape
    if H % 2 or W % 2:
        a = np.pad(a, ((0, H % 2), (0, W % 2), (0, 0)), mode="edge")
    return np.ascontiguousarray(a)


def write_video(frames: Iterable, path: str | os.PathLike, fps: float = 30, *,
                crf: int = 18, names: Iterable[str] | None = None) -> int:
    """Encode `frames` (uint8 [H,W,3], numpy or torch) as H.264 (yuv420p, constant rate factor
    `crf`: 18 is visually lossless) into `path` atomically; returns the frame count.

    `names`, in step with `frames`, name a frame in errors (a size that differs from the first
    frame's). InputError for a bad frame or no frames, OutputError for the write; no file is left
    behind on any error."""
    rate = frame_rate(fps)
    try:
        import av
    except ImportError:
        raise MissingDependency("--format mp4", "needs PyAV: pip install av") from None
    count = 0
    name_iter = iter(names) if names is not None else None

    def encode(tmp: Path) -> None:
        nonlocal count
        container = av.open(str(tmp), mode="w", format="mp4")
        try:
            stream = None
            size = None
            for i, frame in enumerate(frames):
                name = next(name_iter, f"frame {i}") if name_iter is not None else f"frame {i}"
                rgb = _as_rgb(frame, i)
                if size is None:
                    size = rgb.shape[:2]
                    even = _even(rgb)
                    stream = container.add_stream("libx264", rate=rate)
                    stream.width, stream.height = even.shape[1], even.shape[0]
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf)}
                elif rgb.shape[:2] != size:
                    raise InputError(name, f"size {rgb.shape[1]}x{rgb.shape[0]} differs from "
                                           f"the video's first frame ({size[1]}x{size[0]})")
                vf = av.VideoFrame.from_ndarray(_even(rgb), format="rgb24")
                for packet in stream.encode(vf):
                    container.mux(packet)
                count += 1
            if stream is None:
                raise InputError(str(path), "no frames to write")
            for packet in stream.encode():              # flush the encoder
                container.mux(packet)
        finally:
            container.close()

    write_atomic(path, encode, suffix=".mp4")
    return count


def read_video(path: str | os.PathLike) -> list[np.ndarray]:
    """Every frame of a video as uint8 [H,W,3] (for checks; videos are small in tests)."""
    import av
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def video_of(name: str, root_name: str, out: str) -> str:
    """The video a frame belongs to: its output sub-folder as `OUT/<sub-folder>.mp4`, or
    `OUT/<root_name>.mp4` for a frame at the top."""
    parent = os.path.dirname(name.replace("\\", "/"))
    return os.path.join(out, (parent or root_name) + ".mp4")
