"""`evaluate(EvalOptions)`: every quality figure of a folder of synthesized images, as one
report (a JSON-ready dict), and its Markdown rendering."""
from __future__ import annotations

import datetime
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, OptionError
from ..files import write_atomic
from ..limits import MAX_KID_SUBSETS, MAX_STYLES
from ..options import check, setting
from ..plan import EngineOptions
from ..image_io import read_id_png, read_rgb
from .fid import InceptionFeatures, check_counts, fid_kid
from .fidelity import Lpips, against, diversity, temporal
from .folders import images_in, key_of, pair
from .segmentation import ARCHS, open_segmenter, segmentation_score

REPORT_VERSION = 1


def _styles_rule(n: int) -> None:
    if n == 1:
        raise OptionError("--styles", f"1: diversity needs 2..{MAX_STYLES} styles per label map "
                                      f"(0: off)")


@dataclass
class EvalOptions(EngineOptions):
    """Every option of `evaluate` (the command line is generated from it, cli/options.py)."""
    fake: str | None = setting(None, "Folder of synthesized images (e.g. `run`'s --out).",
                               path="dir", required=True)
    real: str | None = setting(
        None, "Folder of real photos: FID/KID against them, and the segmenter's upper-bound row "
              "(paired with --labels by name).", path="dir")
    labels: str | None = setting(
        None, "Label maps the fakes were made from (paired by name; Cityscapes "
              "*_gtFine_labelIds.png and pix2pixHD folders work).", path="any")
    instances: str | None = setting(
        None, "Instance maps for --labels (else paired as `run` pairs them).", path="dir")
    segmenter: str | None = setting(
        None, "Segmentation network: TorchScript (.pt/.ts) or .onnx, RGB in, logits out; or a "
              "torchvision DeepLabV3 state dict with --segmenter-arch.", path="file")
    segmenter_arch: str = setting(
        "auto", "auto: .onnx is ONNX, anything else TorchScript; deeplabv3_*: torchvision's "
                "DeepLabV3 from a weights file.", choices=ARCHS)
    segmenter_classes: str | None = setting(
        None, "What its output channels are: cityscapes (the 19 trainIds), labels (the model's "
              "label ids 0..label_nc-1) or comma-separated label names.",
        shown_default="its sidecar <FILE>.json, else guessed from the channel count")
    segmenter_size: str | None = setting(
        None, "WxH the segmenter takes.", shown_default="sidecar, else the image's own size")
    segmenter_mean: str | None = setting(
        None, "r,g,b subtracted from [0,1] RGB.",
        shown_default="sidecar; ImageNet's for DeepLabV3, else 0,0,0")
    segmenter_std: str | None = setting(
        None, "r,g,b divided by after the mean.",
        shown_default="sidecar; ImageNet's for DeepLabV3, else 1,1,1")
    fid: bool = setting(True, "Skip FID and KID (which need the FID Inception weights).",
                        flag="--no-fid")
    inception_weights: str | None = setting(
        None, "FID Inception weights (torch-fidelity's weights-inception-2015-12-05-6726825d.pth).",
        path="file", shown_default="torch's cache, else downloaded when online")
    fid_features: str = setting(
        "2048", "Inception pool for FID/KID: 2048 is the standard FID; the smaller ones are "
                "quicker checks, not comparable with published figures.",
        choices=("64", "192", "768", "2048"))
    download: bool = setting(True, "Never download missing FID Inception weights.",
                             flag="--no-download")
    kid_subsets: int = setting(100, "KID: number of random subsets.",
                              bounds=(1, MAX_KID_SUBSETS))
    kid_subset_size: int | None = setting(
        None, "KID: images per subset.", bounds=(2, None),
        shown_default="1000, or half the smaller set below 2000 images")
    seed: int = setting(0, "Seed of KID's subsets.", bounds=(0, None))
    against: str | None = setting(
        None, "Reference images (e.g. the fp32 engine's): PSNR, SSIM, max level difference per "
              "image and overall.", path="dir")
    temporal: bool = setting(
        False, "Frames in name order (per sub-folder): mean change where the labels did not "
               "change, for the fakes and for --real (the input frames).")
    styles: int = setting(
        0, "Render N styles per label map through --engine (a features model) and report mean "
           "pairwise LPIPS (0: off).", bounds=(0, MAX_STYLES), check=_styles_rule)
    lpips_weights: str | None = setting(
        None, "State dict of lpips.LPIPS(net='alex').", path="file",
        shown_default="the lpips package's heads with torchvision's AlexNet from torch's cache")
    progress: bool = setting(True, "No progress bars, no report on stdout.", flag="--quiet")

    def __post_init__(self):
        check(self)
        if self.fake is None:
            raise OptionError("--fake", "required: the folder of synthesized images")
        for need, flag in ((self.segmenter, "--segmenter"), (self.temporal, "--temporal"),
                           (self.styles, "--styles")):
            if need and self.labels is None:
                raise OptionError(flag, "needs --labels (the label maps the fakes were made from)")
        if self.instances is not None and self.labels is None:
            raise OptionError("--instances", "needs --labels")


