"""The triton backend's ``fused_resnet::batch_stats`` and ``fused_resnet::batch_stats_backward``
against the reference and torch.var_mean.

Without a GPU they run under TRITON_INTERPRET=1 (conftest.py) on CPU tensors.
"""
from __future__ import annotations

import pytest
import torch

from fused_resnet import ops, reference
from fused_resnet.backends import get

from helpers import assert_close_fp32

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
C = 37  # not a multiple of the interpreter's 64-wide block, and below it


pytestmark = pytest.mark.usefixtures("no_tf32", "no_autotune_on_tiny_shapes")


def _tb():
    return get("triton")


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_batch_stats(cl, dtype):
    g = torch.Generator().manual_seed(13)
    x = (torch.randn(3, 7, 13, 11, generator=g) * 3 + 50).to(device=DEVICE, dtype=dtype)  # 429 rows: 14 tiles
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    mean, var = _tb().batch_stats(x)
    mr, vr = reference.batch_stats(x)
    assert mean.dtype == torch.float32 and var.dtype == torch.float32
    assert_close_fp32(mean, mr, "mean", rtol=1e-5)
    assert_close_fp32(var, vr, "var", rtol=1e-4)
    m_op, v_op = torch.ops.fused_resnet.batch_stats(x, "triton")
    assert torch.equal(m_op, mean) and torch.equal(v_op, var)


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_batch_stats_backward_matches_reference(channels_last, dtype):
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(2, C, 5, 3, generator=g) * 3 + 1).to(device=DEVICE, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    mean = x.float().mean((0, 2, 3))
    dmean, dvar = (torch.randn(C, generator=g).to(DEVICE) for _ in range(2))
    want = reference.batch_stats_backward(dmean, dvar, x, mean)
    got = _tb().batch_stats_backward(dmean, dvar, x, mean)
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last) == channels_last
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(got, want, **tol)


def test_batch_stats_gradient_through_the_triton_op():
    x = torch.randn(2, C, 4, 4, device=DEVICE).contiguous(memory_format=torch.channels_last).requires_grad_()
    mean, var = ops.batch_stats(x, "triton")
    (mean * 0.7 + var * 1.3).sum().backward()
    xr = x.detach().clone().requires_grad_()
    rv, rm = torch.var_mean(xr, dim=(0, 2, 3), unbiased=False)
    (rm * 0.7 + rv * 1.3).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-6)
