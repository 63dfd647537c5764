"""The tolerance rule every comparison of fused results is judged by: the tests
(``tests/helpers.py``), ``fused-resnet check`` and the benchmarks.

* Against an fp64 reference (the 2x rule): a fused result's error may be at most
  twice plain PyTorch's error in the same dtype, plus a tiny atol (``LOWP_ATOL``, by
  the result's dtype; fp32 results of low-precision runs, such as batch statistics,
  get fp32's). Errors are max abs (``max_err``), or relative L2 (``rel_err``) for
  whole-model outputs and gradients, whose atol the caller chooses (``REL_ATOL``
  unless said otherwise).
* fp32 against fp32 (TF32 off): tight, ``torch.testing.assert_close`` with
  ``FP32_RTOL`` and ``FP32_ATOL``.

Only torch is imported here, so the rule costs nothing to load.
"""
from __future__ import annotations

import math

import torch

FP32_RTOL = 1e-4
FP32_ATOL = 1e-5
LOWP_ATOL = {torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.float32: 1e-6}
REL_ATOL = 1e-4
# The relative atol of a whole deep network's gradients: they are discontinuous in
# rounding noise (a ReLU whose input lies within rounding of 0 flips its mask), so two
# correct fp32 implementations differ there by up to ~10% at small sizes (ResNet-50,
# batch 2, 64x64: plain PyTorch with another memory format does).
WHOLE_MODEL_GRAD_ATOL = 0.25


def max_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref|; inf when the shapes differ, NaN when ``a`` holds a non-finite value."""
    if a.shape != ref.shape:
        return math.inf
    if not a.numel():
        return 0.0
    a, ref = a.detach().double(), ref.detach().double()
    if not torch.isfinite(a).all():
        return math.nan
    return (a - ref).abs().max().item()


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| (0 when both are 0); inf when the shapes differ, NaN when ``a``
    holds a non-finite value."""
    if a.shape != ref.shape:
        return math.inf
    a, ref = a.detach().double(), ref.detach().double()
    if not torch.isfinite(a).all():
        return math.nan
    num, den = (a - ref).norm().item(), ref.norm().item()
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


def bound_2x(plain_err: float, atol: float) -> float:
    """The largest error the 2x rule allows, given plain PyTorch's error."""
    return 2 * plain_err + atol


def within(err: float, bound: float) -> bool:
    """Whether ``err`` passes ``bound``; a non-finite error never does."""
    return math.isfinite(err) and err <= bound
