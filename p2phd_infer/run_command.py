"""`p2phd-infer run`: synthesize an image for every label map in a folder."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import CheckpointError
from .engines import EngineError, open_engine
from .frames import Frame, decode_frame, discover_frames
from .image_io import InputError, write_image
from .synthesizer import to_uint8


@click.command("run")
@click.argument("labels", required=False, type=click.Path())
@click.option("--engine", "engine_path", type=click.Path(dir_okay=False),
              help="model.pt, .pt2, .onnx or .plan; default: the bundled demo model.")
@click.option("--instances", type=click.Path(file_okay=False),
              help="Folder of instance maps with the same file names as the label maps.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(1))
@click.option("--fp16", is_flag=True, help="Half precision (PyTorch engines).")
@click.option("--overwrite", is_flag=True, help="Rewrite outputs that already exist.")
def run_cmd(labels, engine_path, instances, out, device, batch_size, fp16, overwrite):
    """Synthesize OUT/<name>.png for every label map in LABELS (a folder or one PNG).

    Instance maps pair by file name in --instances, by Cityscapes names
    (*_gtFine_labelIds.png / *_gtFine_instanceIds.png) in one folder, or by pix2pixHD sibling
    folders (test_label/ / test_inst/). A bad file is reported and skipped; the others are still
    written, and the exit status is non-zero at the end. Existing outputs are skipped unless
    --overwrite. With no LABELS, the bundled sample label maps are used.
    """
    from .cli import fail
    try:
        engine = open_engine(engine_path, device, fp16=fp16)
        frames = discover_frames(labels or _sample_labels(), instances if labels else
                                 instances or _sample_labels().parent / "instances")
    except (EngineError, CheckpointError, InputError) as e:
        raise fail(str(e))
    out = Path(out)
    todo = [f for f in frames if overwrite or not (out / f"{f.name}.png").exists()]
    skipped = len(frames) - len(todo)
    failures = synthesize_frames(engine, todo, out, batch_size)
    click.echo(f"{len(todo) - failures} written, {skipped} skipped (exist), {failures} failed",
               err=True)
    if failures:
        raise click.exceptions.Exit(1)


def _sample_labels() -> Path:
    from .engines import default_engine_path
    return default_engine_path().parent / "labels"


def synthesize_frames(engine, frames: list[Frame], out: Path, batch_size: int) -> int:
    """Decode, batch frames of one size, run, write; returns the number of failed frames."""
    failures = 0
    batch: list[tuple[Frame, np.ndarray, np.ndarray]] = []

    def flush():
        nonlocal failures
        if not batch:
            return
        label = torch.from_numpy(np.stack([b[1] for b in batch])[:, None]).to(engine.device)
        inst = torch.from_numpy(np.stack([b[2] for b in batch])[:, None]).to(engine.device)
        try:
            images = to_uint8(engine(label, inst)).cpu().numpy()
        except Exception as e:  # noqa: BLE001 - an engine fault fails this batch, not the run
            for f, _, _ in batch:
                tqdm.write(f"error: {f.label}: engine failed: {e}")
            failures += len(batch)
        else:
            for (f, _, _), rgb in zip(batch, images):
                write_image(out / f"{f.name}.png", rgb)
        bar.update(len(batch))
        batch.clear()

    with tqdm(total=len(frames), unit="frame", desc="synthesize") as bar:
        for f in frames:
            try:
                label, inst = decode_frame(f, engine.config)
            except InputError as e:
                tqdm.write(f"error: {e}")
                failures += 1
                bar.update(1)
                continue
            if batch and batch[0][1].shape != label.shape:
                flush()
            batch.append((f, label, inst))
            if len(batch) == batch_size:
                flush()
        flush()
    return failures
