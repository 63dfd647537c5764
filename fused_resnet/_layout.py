"""Memory-format rules shared by the ops, their fake implementations and every backend.

A 4-D result takes channels_last when its reference input is (unambiguously)
channels_last and the contiguous format otherwise, so real and fake
implementations agree on strides and outputs match what torchvision gives.
"""
from __future__ import annotations

import torch
from torch import Tensor


def output_format(ref: Tensor) -> torch.memory_format:
    if ref.dim() == 4 and not ref.is_contiguous() and ref.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def like_layout(t: Tensor, ref: Tensor) -> Tensor:
    return t.contiguous(memory_format=output_format(ref))


def empty_like_layout(ref: Tensor, shape, dtype=None) -> Tensor:
    return torch.empty(shape, dtype=dtype or ref.dtype, device=ref.device, memory_format=output_format(ref))


def acc_dtype(ref: Tensor) -> torch.dtype:
    """Per-channel vectors and accumulations are fp32, or fp64 for fp64 activations (gradcheck)."""
    return torch.float64 if ref.dtype == torch.float64 else torch.float32


def acc(t: Tensor) -> Tensor:
    return t.to(acc_dtype(t))


def empty_vec(ref: Tensor) -> Tensor:
    """The placeholder for an output an op was not asked to compute."""
    return torch.empty(0, dtype=torch.float32, device=ref.device)


def conv_out_hw(h: int, w: int, kernel, stride, padding, dilation) -> tuple[int, int]:
    ho = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    return ho, wo
