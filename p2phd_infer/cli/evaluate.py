"""`p2phd-infer evaluate`: FID/KID, the paper's segmentation score, LPIPS diversity, closeness to
a reference and flicker, for a folder of synthesized images."""
from __future__ import annotations

import click

from ..evaluate import EvalOptions, evaluate, to_markdown, write_report
from ..evaluate.segmentation import ARCHS
from .base import engine_options


@click.command("evaluate")
@click.option("--fake", required=True, type=click.Path(file_okay=False),
              help="Folder of synthesized images (e.g. `run`'s --out).")
@click.option("--real", type=click.Path(file_okay=False),
              help="Folder of real photos: FID/KID against them, and the segmenter's upper bound "
                   "row (paired with --labels by name).")
@click.option("--labels", type=click.Path(),
              help="Label maps the fakes were made from (paired by name; Cityscapes "
                   "*_gtFine_labelIds.png and pix2pixHD folders work).")
@click.option("--instances", type=click.Path(file_okay=False),
              help="Instance maps for --labels (else paired as `run` pairs them).")
@click.option("--segmenter", type=click.Path(dir_okay=False),
              help="Segmentation network: TorchScript (.pt/.ts) or .onnx, RGB in, logits out; or "
                   "a torchvision DeepLabV3 state dict with --segmenter-arch.")
@click.option("--segmenter-arch", type=click.Choice(ARCHS), default="auto", show_default=True,
              help="auto: .onnx is ONNX, anything else TorchScript; deeplabv3_*: torchvision's "
                   "DeepLabV3 from a weights file.")
@click.option("--segmenter-classes",
              help="What its output channels are: cityscapes (the 19 trainIds), labels (the "
                   "model's label ids 0..label_nc-1) or comma-separated label names; default: "
                   "its sidecar <FILE>.json, else guessed from the channel count.")
@click.option("--segmenter-size", help="WxH the segmenter takes (default: sidecar, else the "
                                       "image's own size).")
@click.option("--segmenter-mean", help="r,g,b subtracted from [0,1] RGB (default: sidecar; "
                                       "ImageNet's for DeepLabV3, else 0,0,0).")
@click.option("--segmenter-std", help="r,g,b divided by after the mean (default: sidecar; "
                                      "ImageNet's for DeepLabV3, else 1,1,1).")
@click.option("--fid/--no-fid", default=True, show_default=True,
              help="FID and KID against --real (needs the FID Inception weights).")
@click.option("--inception-weights", type=click.Path(dir_okay=False),
              help="FID Inception weights (torch-fidelity's weights-inception-2015-12-05-"
                   "6726825d.pth); default: torch's cache, else downloaded when online.")
@click.option("--fid-features", type=click.Choice(["64", "192", "768", "2048"]), default="2048",
              show_default=True,
              help="Inception pool for FID/KID: 2048 is the standard FID; the smaller ones are "
                   "quicker checks, not comparable with published figures.")
@click.option("--download/--no-download", default=True, show_default=True,
              help="Fetch missing FID Inception weights into torch's cache when online.")
@click.option("--kid-subsets", default=100, show_default=True, type=click.IntRange(1),
              help="KID: number of random subsets.")
@click.option("--kid-subset-size", type=click.IntRange(2),
              help="KID: images per subset [default: 1000, or half the smaller set below 2000 images].")
@click.option("--seed", default=0, show_default=True, help="Seed of KID's subsets.")
@click.option("--against", "against_dir", type=click.Path(file_okay=False),
              help="Reference images (e.g. the fp32 engine's): PSNR, SSIM, max level "
                   "difference per image and overall.")
@click.option("--temporal", is_flag=True,
              help="Frames in name order (per sub-folder): mean change where the labels did not "
                   "change, for the fakes and for --real (the input frames).")
@click.option("--styles", default=0, show_default=True, type=click.IntRange(0, 64),
              help="Render N styles per label map through --engine (a features model) and "
                   "report mean pairwise LPIPS (0: off).")
@click.option("--lpips-weights", type=click.Path(dir_okay=False),
              help="State dict of lpips.LPIPS(net='alex'); default: the lpips package's heads "
                   "with torchvision's AlexNet from torch's cache.")
@engine_options
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Report JSON to write.")
@click.option("--markdown", type=click.Path(dir_okay=False), help="Also write it as Markdown.")
@click.option("--quiet", is_flag=True, help="No progress bars, no report on stdout.")
def evaluate_cmd(fake, real, labels, instances, segmenter, segmenter_arch, segmenter_classes,
                 segmenter_size, segmenter_mean, segmenter_std, fid, inception_weights, fid_features,
                 download,
                 kid_subsets, kid_subset_size, seed, against_dir, temporal, styles,
                 lpips_weights, engine, device, precision, mode, out, markdown, quiet):
    """Judge synthesized images: FID/KID, segmentation score, diversity, fidelity, flicker.

    \b
    p2phd-infer evaluate --fake out/ --real photos/ --labels labels/ \\
        --segmenter seg.onnx --inception-weights inception.pth --out report.json
    """
    opts = EvalOptions(
        fake=fake, real=real, labels=labels, instances=instances, segmenter=segmenter,
        segmenter_arch=segmenter_arch, segmenter_classes=segmenter_classes,
        segmenter_size=segmenter_size, segmenter_mean=segmenter_mean,
        segmenter_std=segmenter_std, fid=fid, inception_weights=inception_weights,
        fid_features=int(fid_features),
        download=download, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed,
        against=against_dir, temporal=temporal, styles=styles, lpips_weights=lpips_weights,
        engine=engine, device=device, precision=precision, mode=mode, progress=not quiet)
    report = evaluate(opts)
    write_report(report, out, markdown)
    if not quiet:
        click.echo(to_markdown(report))
    click.echo(f"{out}: report written" + (f" (and {markdown})" if markdown else ""))
