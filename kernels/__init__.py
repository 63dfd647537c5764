"""Triton kernels of fused-resnet."""