def _bar(opts: EvalOptions, what: str) -> str | None:
    return what if opts.progress else None


def _labels(opts: EvalOptions) -> dict[str, tuple[Path, Path | None]]:
    from ..plan import discover
    rows = discover(opts.labels, opts.instances)
    out: dict[str, tuple[Path, Path | None]] = {}
    for name, label, inst in rows:
        key = key_of(name + ".png")
        if key in out:
            raise InputError(label, f"has the same name as {out[key][0]} (--labels)")
        out[key] = (Path(label), Path(inst) if inst else None)
    if not out:
        raise InputError(opts.labels, "no label maps in the folder (--labels)")
    return out


def _reader(path: Path):
    return lambda: read_rgb(path)


def evaluate(opts: EvalOptions) -> dict:
    """The report. Every input fault is an InputError/OptionError naming the file or flag."""
    import torch
    # A context, not set_grad_enabled(False): the caller's process (a notebook, a test session,
    # a trainer) keeps autograd on afterwards.
    with torch.no_grad():
        return _evaluate(opts)


def _evaluate(opts: EvalOptions) -> dict:
    fakes = images_in(opts.fake, "--fake")
    reals = images_in(opts.real, "--real") if opts.real else None
    labels = _labels(opts) if opts.labels else None
    if labels is not None:
        pair(fakes, {k: v[0] for k, v in labels.items()}, "--fake", "--labels", opts.labels)
    report: dict = {"version": REPORT_VERSION,
                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                        timespec="seconds"),
                    "fake": str(opts.fake), "real": opts.real, "labels": opts.labels,
                    "images": {"fake": len(fakes), "real": len(reals) if reals else 0}}
    engine = label_names = label_nc = None
    if opts.engine is not None or opts.styles:
        from ..engines import open_engine, default_engine_path
        engine = open_engine(opts.engine, opts.device, precision=opts.precision, mode=opts.mode,
                             calibration=opts.calibration)
        label_names = engine.info.label_names
        label_nc = engine.config.label_nc or None
        report["engine"] = str(opts.engine or default_engine_path())

    # Every network is opened before any work, so a bad file or flag fails in the first second.
    inception = seg = lp = None
    if reals is not None and opts.fid:
        check_counts(len(fakes), len(reals), opts.kid_subset_size)
        inception = InceptionFeatures(opts.inception_weights, download=opts.download,
                                      features=int(opts.fid_features))
    if opts.segmenter is not None:
        seg = open_segmenter(opts.segmenter, opts.segmenter_arch, classes=opts.segmenter_classes,
                             size=opts.segmenter_size, mean=opts.segmenter_mean,
                             std=opts.segmenter_std, label_names=label_names, label_nc=label_nc)
    if opts.styles:
        if engine.config.feat_num <= 0:
            raise OptionError("--styles", f"{report['engine']}: the model has no instance features "
                                          f"(feat_num 0), so a label map has one look")
        lp = Lpips(opts.lpips_weights)
    refs = images_in(opts.against, "--against") if opts.against is not None else None
    if refs is not None:
        pair(fakes, refs, "--fake", "--against", opts.against)
    real_keys = None
    if seg is not None and reals is not None:
        real_keys = pair(reals, {k: v[0] for k, v in labels.items()}, "--real", "--labels",
                         opts.labels, both_ways=False)
    if opts.temporal and reals is not None:
        pair(fakes, reals, "--fake", "--real", opts.real, both_ways=False)

    def label_of(key):
        return read_id_png(labels[key][0])

    if inception is not None:
        net = inception
        n_fake, n_real = len(fakes), len(reals)
        f_fake = net([_reader(p) for p in fakes.values()], _bar(opts, "Inception (fake)"))
        f_real = net([_reader(p) for p in reals.values()], _bar(opts, "Inception (real)"))
        scores = fid_kid(f_fake, f_real, subsets=opts.kid_subsets,
                         subset_size=opts.kid_subset_size, seed=opts.seed)
        report["fid"] = {"value": scores["fid"], "fake_images": n_fake, "real_images": n_real,
                         "library": scores["library"], "inception": net.describe(),
                         "note": "FID is biased upward below ~2048 images per set: compare "
                                 "figures at equal image counts"}
        report["kid"] = scores["kid"]
    if seg is not None:
        rows = {"synthesized": segmentation_score(
            seg, [(str(fakes[k]), _reader(fakes[k]), label_of(k)) for k in sorted(fakes)],
            _bar(opts, "segmenter (fake)"))}
        if real_keys is not None:
            rows["real (upper bound)"] = segmentation_score(
                seg, [(str(reals[k]), _reader(reals[k]), label_of(k)) for k in real_keys],
                _bar(opts, "segmenter (real)"))
        report["segmentation"] = {"segmenter": seg.describe(), "classes": seg.classes.names,
                                  "ignored": "label ids outside the classes (255)",
                                  "rows": rows}
    if refs is not None:
        report["against"] = {"reference": str(opts.against), **against(
            [(str(fakes[k]), _reader(fakes[k]), _reader(refs[k])) for k in sorted(fakes)],
            _bar(opts, "against"))}
    if opts.temporal:
        keys = sorted(fakes)

        def frames(images):
            for k in keys:
                label_path, inst_path = labels[k]
                inst = read_id_png(inst_path) if inst_path is not None else None
                yield str(Path(k).parent), str(images[k]), _reader(images[k]), \
                    read_id_png(label_path), inst
        out = {"synthesized": temporal(frames(fakes), _bar(opts, "temporal (fake)"))}
        if reals is not None:
            out["inputs"] = temporal(frames(reals), _bar(opts, "temporal (real)"))
        else:
            out["inputs"] = None
            out["note"] = "the inputs' figure needs the input frames: give --real"
        out["unit"] = ("mean absolute change of 8-bit levels between consecutive frames (name "
                       "order within each sub-folder) over the pixels whose label and instance "
                       "ids did not change")
        report["temporal"] = out
    if lp is not None:
        groups = _render_styles(engine, labels, opts.styles)
        report["diversity"] = {"styles": opts.styles, "seeds": list(range(opts.styles)),
                               **diversity(lp, groups, _bar(opts, "LPIPS"))}
    return report


