"""Judging synthesized images as the field does: FID/KID, the paper's segmentation score, LPIPS
diversity across styles, closeness to a reference engine, and flicker between frames.

    report = evaluate(EvalOptions(fake="out/", real="photos/", labels="labels/",
                                  segmenter="seg.onnx"))

`engine_quality` is the one-row form benchmarks use: one engine's images against the reference
engine's on the same label maps.
"""
from .fid import InceptionFeatures, fid_kid, random_weights
from .fidelity import Lpips, against, diversity, random_lpips_weights, ssim, temporal
from .folders import images_in, key_of, pair
from .report import EvalOptions, engine_quality, evaluate, to_markdown, write_report
from .segmentation import Segmenter, confusion, open_segmenter, scores, segmentation_score

__all__ = ["EvalOptions", "InceptionFeatures", "Lpips", "Segmenter", "against", "confusion",
           "diversity", "engine_quality", "evaluate", "fid_kid", "images_in", "key_of",
           "open_segmenter", "pair", "random_lpips_weights", "random_weights", "scores", "segmentation_score", "ssim",
           "temporal", "to_markdown", "write_report"]
