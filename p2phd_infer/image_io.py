"""Reading id maps and photos, encoding and writing images (atomically, through files.py).

Label maps are 8- or 16-bit single-channel PNGs of class ids; instance maps are 16-bit PNGs
(Cityscapes `*_instanceIds.png`). Both decode to exact int32: ids never pass through a float.
Greyscale PNGs of 1, 2 or 4 bits a sample decode to the values stored (bit depth from the IHDR
header): Pillow scales them to 0..255 (a 4-bit 2 reads as 34), which would be a valid, wrong id.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError, OptionError
from .files import write_atomic
from .locations import read_bytes

try:  # fpng: a fast lossless PNG encoder (~10 ms per 2048x1024 frame against ~200 ms for zlib)
    import fpng as _fpng
except Exception:  # noqa: BLE001 - optional; Pillow is the fallback
    _fpng = None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_id_png(location: str | os.PathLike | bytes, max_pixels: int | None = None, *,
                name: str | None = None) -> np.ndarray:
    """A single-channel PNG of ids (8-bit, 16-bit, 32-bit or palette indices) -> int32 [H,W].

    `location` is a path, a URI, or the file's bytes (an upload); errors name `name` when given
    (else the location, or "<bytes>"). Anything else is refused naming the file: not a PNG (a
    JPEG named .png would decode to wrong ids), a colour image, or more than `max_pixels` pixels
    (checked from the header, before the pixels are decoded)."""
    return read_label_png(location, max_pixels, name=name, label_format="ids")


# carla: a CARLA segmentation camera PNG (RGB: the tag in red; sim.py reads it)
LABEL_FORMATS = ("auto", "ids", "color", "carla")
_ID_MODES = ("L", "P", "I", "1")
_GREYSCALE = 0                 # PNG colour type of a greyscale image without alpha


def png_header(data: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR chunk (the first chunk, bytes 8..33), or None
    where the bytes do not start with one."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    return data[24], data[25]


def _stored_greyscale(arr: np.ndarray, depth: int, location) -> np.ndarray:
    """Pillow's 0..255 samples of a 2- or 4-bit greyscale PNG -> the values stored (Pillow
    multiplies them by 255 / (2**depth - 1): exact, so the division is too)."""
    scale = 255 // (2 ** depth - 1)
    if (arr % scale).any():     # a decoder that scaled otherwise: refuse rather than guess
        raise InputError(location, f"a {depth}-bit greyscale PNG whose samples do not decode "
                                   f"exactly; save it as an 8-bit map")
    return arr // scale


def read_label_png(location: str | os.PathLike | bytes, max_pixels: int | None = None, *,
                   name: str | None = None, label_format: str = "ids") -> np.ndarray:
    """A label map PNG -> int32 [H,W] ids, or uint8 [H,W,3] colours (for a palette to map).

    label_format: "ids" (a single-channel map, as read_id_png), "color" (an RGB or RGBA map,
    alpha ignored, or a palette-indexed one converted to its colours), "auto" (single-channel
    and palette-indexed maps are ids, RGB and RGBA maps colours) or "carla" (a CARLA camera's
    RGB(A) channels as stored, for sim.py). Every fault names the file."""
    if label_format not in LABEL_FORMATS:
        raise OptionError("--label-format", f"{label_format!r}: one of {', '.join(LABEL_FORMATS)}")
    if isinstance(location, (bytes, bytearray, memoryview)):
        data, location = bytes(location), name or "<bytes>"
    else:
        data = read_bytes(location)
        location = name or location
    if not data.startswith(PNG_SIGNATURE):
        what = "a JPEG" if data[:3] == b"\xff\xd8\xff" else "empty" if not data else "not a PNG"
        raise InputError(location, f"{what} file, not a PNG id map (label and instance maps must "
                                   f"be lossless PNGs)")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            W, H = im.size
            if max_pixels is not None and W * H > max_pixels:
                raise InputError(location, f"{W}x{H} is {W * H:,} pixels, above the limit of "
                                           f"{max_pixels:,} (--max-pixels)")
            mode = im.mode
            single = mode in _ID_MODES or mode.startswith("I;16")
            colour = mode in ("RGB", "RGBA")
            if label_format == "carla":
                if not colour:
                    raise InputError(location, f"expected a CARLA segmentation camera image "
                                               f"(RGB or RGBA, the tag in red), found a {mode} "
                                               f"image")
                im.load()
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
            if label_format == "color":
                if not (colour or mode == "P"):
                    raise InputError(location, f"expected a colour label map (RGB), found a "
                                               f"{mode} image ({len(im.getbands())} channel(s)); "
                                               f"an id map takes --label-format ids")
                im.load()
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
            if colour and label_format == "auto":
                im.load()
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
            if not single:
                hint = "; a colour label map takes --label-format color or auto" if colour else ""
                raise InputError(location, f"expected a single-channel id map, found a {mode} "
                                           f"image ({len(im.getbands())} channels){hint}")
            im.load()
            if mode in ("L", "P", "1"):
                arr = np.asarray(im, dtype=np.uint8)
                header = png_header(data)
                if mode == "L" and header is not None and header[1] == _GREYSCALE and \
                        header[0] < 8:
                    arr = _stored_greyscale(arr, header[0], location)
            elif mode.startswith("I;16"):
                arr = np.asarray(im).astype(np.uint16)
            else:
                arr = np.asarray(im, dtype=np.int32)
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(location, "not a readable PNG (corrupt or truncated)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(location, f"not a readable PNG ({e.__class__.__name__}: {e})") from None
    return arr.astype(np.int32, copy=False)


def read_rgb(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """A photo (any format Pillow reads: PNG, JPEG, ...) -> uint8 [H,W,3]; more than
    `max_pixels` pixels is refused from the header, before decoding."""
    data = read_bytes(path)
    try:
        with Image.open(io.BytesIO(data)) as im:
            W, H = im.size
            if max_pixels is not None and W * H > max_pixels:
                raise InputError(path, f"{W}x{H} is {W * H:,} pixels, above the limit of "
                                       f"{max_pixels:,} (--max-pixels)")
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as e:
        raise InputError(path, f"not a readable image ({e.__class__.__name__}: {e})") from None


def encode_image(rgb: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """uint8 [H,W,3] -> file bytes. PNG through fpng when installed (lossless, decodes to the same
    pixels), else Pillow; JPEG through Pillow."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    fmt = fmt.lower()
    if fmt == "png":
        if _fpng is not None:
            return bytes(_fpng.from_ndarray(rgb))
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()
    if fmt in ("jpg", "jpeg"):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
        return buf.getvalue()
    raise OptionError("--format", f"unknown image format {fmt!r} (png or jpg)")


def write_image(path: str | os.PathLike, rgb: np.ndarray, quality: int = 95) -> None:
    fmt = Path(path).suffix.lstrip(".") or "png"
    write_atomic(path, encode_image(rgb, fmt, quality))