def _render_styles(engine, labels, n: int):
    """(key, [n images]) per label map: styles drawn from seeds 0..n-1 (per-instance feature
    clusters, as `run --seed s` picks them)."""
    from ..api import Pix2PixHD
    models = [Pix2PixHD(engine, seed=s) for s in range(n)]
    for key in sorted(labels):
        label_path, inst_path = labels[key]
        label = read_id_png(label_path)
        inst = read_id_png(inst_path) if inst_path is not None else label
        yield key, [m(label, inst) for m in models]


# --- output -----------------------------------------------------------------------------------


def write_report(report: dict, out: str | Path, markdown: str | Path | None = None) -> None:
    write_atomic(out, (json.dumps(report, indent=2) + "\n").encode())
    if markdown is not None:
        write_atomic(markdown, to_markdown(report).encode())


def _f(v, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if math.isinf(v) or math.isnan(v):
            return str(v)
        return f"{v:.{digits}f}"
    return str(v)


def to_markdown(report: dict) -> str:
    out = [f"# Evaluation of `{report['fake']}`", "",
           f"{report['images']['fake']} synthesized images"
           + (f", {report['images']['real']} real photos (`{report['real']}`)"
              if report.get("real") else "") + f"; {report['created']}", ""]
    if "fid" in report:
        fid, kid = report["fid"], report["kid"]
        inc = fid["inception"]
        out += ["## FID / KID", "", "| FID | KID (mean ± std) | subsets × size |",
                "| ---: | ---: | ---: |",
                f"| {_f(fid['value'], 3)} | {kid['mean']:.3g} ± {kid['std']:.2g} | "
                f"{kid['subsets']} × {kid['subset_size']} |", "",
                f"{fid['library']}; Inception weights `{inc['file']}` (sha256 "
                f"{inc['sha256'][:12]}…, {'the standard FID weights' if inc['standard'] else 'NOT the standard FID weights: not comparable with published FIDs'}); "
                f"resize: {inc['resize']}. {fid['note']}.", ""]
    if "segmentation" in report:
        seg = report["segmentation"]
        rows = seg["rows"]
        out += ["## Segmentation score (the paper's table)", "",
                f"Segmenter `{seg['segmenter']['file']}` ({seg['segmenter']['arch']}, "
                f"{len(seg['classes'])} classes: {seg['segmenter']['class_kind']}); "
                f"{seg['ignored']} are ignored.", "",
                "| images | pixel accuracy | mean class accuracy | mean IoU | images scored |",
                "| --- | ---: | ---: | ---: | ---: |"]
        for name, r in rows.items():
            out.append(f"| {name} | {_f(r['pixel_accuracy'])} | {_f(r['mean_class_accuracy'])} "
                       f"| {_f(r['mean_iou'])} | {r['images']} |")
        out += ["", "| class | " + " | ".join(f"IoU {n}" for n in rows) + " | pixels |",
                "| --- | " + " | ".join("---:" for _ in rows) + " | ---: |"]
        first = next(iter(rows.values()))
        for cls in seg["classes"]:
            out.append(f"| {cls} | " + " | ".join(_f(r["per_class"][cls]["iou"])
                                                  for r in rows.values())
                       + f" | {first['per_class'][cls]['pixels']:,} |")
        out.append("")
    if "against" in report:
        a = report["against"]
        o = a["overall"]
        out += [f"## Against `{a['reference']}`", "",
                "| image | PSNR dB | SSIM | max level difference |", "| --- | ---: | ---: | ---: |",
                f"| **all {o['images']}** | {_f(o['psnr_db'], 2) if o['psnr_db'] is not None else 'identical'} "
                f"| {_f(o['ssim'])} | {o['max_diff']} |"]
        for r in a["images"]:
            out.append(f"| {Path(r['name']).name} | "
                       f"{_f(r['psnr_db'], 2) if r['psnr_db'] is not None else 'identical'} | "
                       f"{_f(r['ssim'])} | {r['max_diff']} |")
        out.append("")
    if "temporal" in report:
        t = report["temporal"]
        out += ["## Temporal stability", "", "| frames | mean abs change | frame pairs |",
                "| --- | ---: | ---: |"]
        for name in ("synthesized", "inputs"):
            if t.get(name):
                out.append(f"| {name} | {_f(t[name]['mean_abs_change'], 3)} | "
                           f"{t[name]['frame_pairs']} |")
        out += ["", t["unit"] + "." + (f" ({t['note']}.)" if t.get("note") else ""), ""]
    if "diversity" in report:
        d = report["diversity"]
        out += ["## Diversity across styles", "",
                f"Mean pairwise LPIPS ({d['net']}) over {d['styles']} styles per label map: "
                f"**{_f(d['mean_lpips'])}** ({d['pairs']} pairs).", ""]
    return "\n".join(out)


def engine_quality(images: dict[str, np.ndarray], reference: dict[str, np.ndarray], *,
                   labels: dict[str, np.ndarray] | None = None, segmenter=None,
                   inception: InceptionFeatures | None = None, cache: dict | None = None
                   ) -> dict:
    """The quality of one engine's images against the reference engine's (e.g. model.pt fp32)
    on the same label maps, for benchmark rows: PSNR / SSIM / max level difference overall, and,
    when given, the segmenter's mean IoU and its delta from the reference's (needs `labels`), and
    the FID between the two sets of images (needs `inception`, 2 images or more).

    images, reference, labels: {name: uint8 [H,W,3] / int [H,W]} with the same names. cache: a
    dict kept across calls with one reference, so its segmentation and features are computed
    once; after a call with `inception`, cache["last_features"] holds these images' features."""
    keys = sorted(reference)
    if sorted(images) != keys:
        raise InputError("images", "the engine's and the reference's images differ in names")
    cache = {} if cache is None else cache
    row = dict(against([(k, images[k], reference[k]) for k in keys])["overall"])
    if segmenter is not None:
        if labels is None:
            raise OptionError("labels", "the segmentation score needs the label maps")
        mine = segmentation_score(segmenter, [(k, images[k], labels[k]) for k in keys])
        if "mean_iou" not in cache:
            cache["mean_iou"] = segmentation_score(
                segmenter, [(k, reference[k], labels[k]) for k in keys])["mean_iou"]
        ref = cache["mean_iou"]
        row["mean_iou"] = mine["mean_iou"]
        row["mean_iou_reference"] = ref
        row["mean_iou_delta"] = None if mine["mean_iou"] is None or ref is None \
            else mine["mean_iou"] - ref
    if inception is not None and len(keys) >= 2:
        if "features" not in cache:
            cache["features"] = inception([reference[k] for k in keys])
        f_img = cache["last_features"] = inception([images[k] for k in keys])
        row["fid_vs_reference"] = fid_kid(f_img, cache["features"], subsets=1)["fid"]
    return row
