"""The triton backend's ``fused_resnet::bn_act`` and ``fused_resnet::bn_act_backward`` against the
reference, in NCHW and channels_last, with a plain or scaled residual or none.

Without a GPU these run under TRITON_INTERPRET=1 (set by conftest.py) on tiny CPU
tensors: fp32 tightly, fp16 with the 2x rule against an fp64 reference. The @gpu
test runs a ResNet-50 shape in bf16/fp16.
"""
from __future__ import annotations

import pytest
import torch

import fused_resnet  # noqa: F401  (registers torch.ops.fused_resnet)
from fused_resnet import reference
from fused_resnet.backends import get

from helpers import assert_close_fp32, assert_within_2x

from .test_conv import assert_same_layout

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


pytestmark = pytest.mark.usefixtures("no_tf32", "no_autotune_on_tiny_shapes")


def _tb():
    return get("triton")


# ----------------------------------------------------------------------------- bn_act


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("res", ["none", "plain", "scaled"])
@pytest.mark.parametrize("relu", [False, True])
def test_bn_act_fp32(cl, res, relu):
    g = torch.Generator().manual_seed(11)
    y = torch.randn(2, 5, 3, 7, generator=g).to(DEVICE)
    if cl:
        y = y.contiguous(memory_format=torch.channels_last)
    scale, shift = torch.randn(5, generator=g).to(DEVICE), torch.randn(5, generator=g).to(DEVICE)
    r = rs = rt = None
    if res != "none":
        r = torch.randn(2, 5, 3, 7, generator=g).to(DEVICE)  # NCHW even when y is NHWC
    if res == "scaled":
        rs, rt = torch.randn(5, generator=g).to(DEVICE), torch.randn(5, generator=g).to(DEVICE)
    out = _tb().bn_act(y, scale, shift, r, rs, rt, relu)
    ref = reference.bn_act(y, scale, shift, r, rs, rt, relu)
    assert_same_layout(out, ref, y)
    assert_close_fp32(out, ref, "out")
    out_op = torch.ops.fused_resnet.bn_act(y, scale, shift, r, rs, rt, relu, "triton")
    assert_close_fp32(out_op, ref, "out via op")


def test_bn_act_fp16():
    g = torch.Generator().manual_seed(12)
    y = torch.randn(2, 6, 5, 5, generator=g).to(DEVICE)
    r = torch.randn(2, 6, 5, 5, generator=g).to(DEVICE)
    scale, shift = torch.randn(6, generator=g).to(DEVICE), torch.randn(6, generator=g).to(DEVICE)
    out = _tb().bn_act(y.half(), scale, shift, r.half(), None, None, True)
    plain = reference.bn_act(y.half(), scale, shift, r.half(), None, None, True)
    ref64 = reference.bn_act(y.half().double(), scale, shift, r.half().double(), None, None, True)
    assert_within_2x(out, plain, ref64, "out")


# ----------------------------------------------------------------------------- bn_act_backward


def make_bn_act_args(cl, res, rscale, relu, dtype=torch.float32, seed=0, shape=(2, 6, 5, 4), res_cl=None):
    g = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if cl else torch.contiguous_format
    y = torch.randn(shape, generator=g).to(DEVICE, dtype).contiguous(memory_format=fmt)
    c = shape[1]
    scale = (torch.rand(c, generator=g) + 0.5).to(DEVICE)
    shift = torch.randn(c, generator=g).to(DEVICE)
    r = rs = rt = None
    if res:
        rfmt = fmt if res_cl is None else (torch.channels_last if res_cl else torch.contiguous_format)
        r = torch.randn(shape, generator=g).to(DEVICE, dtype).contiguous(memory_format=rfmt)
        if rscale:
            rs = (torch.rand(c, generator=g) + 0.5).to(DEVICE)
            rt = torch.randn(c, generator=g).to(DEVICE)
    out = reference.bn_act(y, scale, shift, r, rs, rt, relu)
    dout = torch.randn(shape, generator=g).to(DEVICE, dtype).contiguous(memory_format=fmt)
    return [dout, out, y, scale, r, rs, relu]


def _bn_mask(args):
    res, rs = args[4] is not None, args[5] is not None
    return [True, True, True, res, rs, rs]


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("res,rscale", [(False, False), (True, False), (True, True)], ids=["nores", "res", "rscale"])
@pytest.mark.parametrize("relu", [False, True])
def test_bn_act_backward_fp32(cl, res, rscale, relu):
    args = make_bn_act_args(cl, res, rscale, relu, seed=1)
    mask = _bn_mask(args)
    outs = _tb().bn_act_backward(*args, mask)
    refs = reference.bn_act_backward(*args, mask)
    for i, (o, r, m) in enumerate(zip(outs, refs, mask)):
        if not m:
            assert o.numel() == 0
            continue
        assert o.shape == r.shape and o.dtype == r.dtype and o.stride() == r.stride(), i
        assert_close_fp32(o, r, f"bn_act_backward output {i}")


def test_bn_act_backward_masks_and_mixed_layouts():
    args = make_bn_act_args(True, True, True, True, seed=2, shape=(3, 5, 3, 7), res_cl=False)
    for mask in ([True, False, False, False, False, False], [False, True, True, False, False, False],
                 [False, False, False, True, True, True], [True, True, True, True, False, True],
                 [False] * 6):
        outs = _tb().bn_act_backward(*args, mask)
        refs = reference.bn_act_backward(*args, mask)
        for i, (o, r, m) in enumerate(zip(outs, refs, mask)):
            if m:
                assert o.stride() == r.stride(), i
                assert_close_fp32(o, r, f"mask {mask} output {i}")
            else:
                assert o.numel() == 0


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
def test_bn_act_backward_fp16(cl):
    _check_bn_act_backward_lowp(make_bn_act_args(cl, True, True, True, dtype=torch.float16, seed=3))


def _check_bn_act_backward_lowp(args):
    """Triton's bn_act_backward in fp16/bf16 within 2x of plain PyTorch's error against fp64."""
    mask = _bn_mask(args)
    outs = _tb().bn_act_backward(*args, mask)
    plain = reference.bn_act_backward(*args, mask)
    a64 = list(args)
    for i in (0, 1, 2, 4):
        a64[i] = args[i].double()
    ref64 = reference.bn_act_backward(*a64, mask)
    for i, (o, p, r) in enumerate(zip(outs, plain, ref64)):
        assert_within_2x(o, p, r, f"bn_act_backward output {i}")


def test_autograd_bn_act_through_op():
    args = make_bn_act_args(False, True, True, True, seed=4)
    dout, _, y, scale, r, rs, relu = args
    shift = torch.randn(scale.shape[0], device=DEVICE)
    rt = torch.randn(scale.shape[0], device=DEVICE)
    grads = []
    for backend in ("triton", "reference"):
        leaves = [t.detach().clone().requires_grad_(True) for t in (y, scale, shift, r, rs, rt)]
        out = torch.ops.fused_resnet.bn_act(*leaves, relu, backend)
        (out * dout).sum().backward()
        grads.append([t.grad for t in leaves])
    for i, (a, b) in enumerate(zip(*grads)):
        assert_close_fp32(a, b, f"grad {i}")


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_bn_act_backward_gpu_lowp(dtype):
    for cl in (False, True):
        _check_bn_act_backward_lowp(
            make_bn_act_args(cl, True, True, True, dtype=dtype, seed=12, shape=(16, 256, 28, 28)))
