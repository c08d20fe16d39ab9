"""Regenerate this folder's Python modules from its .proto files with grpcio-tools' protoc:

    python -m p2phd_infer.serve.protos.generate            # rewrites the *_pb2*.py here

The generated modules are committed (not built at install): an install then needs no protoc
and no grpcio-tools (a large wheel, pinned to one protobuf gencode version), editable installs
work as they are, and a review sees what the server runs. tests/test_serve_grpc.py regenerates
them into a temporary folder and checks they are byte-identical to the committed ones.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]                       # the folder holding p2phd_infer/
PROTOS = ["model_config.proto", "grpc_service.proto", "inference_service.proto"]
SERVICES = ["inference_service.proto"]       # the one with the service: a *_pb2_grpc.py


def generate(out: Path) -> list[Path]:
    """Write the generated modules under `out` (mirroring p2phd_infer/serve/protos/) and return
    their paths. RuntimeError with protoc's exit status when it fails."""
    from grpc_tools import protoc

    rel = HERE.relative_to(ROOT)
    for name in PROTOS:
        # The service file gets only its stub module: its own *_pb2 would register
        # `inference.GRPCInferenceService` in protobuf's default pool, which tritonclient's
        # modules also do, and the two could not be imported in one process.
        args = ["protoc", f"-I{ROOT}",
                f"--grpc_python_out={out}" if name in SERVICES else f"--python_out={out}"]
        code = protoc.main(args + [str(rel / name)])
        if code != 0:
            raise RuntimeError(f"protoc failed on {rel / name} (exit {code})")
    return sorted((out / rel).glob("*_pb2*.py"))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            (HERE / path.name).write_bytes(path.read_bytes())
            print(HERE / path.name)


if __name__ == "__main__":
    sys.exit(main())
