"""Triton kernels, each beside the plain-torch reference that defines it and serves the CPU."""
from .instance_mean import instance_mean, instance_mean_reference

__all__ = ["instance_mean", "instance_mean_reference"]
