"""What an engine file carries besides its graph, as one JSON document.

Every exported engine (.onnx, .plan, .pt2) stores the same document, so `run --engine FILE` needs
nothing else: architecture config, label names, the feature dictionary, the fixed frame size, the
max batch, the precision, and which graph it is ("generator": label, inst[, feat] -> image;
"style": label, inst, style_image, style_inst -> image).

ONNX keeps it in metadata_props, an AOTInductor package in its metadata map, and a TensorRT plan
in a sidecar `<plan>.json` (a plan file is TensorRT's own serialisation, which trtexec and other
tools must still be able to read).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from p2phd_infer.config import ModelConfig
from p2phd_infer.engines import EngineError, EngineInfo

KEY = "p2phd_infer"          # metadata_props key (ONNX) / metadata key (AOTInductor)
FORMAT = "p2phd-infer-engine"
VERSION = 1
GRAPHS = ("generator", "style")


def info_to_json(info: EngineInfo) -> str:
    """EngineInfo -> JSON text. float32 feature centres survive the round trip exactly (a float32
    widened to a Python float prints with enough digits to come back to the same float32)."""
    doc = {
        "format": FORMAT, "version": VERSION,
        "config": info.config.to_dict(),
        "label_names": None if info.label_names is None else
        {str(int(k)): str(v) for k, v in info.label_names.items()},
        "features": None if info.features is None else
        {str(int(k)): torch.as_tensor(v, dtype=torch.float32).tolist()
         for k, v in info.features.items()},
        "size": None if info.size is None else [int(info.size[0]), int(info.size[1])],
        "max_batch": None if info.max_batch is None else int(info.max_batch),
        "precision": info.precision,
        "extra": info.extra,
    }
    return json.dumps(doc, separators=(",", ":"))


def info_from_json(text: str | bytes, source: str | os.PathLike) -> EngineInfo:
    """JSON text -> EngineInfo; EngineError naming `source` for anything malformed."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise EngineError(f"{source}: engine metadata is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise EngineError(f"{source}: no p2phd-infer engine metadata (export it with "
                          f"`p2phd-infer export`)")
    if doc.get("version") != VERSION:
        raise EngineError(f"{source}: engine metadata version {doc.get('version')}, this release "
                          f"reads {VERSION}")
    try:
        cfg = ModelConfig.from_dict(doc["config"])
        names = doc.get("label_names")
        feats = doc.get("features")
        size = doc.get("size")
        info = EngineInfo(
            config=cfg,
            features=None if feats is None else
            {int(k): torch.tensor(v, dtype=torch.float32).reshape(-1, cfg.feat_num)
             for k, v in feats.items()},
            label_names=None if names is None else {int(k): str(v) for k, v in names.items()},
            size=None if size is None else (int(size[0]), int(size[1])),
            max_batch=None if doc.get("max_batch") is None else int(doc["max_batch"]),
            precision=str(doc.get("precision", "fp32")),
            extra=dict(doc.get("extra") or {}),
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise EngineError(f"{source}: bad engine metadata ({e.__class__.__name__}: {e})") from None
    if info.extra.get("graph", "generator") not in GRAPHS:
        raise EngineError(f"{source}: unknown graph kind {info.extra.get('graph')!r}")
    return info


def engine_info(ckpt, height: int, width: int, max_batch: int, precision: str, graph: str,
                backend: str, **extra) -> EngineInfo:
    """The EngineInfo an exported engine carries, from its checkpoint and build settings."""
    return EngineInfo(ckpt.config, ckpt.features, ckpt.label_names, size=(height, width),
                      max_batch=max_batch, precision=precision,
                      extra={"graph": graph, "backend": backend, **extra})


def temp_path(path: Path, suffix: str = "") -> Path:
    """A temporary name beside `path` (same folder, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")


def write_atomic_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = temp_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")
