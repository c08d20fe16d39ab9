#!/usr/bin/env python
"""What each engine and precision costs in image quality, beside what it gains in ms/frame.

The same label maps (make-scenes scenes: label, instance and photo folders) go through every
engine present, with one style choice (seed 0) for all. model.pt in fp32 on PyTorch (plain
mode) is the reference; every other row is judged against its images with
p2phd_infer.evaluate.engine_quality: PSNR / SSIM / max level difference (8-bit), and, when given,
the segmentation score's mean IoU and its change (--segmenter) and FID against the reference's
images and against the photos (--inception-weights).

  CPU rows   PyTorch fp32 (reference) and bf16 (autocast), ONNX Runtime (an .onnx exported
             here), OpenVINO f32 and bf16 (model.pt converted, as `run` does on a CPU; bf16 only
             where the CPU has it)
  CUDA rows  PyTorch fp16 and the fast path (where CUDA is present)
  files      --engine FILE (.pt2 AOTInductor, .plan TensorRT, .xml, .onnx) adds a row each

ms/frame: the median over the frames of --reps passes, each frame synthesized alone (batch 1),
interleaved across engines so a busy machine slows them alike.

    python benchmarks/quality.py --scenes scenes/ --segmenter seg.pt \
        --inception-weights inception.pth --out-dir benchmarks/results [--engines fp32,bf16]
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch

from p2phd_infer.api import Pix2PixHD
from p2phd_infer.engines import TorchEngine, default_engine_path, open_engine
from p2phd_infer.evaluate import InceptionFeatures, engine_quality, fid_kid, open_segmenter
from p2phd_infer.files import write_atomic
from p2phd_infer.image_io import read_id_png, read_rgb


def scenes_in(folder: Path, limit: int | None):
    """{name: (label, inst, photo or None)} from a make-scenes folder (<phase>_label, _inst,
    _img) or a folder of label maps."""
    labels = sorted(folder.glob("*_label/*.png")) or sorted(folder.glob("*.png"))
    if not labels:
        raise click.ClickException(f"--scenes {folder}: no label maps (make-scenes layout or "
                                   f"a folder of PNGs)")
    out = {}
    for lp in labels[:limit]:
        phase = lp.parent.name[: -len("_label")] if lp.parent.name.endswith("_label") else None
        ip = lp.parent.parent / f"{phase}_inst" / lp.name if phase else None
        pp = lp.parent.parent / f"{phase}_img" / lp.name if phase else None
        label = read_id_png(lp)
        inst = read_id_png(ip) if ip is not None and ip.is_file() else label
        photo = read_rgb(pp) if pp is not None and pp.is_file() else None
        out[lp.stem] = (label, inst, photo)
    return out


ROWS = ("fp32", "bf16", "fp16", "fast", "onnx", "openvino-f32", "openvino-bf16")


def specs(model: Path, device: str, engine_files, work: Path, size: tuple[int, int], log,
          wanted=ROWS):
    """(name, () -> Engine) for every engine present and wanted, the reference (fp32) first."""
    cuda = device.startswith("cuda")
    rows = [("fp32", "PyTorch fp32 (model.pt, plain): reference",
             lambda: TorchEngine(model, device, precision="fp32", mode="plain")),
            ("bf16", "PyTorch bf16" + (" (CUDA)" if cuda else " (CPU autocast)"),
             lambda: TorchEngine(model, device, precision="bf16", mode="plain"))]
    if cuda:
        rows.append(("fp16", "PyTorch fp16 (CUDA, plain)",
                     lambda: TorchEngine(model, device, precision="fp16", mode="plain")))
        rows.append(("fast", "PyTorch fp16 fast path (CUDA)",
                     lambda: TorchEngine(model, device, precision="fp16", mode="fast")))
    else:
        def onnx():
            from p2phd_infer.checkpoint import load_checkpoint
            from p2phd_infer.export.onnx_export import export_onnx
            H, W = size
            path = work / "model.onnx"
            if not path.exists():
                log("exporting ONNX")
                export_onnx(load_checkpoint(model), path, H, W, max_batch=1)
            return open_engine(path, "cpu")
        rows.append(("onnx", "ONNX Runtime (.onnx, CPU provider)", onnx))
        rows.append(("openvino-f32", "OpenVINO f32 (model.pt converted: run's CPU default)",
                     lambda: open_engine(model, "cpu", backend="openvino", precision="fp32")))
        if "openvino-bf16" in wanted:
            from p2phd_infer.engines.openvino import cpu_capabilities
            if "BF16" in cpu_capabilities():
                rows.append(("openvino-bf16", "OpenVINO bf16",
                             lambda: open_engine(model, "cpu", backend="openvino",
                                                 precision="bf16")))
            else:
                log("OpenVINO bf16: not run (this CPU has no BF16)")
    out = [(name, make) for key, name, make in rows if key == "fp32" or key in wanted]
    for f in engine_files:
        out.append((Path(f).name, lambda f=f: open_engine(f, device)))
    return out


@click.command()
@click.option("--model", type=click.Path(dir_okay=False),
              help="model.pt (default: the bundled demo model).")
@click.option("--scenes", type=click.Path(file_okay=False),
              help="make-scenes folder (default: 8 held-out scenes made here, seed 999, "
                   "512x256).")
@click.option("--count", default=8, show_default=True, help="Scenes to use.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--engine", "engine_files", multiple=True, type=click.Path(dir_okay=False),
              help="More engine files (.pt2, .plan, .xml, .onnx) to judge; repeatable.")
@click.option("--engines", "wanted", default=",".join(ROWS), show_default=True,
              help="Rows to run, of those present (fp32, the reference, always runs).")
@click.option("--segmenter", type=click.Path(dir_okay=False),
              help="Segmenter for the mean IoU column (TorchScript/ONNX with its sidecar).")
@click.option("--inception-weights", type=click.Path(dir_okay=False),
              help="FID Inception weights for the FID columns.")
@click.option("--reps", default=2, show_default=True, type=click.IntRange(1),
              help="Timed passes over the scenes per engine.")
@click.option("--out-dir", default="benchmarks/results", show_default=True,
              type=click.Path(file_okay=False))
def main(model, scenes, count, device, engine_files, wanted, segmenter, inception_weights, reps,
         out_dir):
    """Quality (vs model.pt fp32) beside ms/frame for every engine and precision present."""
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    wanted = [w.strip() for w in wanted.split(",") if w.strip()]
    unknown = sorted(set(wanted) - set(ROWS))
    if unknown:
        raise click.ClickException(f"--engines {','.join(unknown)}: rows are {', '.join(ROWS)}")
    model = Path(model) if model else default_engine_path()
    with tempfile.TemporaryDirectory(prefix="p2phd-quality-") as work:
        quality_table(Path(work), model, scenes, count, device, engine_files, wanted, segmenter,
                      inception_weights, reps, out_dir, log)


def quality_table(work, model, scenes, count, device, engine_files, wanted, segmenter,
                  inception_weights, reps, out_dir, log):
    if scenes is None:
        from p2phd_infer.train.scenes import make_scenes
        make_scenes(work / "scenes", count, 512, 256, seed=999, phase="test")
        scenes = work / "scenes"
    data = scenes_in(Path(scenes), count)
    names = sorted(data)
    H, W = data[names[0]][0].shape
    labels = {n: data[n][0] for n in names}
    photos = {n: data[n][2] for n in names if data[n][2] is not None}
    seg = open_segmenter(segmenter) if segmenter else None
    inception = InceptionFeatures(inception_weights, download=False) if inception_weights \
        else None
    f_photos = inception([photos[n] for n in sorted(photos)]) \
        if inception is not None and len(photos) >= 2 else None

    engines, images, times, skipped = {}, {}, {}, {}
    for name, make in specs(model, device, engine_files, work, (H, W), log, wanted):
        try:
            engines[name] = Pix2PixHD(make(), seed=0)
            engines[name](data[names[0]][0], data[names[0]][1])          # warm-up
        except Exception as e:  # noqa: BLE001 - a backend that is not here skips its row
            skipped[name] = f"{e.__class__.__name__}: {str(e).splitlines()[0][:200]}"
            engines.pop(name, None)
            log(f"skip {name}: {skipped[name]}")
            continue
        images[name], times[name] = {}, []
    for r in range(reps):                         # interleaved: each pass visits every engine
        for name, p2p in engines.items():
            for n in names:
                label, inst, _ = data[n]
                t0 = time.perf_counter()
                img = p2p(label, inst)
                times[name].append(1000 * (time.perf_counter() - t0))
                images[name][n] = img
        log(f"pass {r + 1}/{reps}: " + ", ".join(
            f"{k.split(' (')[0]} {statistics.median(v[-len(names):]):.0f} ms"
            for k, v in times.items()))
    ref_name = next(iter(engines))
    reference = images[ref_name]
    rows, cache = [], {}
    for name in engines:
        q = engine_quality(images[name], reference, labels=labels, segmenter=seg,
                           inception=inception if name != ref_name else None, cache=cache)
        if name == ref_name and inception is not None:
            q["fid_vs_reference"] = 0.0
            cache["last_features"] = cache["features"] = inception(
                [reference[n] for n in names])
        if f_photos is not None:
            f = cache["last_features"][[names.index(n) for n in sorted(photos)]]
            q["fid_vs_photos"] = fid_kid(f, f_photos, subsets=1)["fid"]
        row = {"engine": name, "ms_per_frame": statistics.median(times[name]),
               "ms_min": min(times[name]), **q}
        rows.append(row)
        log(f"{name}: {row['ms_per_frame']:.0f} ms/frame, PSNR {q['psnr_db']} dB")
    meta = {"date": datetime.datetime.now().isoformat(timespec="minutes"),
            "model": str(model), "scenes": str(scenes), "frames": len(names), "size": f"{W}x{H}",
            "device": device, "torch": torch.__version__, "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "reps": reps,
            "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            "segmenter": seg.describe() if seg else None,
            "inception": inception.describe() if inception else None, "skipped": skipped}
    md = markdown(meta, rows)
    out = Path(out_dir)
    stem = f"quality_{device.split(':')[0]}_{W}x{H}"
    write_atomic(out / f"{stem}.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    write_atomic(out / f"{stem}.md", md)
    click.echo(md)
    log(f"wrote {out / stem}.json and .md")


def _z(v: float, digits: int) -> float:
    """Rounded, without a "-0.000" for a difference that is zero at that precision."""
    return round(v, digits) + 0.0


def markdown(meta: dict, rows: list[dict]) -> str:
    fid = any("fid_vs_reference" in r for r in rows)
    photos = any("fid_vs_photos" in r for r in rows)
    miou = any("mean_iou" in r for r in rows)
    head = ["engine", "ms/frame (median)", "PSNR dB", "min PSNR dB", "SSIM", "max diff"]
    head += ["mIoU", "Δ mIoU"] if miou else []
    head += ["FID vs reference"] if fid else []
    head += ["FID vs photos"] if photos else []
    lines = [f"{meta['frames']} scenes at {meta['size']} from `{meta['scenes']}`, model "
             f"`{meta['model']}`, {meta['device']}, torch {meta['torch']} ({meta['threads']} "
             f"threads), {meta['reps']} interleaved passes, {meta['date']}, load average "
             f"{meta['load_average']}. Quality against the reference row's 8-bit images.", "",
             "| " + " | ".join(head) + " |",
             "| --- | " + " | ".join("---:" for _ in head[1:]) + " |"]

    def db(v):
        return "identical" if v is None else f"{v:.2f}"
    for r in rows:
        cells = [r["engine"], f"{r['ms_per_frame']:.0f}", db(r["psnr_db"]),
                 db(r["min_psnr_db"]), f"{r['ssim']:.4f}", str(r["max_diff"])]
        if miou:
            cells += [f"{r['mean_iou']:.4f}", f"{_z(r['mean_iou_delta'], 4):+.4f}"]
        if fid:
            cells.append(f"{_z(r['fid_vs_reference'], 3):.3f}")
        if photos:
            cells.append(f"{r['fid_vs_photos']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    for name, why in meta["skipped"].items():
        lines.append(f"| {name} | not run: {why} |" + " |" * (len(head) - 2))
    if meta["inception"] and not meta["inception"]["standard"]:
        lines += ["", "FID columns use non-standard Inception weights "
                      f"(`{meta['inception']['file']}`): they rank engines, they are not "
                      "comparable with published FIDs."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
