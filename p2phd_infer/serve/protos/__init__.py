"""Triton's gRPC protocol as .proto files and the modules grpcio-tools generates from them
(committed; `python -m p2phd_infer.serve.protos.generate` remakes them)."""
