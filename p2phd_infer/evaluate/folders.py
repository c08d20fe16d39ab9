"""Which images go together: fakes, real photos, label maps and references pair by name.

A file's key is its path inside its folder without the extension and without one of the suffixes
Cityscapes and pix2pixHD put on names, so `aachen_000000_000019_leftImg8bit.png` (a photo),
`aachen_000000_000019_gtFine_labelIds.png` (its label map) and the image `run` made from that map
(`aachen_000000_000019_gtFine_labelIds.png` in its output folder) share the key
`aachen_000000_000019`; sub-folders stay part of the key.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
NAME_SUFFIXES = ("_gtFine_labelIds", "_gtFine_instanceIds", "_gtFine_color", "_labelIds",
                 "_instanceIds", "_leftImg8bit", "_synthesized_image", "_input_label")


def key_of(rel: str | Path) -> str:
    rel = Path(rel)
    stem = rel.name[: -len(rel.suffix)] if rel.suffix else rel.name
    for suffix in NAME_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            stem = stem[: -len(suffix)]
            break
    return str(rel.parent / stem) if str(rel.parent) != "." else stem


def images_in(folder: str | Path, option: str) -> dict[str, Path]:
    """{key: file} for every PNG/JPEG under `folder` (recursively); InputError naming the option
    for a missing or empty folder or two files with one key."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, f"no such folder ({option})" if not folder.exists()
                         else f"not a folder ({option})")
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in IMAGE_EXTS or not path.is_file():
            continue
        if path.name.endswith(("_instanceIds.png", "_color.png")) and option != "--labels":
            continue        # a Cityscapes folder's other maps are not photos
        key = key_of(path.relative_to(folder))
        if key in found:
            raise InputError(path, f"has the same name as {found[key]} ({option}): files pair "
                                   f"by name, so each name once")
        found[key] = path
    if not found:
        raise InputError(folder, f"no PNG or JPEG images in the folder ({option})")
    return found


def pair(left: dict[str, Path], right: dict[str, Path], left_opt: str, right_opt: str,
         right_folder: str | Path, both_ways: bool = True) -> list[str]:
    """The keys of `left`, each of which must have a file in `right` (and, both_ways, the other
    way round): InputError naming the first file without a partner and how many lack one."""
    missing = [k for k in left if k not in right]
    if missing:
        raise InputError(left[missing[0]], f"has no partner in {right_opt} {right_folder} "
                                           f"({len(missing)} of {len(left)} {left_opt} files "
                                           f"lack one; files pair by name, e.g. "
                                           f"{missing[0]}.png)")
    if both_ways:
        extra = [k for k in right if k not in left]
        if extra:
            raise InputError(right[extra[0]], f"has no partner in {left_opt} ({len(extra)} "
                                              f"{right_opt} files lack one)")
    return sorted(left)
