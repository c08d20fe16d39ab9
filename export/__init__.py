"""Export: the generator (and style-from-photo) graph out of PyTorch as ONNX, TensorRT FP16 plans
and AOTInductor packages, each carrying the engine metadata (engines/base.py) `run` needs.

Submodules import their heavy dependencies themselves: graphs (exportable modules), onnx_export,
tensorrt_build, aoti_export, parity. The command is p2phd_infer/cli/export.py.
"""
