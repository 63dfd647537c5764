"""fused_resnet_cuda::batch_stats and ::batch_stats_backward (kernels: csrc/batch_stats.cu,
csrc/conv_output_grad.cu; host launchers: csrc/ops/batch_stats.cpp), on a GPU: against
fused_resnet.reference and fp64 statistics in fp32/fp16/bf16, NHWC and NCHW, odd channel
counts, large means, many chunks, strided and misaligned inputs, determinism.
"""
from __future__ import annotations

import pytest
import torch

from fused_resnet import reference
from helpers import assert_close_fp32

from .common import DEV, DTYPES, SHAPES, _act, _close_act, _close_stats


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_batch_stats(ns, dtype, cl, shape):
    x = _act(shape, dtype, cl, offset=0.3)
    mean, var = ns.batch_stats(x)
    rmean, rvar = reference.batch_stats(x)
    assert mean.dtype == var.dtype == torch.float32 and mean.shape == var.shape == (shape[1],)
    _close_stats(x, mean, var, rmean, rvar)
    # Deterministic: the same bits twice.
    mean2, var2 = ns.batch_stats(x)
    assert torch.equal(mean, mean2) and torch.equal(var, var2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
def test_batch_stats_backward(ns, dtype, cl):
    """dx = (dmean + 2 dvar (x - mean)) / M in x's layout: the reference's fp32 formula rounded
    once; dmean expanded (stride 0), as autograd passes a sum's gradient."""
    x = _act((4, 24, 9, 7), dtype, cl, offset=0.3)
    mean = x.float().mean((0, 2, 3))
    dmean = torch.full((1,), 0.7, device=DEV).expand(24)
    dvar = torch.randn(24, device=DEV)
    _close_act(ns.batch_stats_backward(dmean, dvar, x, mean), reference.batch_stats_backward(dmean, dvar, x, mean),
               "dx")


@pytest.mark.gpu
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
def test_batch_stats_large_mean(ns, cl):
    """1e4 + N(0, 1) over ~400k rows: E[x^2]-E[x]^2 in fp32 would lose every digit of var."""
    x = _act((32, 16, 112, 112), torch.float32, cl, offset=1e4)
    mean, var = ns.batch_stats(x)
    var64, mean64 = torch.var_mean(x.double(), dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean.double(), mean64, rtol=1e-6, atol=0)  # fp32 output: ulp(1e4) ~ 1e-3
    torch.testing.assert_close(var.double(), var64, rtol=1e-5, atol=0)
    naive = (x.double() ** 2).mean((0, 2, 3)) - mean64**2  # sanity: the data has a real variance
    assert (naive - 1).abs().max() < 0.1


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_stats_large_batch(ns, dtype):
    """Many chunks per channel (the two-level merge) in both layouts."""
    for cl in (False, True):
        x = _act((64, 32, 56, 56), dtype, cl, offset=2.0, scale=3.0)
        mean, var = ns.batch_stats(x)
        rmean, rvar = reference.batch_stats(x)
        _close_stats(x, mean, var, rmean, rvar)


@pytest.mark.gpu
def test_batch_stats_odd_strides_and_offsets(ns):
    base = _act((4, 68, 9, 7), torch.float16, True)
    x = base[:, 1:]  # channels_last-like but not dense: copied to a dense layout first
    mean, var = ns.batch_stats(x)
    rmean, rvar = reference.batch_stats(x)
    assert_close_fp32(mean, rmean, "mean", rtol=1e-5, atol=1e-6)
    assert_close_fp32(var, rvar, "var", rtol=1e-4, atol=1e-6)
    flat = torch.randn(1 + 2 * 16 * 5 * 5, device=DEV)[1:].view(2, 16, 5, 5)  # misaligned: scalar path
    m, v = ns.batch_stats(flat)
    rm, rv = reference.batch_stats(flat)
    assert_close_fp32(m, rm, "mean")
    assert_close_fp32(v, rv, "var")
