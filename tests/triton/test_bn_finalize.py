"""The triton backend's BatchNorm bookkeeping (``fused_resnet::bn_finalize``,
``bn_finalize_backward``, ``bn_update_running``) against the reference and nn.BatchNorm2d.

Each runs as one launch (the reference needs five to twelve PyTorch kernels for
each). Without a GPU they run under TRITON_INTERPRET=1 (conftest.py) on CPU
tensors; the arithmetic is fp32 either way, so the comparison is tight.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fused_resnet import ops, reference
from fused_resnet.backends import get

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
C = 37  # not a multiple of the interpreter's 64-wide block, and below it


def _tb():
    return get("triton")


def _vecs(seed, n=C, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(n, generator=g).to(DEVICE)
    var = (torch.rand(n, generator=g) + 0.1).to(DEVICE)
    weight = torch.randn(n, generator=g).to(device=DEVICE, dtype=dtype)
    bias = torch.randn(n, generator=g).to(device=DEVICE, dtype=dtype)
    return mean, var, weight, bias


@pytest.mark.parametrize("affine", ["both", "none", "weight_only"])
@pytest.mark.parametrize("n", [C, 130])
def test_bn_finalize_matches_reference(affine, n):
    mean, var, weight, bias = _vecs(0, n)
    weight = None if affine == "none" else weight
    bias = bias if affine == "both" else None
    want = reference.bn_finalize(mean, var, weight, bias, 1e-5)
    got = _tb().bn_finalize(mean, var, weight, bias, 1e-5)
    # 1e-6: the kernel's 1/sqrt is correctly rounded, PyTorch's CUDA rsqrt is within 2 ulp.
    for name, g, w in zip(("scale", "shift", "invstd"), got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("track_nbt", [True, False])
@pytest.mark.parametrize("buf_dtype", [torch.float32, torch.float16])
def test_bn_update_running_matches_batchnorm(momentum, track_nbt, buf_dtype):
    bn = nn.BatchNorm2d(C, momentum=momentum).train().to(DEVICE)
    if not track_nbt:
        bn.num_batches_tracked = None
    rm = bn.running_mean.clone().to(buf_dtype)
    rv = bn.running_var.clone().to(buf_dtype)
    nbt = bn.num_batches_tracked.clone() if track_nbt else None
    g = torch.Generator().manual_seed(3)
    for step in range(3):
        x = (torch.randn(2, C, 3, 3, generator=g) * (step + 1) + step).to(DEVICE)
        bn(x)
        var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
        _tb().bn_update_running(mean, var, 18, rm, rv, nbt, momentum)
    tol = dict(rtol=1e-6, atol=1e-6) if buf_dtype == torch.float32 else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(rm.float(), bn.running_mean, **tol)
    torch.testing.assert_close(rv.float(), bn.running_var, **tol)
    if track_nbt:
        assert nbt.item() == bn.num_batches_tracked.item() == 3


def test_bn_update_running_without_momentum_or_count_keeps_the_buffers():
    mean, var, _, _ = _vecs(1)
    rm, rv = torch.randn(C, device=DEVICE), torch.rand(C, device=DEVICE)
    want_m, want_v = rm.clone(), rv.clone()
    reference.bn_update_running(mean, var, 10, want_m, want_v, None, None)
    _tb().bn_update_running(mean, var, 10, rm, rv, None, None)
    torch.testing.assert_close(rm, want_m, rtol=0, atol=0)
    torch.testing.assert_close(rv, want_v, rtol=0, atol=0)


@pytest.mark.parametrize("has_weight", [True, False])
@pytest.mark.parametrize("has_dinvstd", [True, False])
def test_bn_finalize_backward_matches_reference(has_weight, has_dinvstd):
    mean, var, weight, bias = _vecs(2)
    weight = weight if has_weight else None
    scale, _, invstd = reference.bn_finalize(mean, var, weight, bias, 1e-5)
    g = torch.Generator().manual_seed(4)
    dscale, dshift, dinvstd = (torch.randn(C, generator=g).to(DEVICE) for _ in range(3))
    dinvstd = dinvstd if has_dinvstd else None
    want = reference.bn_finalize_backward(dscale, dshift, dinvstd, mean, weight, scale, invstd)
    got = _tb().bn_finalize_backward(dscale, dshift, dinvstd, mean, weight, scale, invstd)
    for name, gt, w in zip(("dmean", "dvar", "dweight"), got, want):
        assert gt.shape == w.shape, name
        torch.testing.assert_close(gt, w, rtol=1e-6, atol=1e-7, msg=name)


def test_bn_finalize_gradients_through_the_triton_op():
    # The op's autograd formula (bn_finalize_backward) on the triton backend against
    # autograd through the reference's PyTorch arithmetic.
    mean, var, weight, bias = _vecs(5)
    leaves = [t.clone().requires_grad_() for t in (mean, var, weight, bias)]
    scale, shift, _ = ops.bn_finalize(*leaves, 1e-5, "triton")
    (scale * 1.5 + shift * 0.5).sum().backward()
    ref = [t.clone().requires_grad_() for t in (mean, var, weight, bias)]
    rs, rsh, _ = reference.bn_finalize(*ref, 1e-5)
    (rs * 1.5 + rsh * 0.5).sum().backward()
    for name, a, b in zip(("mean", "var", "weight", "bias"), leaves, ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-6, msg=name)


def test_bn_vector_errors_name_the_tensor():
    mean, var, weight, _ = _vecs(6)
    with pytest.raises(ValueError, match="weight must be a vector of shape \\[37\\]"):
        _tb().bn_finalize(mean, var, weight[:5], None, 1e-5)
    with pytest.raises(TypeError, match="var must be float32"):
        _tb().bn_finalize(mean, var.double(), None, None, 1e-5)
    with pytest.raises(ValueError, match="running_var must be contiguous"):
        rv = torch.ones(2 * C, device=DEVICE)[::2]
        _tb().bn_update_running(mean, var, 10, torch.zeros(C, device=DEVICE), rv, None, 0.1)
    with pytest.raises(TypeError, match="num_batches_tracked must be one int64 value"):
        _tb().bn_update_running(mean, var, 10, torch.zeros(C, device=DEVICE), torch.ones(C, device=DEVICE),
                                torch.zeros(1, device=DEVICE), None)
    with pytest.raises(ValueError, match="count .* must be > 1"):
        _tb().bn_update_running(mean, var, 1, torch.zeros(C, device=DEVICE), torch.ones(C, device=DEVICE), None, 0.1)


def test_expanded_vectors_read_as_their_values():
    # Autograd hands over stride-0 gradients (the gradient of a sum): the launchers must not
    # read them as dense buffers.
    mean, var, _, _ = _vecs(8)
    weight = torch.full((1,), 1.5, device=DEVICE).expand(C)
    bias = torch.full((1,), -0.25, device=DEVICE).expand(C)
    got = _tb().bn_finalize(mean, var, weight, bias, 1e-5)
    want = reference.bn_finalize(mean, var, weight.contiguous(), bias.contiguous(), 1e-5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)
    scale, _, invstd = want
    ones = torch.ones(1, device=DEVICE).expand(C)
    got = _tb().bn_finalize_backward(ones, ones, ones, mean, weight, scale, invstd)
    want = reference.bn_finalize_backward(*(t.contiguous() for t in (ones, ones, ones, mean, weight, scale, invstd)))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)
    x = torch.randn(2, C, 3, 3, device=DEVICE)
    got = _tb().batch_stats_backward(ones, ones, x, mean.expand(C))
    torch.testing.assert_close(got, reference.batch_stats_backward(ones.contiguous(), ones.contiguous(), x, mean),
                               rtol=1e-6, atol=1e-7)
    got = _tb().bn_act(x, weight, bias, x, weight, bias, True)
    want = reference.bn_act(x, weight.contiguous(), bias.contiguous(), x, weight.contiguous(), bias.contiguous(), True)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
