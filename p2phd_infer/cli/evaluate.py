"""`p2phd-infer evaluate`: FID/KID, the paper's segmentation score, LPIPS diversity, closeness to
a reference and flicker, for a folder of synthesized images. The options are declared once, on
evaluate.EvalOptions; the click options are generated from it."""
from __future__ import annotations

import click

from ..evaluate import EvalOptions, evaluate, to_markdown, write_report
from ..files import check_writable
from .options import click_options


@click.command("evaluate")
@click_options(EvalOptions)
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Report JSON to write.")
@click.option("--markdown", type=click.Path(dir_okay=False), help="Also write it as Markdown.")
def evaluate_cmd(out, markdown, **options):
    """Judge synthesized images: FID/KID, segmentation score, diversity, fidelity, flicker.

    \b
    p2phd-infer evaluate --fake out/ --real photos/ --labels labels/ \\
        --segmenter seg.onnx --inception-weights inception.pth --out report.json
    """
    opts = EvalOptions(**options)
    for path in (out, markdown):
        if path is not None:
            check_writable(path)
    report = evaluate(opts)
    write_report(report, out, markdown)
    if opts.progress:
        click.echo(to_markdown(report))
    click.echo(f"{out}: report written" + (f" (and {markdown})" if markdown else ""))
