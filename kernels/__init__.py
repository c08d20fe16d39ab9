"""Triton kernels, each beside the plain-torch reference that defines it and serves the CPU.

Each public function takes backend="auto" (Triton on CUDA tensors when triton imports, else the
reference), "triton" or "torch"; see _backend.py.
"""
from .feature_scatter import feature_scatter, feature_scatter_reference
from .instance_mean import instance_mean, instance_mean_reference
from .instance_norm import instance_norm_act, instance_norm_act_reference
from .label_conv import LabelConv, label_conv, label_conv_reference

__all__ = ["feature_scatter", "feature_scatter_reference", "instance_mean",
           "instance_mean_reference",
           "instance_norm_act", "instance_norm_act_reference", "LabelConv", "label_conv",
           "label_conv_reference"]
