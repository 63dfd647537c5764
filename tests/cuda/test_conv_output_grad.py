"""fused_resnet_cuda::conv_output_grad (kernel: csrc/conv_output_grad.cu; host launcher:
csrc/ops/conv_output_grad.cpp), the gradient at a convolution's output through its batch
statistics: against the reference's formula in fp64, both layouts, vector and scalar
kernels, a large mean; and the backend's output gradient through a ReLU.
"""
from __future__ import annotations

import pytest
import torch

from fused_resnet import reference
from fused_resnet.backends import cuda as cuda_backend
from helpers import assert_within_2x, max_err, randn

from .common import DEV, LOWP, _cl


@pytest.mark.parametrize("dtype", LOWP + (torch.float32,), ids=str)
def test_conv_output_grad_through_relu(dtype):
    """An eval-mode block that trains (conv + bias + ReLU): the gradient at the convolution's sum
    is dy where y > 0, exactly as the reference gives it (a mask multiplies exactly), and a new
    tensor (it is returned as dresidual)."""
    y = _cl(randn(2, 16, 5, 5, seed=1).relu().to(dtype))
    dy = _cl(randn(2, 16, 5, 5, seed=2).to(dtype))
    g = cuda_backend.CudaBackend()._conv_output_grad(dy, None, None, y, None, False, True, True)
    want = reference.conv_output_grad(dy, None, None, y, None, True, False).to(dtype)
    assert torch.equal(g, want) and g.is_contiguous(memory_format=torch.channels_last)
    assert g.data_ptr() != dy.data_ptr()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", LOWP + (torch.float32,), ids=str)
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("channels", [64, 60], ids=["vector", "scalar"])
def test_conv_output_grad(C, dtype, layout, channels):
    """g = dy + dmean/M + 2 dvar (y - mean)/M in one pass, against the reference's formula in
    fp64 (the 2x rule), in y's layout; expanded (stride-0) dmean/dvar as autograd passes them.
    NHWC: 64 channels fill 16-byte vectors, 60 do not in fp16/bf16 (8 a vector); NCHW: 9x9 planes
    (81 pixels) take the scalar kernel."""
    y = randn(4, channels, 9, 9, device=DEV, seed=1).mul(2).add(1).to(dtype)
    y = _cl(y) if layout == "nhwc" else y.contiguous()
    dy = randn(4, channels, 9, 9, device=DEV, seed=2).to(dtype)
    dy = _cl(dy) if layout == "nhwc" else dy.contiguous()
    mean = y.float().mean((0, 2, 3))
    dmean = torch.full((1,), 0.3, device=DEV).expand(channels)
    dvar = randn(channels, device=DEV, seed=3)

    def ref(cast):
        return reference.conv_output_grad(cast(dy), cast(dmean), cast(dvar), cast(y), cast(mean), False, True)

    g = cuda_backend.ops().conv_output_grad(dy, dmean, dvar, y, mean)
    assert g.dtype == dtype and g.is_contiguous(memory_format=torch.channels_last if layout == "nhwc" else
                                                torch.contiguous_format)
    assert_within_2x(g, ref(lambda t: t).to(dtype), ref(torch.Tensor.double), "g")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_conv_output_grad_keeps_precision_for_a_large_mean(C, layout):
    """y = 1000 + N(0, 1) in fp32: y - mean is formed before it is scaled. Folding the mean into
    a per-channel shift (y * gb + (dmean/M - gb * mean)) cancels: about 2e-5 of the statistics
    term, against 6e-8 this way (both simulated in fp32 on a CPU)."""
    y = randn(4, 64, 9, 9, device=DEV, seed=1).add(1000)
    y = _cl(y) if layout == "nhwc" else y.contiguous()
    mean = y.mean((0, 2, 3))
    zeros = torch.zeros(64, device=DEV)
    dvar = randn(64, device=DEV, seed=3)
    g = cuda_backend.ops().conv_output_grad(torch.zeros_like(y), zeros, dvar, y, mean)
    exact = reference.conv_output_grad(*(t.double() for t in (torch.zeros_like(y), zeros, dvar, y, mean)),
                                       False, True)
    assert max_err(g, exact) <= 1e-6 * exact.abs().max().item()
