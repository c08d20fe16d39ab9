"""Export: the generator (and style-from-photo) graph out of PyTorch as ONNX, TensorRT FP16 plans
and AOTInductor packages, each carrying the metadata `p2phd-infer run` needs.

Submodules import their heavy dependencies themselves: graphs (exportable modules), onnx_export,
tensorrt_build, aoti_export, parity, metadata, commands (the CLI).
"""
