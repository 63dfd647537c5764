"""What the tests of tests/cuda/ share: whether this checkout must have fused_resnet._C,
the inputs of the kernel tests (activations, per-channel vectors, the convolution cases)
and their comparisons with the reference.
"""
from __future__ import annotations

import os
import shutil

import torch

from fused_resnet import reference
from helpers import assert_close_fp32, max_err, randn


DEV = "cuda"
LOWP = (torch.float16, torch.bfloat16)
DTYPES = (torch.float32,) + LOWP
SHAPES = [(4, 64, 9, 7), (3, 67, 5, 5), (2, 3, 11, 13), (8, 256, 4, 4), (1, 128, 1, 1)]


def _nvcc_available() -> bool:
    if os.environ.get("CUDA_HOME") and os.path.exists(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")):
        return True
    return shutil.which("nvcc") is not None or os.path.exists("/usr/local/cuda/bin/nvcc")


def _ext_expected() -> tuple[bool, str]:
    """Whether this checkout must have _C, and if not, why."""
    if os.environ.get("FUSED_RESNET_SKIP_EXT", "0") not in ("", "0"):
        return False, "FUSED_RESNET_SKIP_EXT is set: the extension was deliberately not built"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build: setup.py builds no extension"
    if not _nvcc_available():
        return False, "no CUDA toolkit (nvcc) here: setup.py builds no extension"
    return True, ""


def _act(shape, dtype, cl, seed=0, offset=0.0, scale=1.0):
    t = randn(*shape, dtype=torch.float32, device=DEV, seed=seed) * scale + offset
    t = t.to(dtype)
    return t.contiguous(memory_format=torch.channels_last) if cl else t.contiguous()


def _vec(c, seed=0, lo=0.5, hi=1.5):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(c, generator=g) * (hi - lo) + lo).to(DEV)


def _same_layout(a, b, name):
    assert a.shape == b.shape and a.dtype == b.dtype and a.stride() == b.stride(), (
        f"{name}: {a.shape} {a.dtype} {a.stride()} vs reference {b.shape} {b.dtype} {b.stride()}"
    )


def _close_act(actual, expected, name):
    """Elementwise results: fp32 tight; fp16/bf16 within one rounding of the dtype."""
    _same_layout(actual, expected, name)
    if actual.dtype == torch.float32:
        assert_close_fp32(actual, expected, name)
    else:  # the same fp32 math rounded once to the dtype: within the dtype's default tolerance
        torch.testing.assert_close(actual, expected, msg=lambda m: f"{name}: {m}")


def _close_stats(x, mean, var, rmean, rvar):
    """Against fp64 statistics of the same values: at most 2x the reference's error, or fp32-level."""
    var64, mean64 = torch.var_mean(x.double(), dim=(0, 2, 3), unbiased=False)
    for name, got, ref, exact in (("mean", mean, rmean, mean64), ("var", var, rvar, var64)):
        bound = 2 * max_err(ref, exact) + 1e-6 * (1 + exact.abs().max().item())
        assert max_err(got, exact) <= bound, f"{name}: error {max_err(got, exact):.3g} > {bound:.3g}"


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


class _Recorder:
    """Stands in for torch.ops.fused_resnet_cuda: records the calls, answers with zeros."""

    def __init__(self):
        self.calls = []

    _ANSWERS = {
        "bn_act": lambda x, *_: torch.zeros_like(x),
        "conv_wgrad": lambda g, x, w, *_: torch.zeros_like(w),
        "conv_dgrad": lambda g, x, *_: (torch.zeros_like(x), torch.zeros(x.shape[1]), torch.zeros(x.shape[1])),
        "conv": lambda x, w, *_: (torch.zeros(x.shape[0], w.shape[0], *x.shape[2:], dtype=x.dtype),
                                  torch.zeros(w.shape[0]), torch.zeros(w.shape[0])),
    }

    def __getattr__(self, name):
        def op(*args):
            self.calls.append((name, args))
            return self._ANSWERS[name](*args)
        return op


# (N, C, H, W, K, R, stride, padding, dilation)
CASES = [
    (4, 64, 14, 14, 64, 1, 1, 0, 1),     # 1x1, narrow tile
    (4, 64, 14, 14, 256, 1, 1, 0, 1),    # 1x1 expansion, wide tile
    (2, 64, 15, 15, 64, 3, 1, 1, 1),     # 3x3, odd size, padding
    (2, 128, 9, 9, 128, 3, 2, 1, 1),     # 3x3 stride 2, odd size
    (2, 64, 57, 57, 64, 3, 1, 1, 1),     # layer1-like odd size
    (2, 256, 7, 7, 64, 1, 2, 0, 1),      # 1x1 stride 2 (projection-like)
    (2, 64, 12, 12, 72, 3, 1, 2, 2),     # dilation 2
    (1, 8, 5, 5, 8, 3, 1, 1, 1),         # smallest channels, batch 1
]


def _inputs(case, dtype, seed=0):
    n, c, h, w, k, r, stride, pad, dil = case
    x = _cl(randn(n, c, h, w, device=DEV, seed=seed).mul(1.5).add(0.3).to(dtype))
    weight = _cl(randn(k, c, r, r, device=DEV, seed=seed + 1).mul((c * r * r) ** -0.5).to(dtype))
    g = torch.Generator().manual_seed(seed + 2)
    scale = (torch.rand(c, generator=g) + 0.5).to(DEV)
    # Positive shifts make padding matter: relu(0 * s + t) = t != 0 were the padding transformed.
    shift = (torch.rand(c, generator=g) * 1.5 - 0.5).to(DEV)
    return x, weight, scale, shift, [stride] * 2, [pad] * 2, [dil] * 2


def _residual(x, weight, stride, pad, dil):
    """A random channels_last tensor shaped like the convolution's output."""
    n, _, h, w = x.shape
    k, _, r, _ = weight.shape
    out_hw = [(size + 2 * pad[0] - dil[0] * (r - 1) - 1) // stride[0] + 1 for size in (h, w)]
    return _cl(randn(n, k, *out_hw, device=DEV, seed=9).to(x.dtype))


def _assert_stats_of(y, mean, var):
    """mean and var are the per-channel batch statistics of the stored y (fp64 over its values)."""
    var64, mean64 = torch.var_mean(y.double(), dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean.double(), mean64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var.double(), var64, rtol=1e-4, atol=1e-5)


def _ref_conv(x, weight, scale, shift, residual, stride, pad, dil):
    y, _, _ = reference.conv(x, weight, None, scale, shift, residual, stride, pad, dil, 1, False, False)
    return y
