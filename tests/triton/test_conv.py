"""The triton backend's fused convolution (``fused_resnet::conv``) against the reference.

Without a GPU these run under TRITON_INTERPRET=1 (set by conftest.py) on tiny
CPU tensors in fp32 (tight) and fp16 (2x rule against an fp64 reference); the
interpreter's bf16 is broken, so bf16 runs only in the @gpu tests.
"""
from __future__ import annotations

import pytest
import torch

import fused_resnet  # noqa: F401  (registers torch.ops.fused_resnet)
from fused_resnet import reference
from fused_resnet._layout import empty_like_layout
from fused_resnet.backends import get

from helpers import assert_close_fp32, assert_within_2x

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


pytestmark = pytest.mark.usefixtures("no_tf32", "no_autotune_on_tiny_shapes")


def _backend():
    return get("triton")


def make_inputs(n, cin, h, w, cout, k, stride=1, pad=0, dil=1, groups=1, pro=False, bias=False, res=False,
                dtype=torch.float32, channels_last=False, seed=0, device=DEVICE, shift_offset=0.0):
    g = torch.Generator().manual_seed(seed)

    def rn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale)

    x = rn(n, cin, h, w).to(device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    fan_in = cin // groups * k * k
    wt = rn(cout, cin // groups, k, k, scale=fan_in ** -0.5).to(device=device, dtype=dtype)
    b = rn(cout).to(device) if bias else None
    sc = (torch.rand(cin, generator=g) + 0.5).to(device) if pro else None
    sf = (rn(cin, scale=0.5) + shift_offset).to(device) if pro else None
    ho = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1
    wo = (w + 2 * pad - dil * (k - 1) - 1) // stride + 1
    r = None
    if res:
        r = rn(n, cout, ho, wo).to(device=device, dtype=dtype)
        if channels_last:
            r = r.contiguous(memory_format=torch.channels_last)
    return x, wt, b, sc, sf, r, (stride, stride), (pad, pad), (dil, dil), groups


def _to64(args):
    return tuple(a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dim() == 4 else a
                 for a in args)


def _strides_that_matter(t):
    return tuple(st for st, sz in zip(t.stride(), t.shape) if sz != 1)


def assert_same_layout(y, ref, x):
    """y's memory order equals the reference's; its strides are exactly the fake implementation's."""
    assert _strides_that_matter(y) == _strides_that_matter(ref), f"layout {y.stride()} != reference {ref.stride()}"
    fake = empty_like_layout(x, y.shape)
    assert y.stride() == fake.stride(), f"strides {y.stride()} != the op's fake strides {fake.stride()}"


def check_fp32(args, relu, stats, via_op=False):
    if via_op:
        y, mean, var = torch.ops.fused_resnet.conv(*args, relu, stats, "triton")
    else:
        y, mean, var = _backend().conv(*args, relu, stats)
    yr, mr, vr = reference.conv(*args, relu, stats)
    assert y.dtype == yr.dtype and y.shape == yr.shape
    assert_same_layout(y, yr, args[0])
    assert_close_fp32(y, yr, "y")
    if stats:
        assert mean.dtype == torch.float32 and var.dtype == torch.float32
        assert_close_fp32(mean, mr, "mean")
        assert_close_fp32(var, vr, "var", atol=1e-5 * max(1.0, vr.abs().max().item()))
    else:
        assert mean.numel() == 0 and var.numel() == 0
    return y, mean, var


def check_lowp(args, relu, stats):
    y, mean, var = _backend().conv(*args, relu, stats)
    yp, mp, vp = reference.conv(*args, relu, stats)
    y64, m64, v64 = reference.conv(*_to64(args), relu, stats)
    assert_same_layout(y, yp, args[0])
    assert_within_2x(y, yp, y64, "y")
    if stats:
        assert_within_2x(mean, mp, m64, "mean")
        assert_within_2x(var, vp, v64, "var")


# (id, N, Cin, H, W, Cout, k, stride, pad, dil, groups, pro, bias, res, relu, stats, channels_last)
FP32_CASES = [
    ("1x1", 2, 8, 5, 5, 16, 1, 1, 0, 1, 1, False, False, False, False, False, False),
    ("1x1-all", 2, 16, 5, 4, 24, 1, 1, 0, 1, 1, True, True, True, True, True, True),
    ("1x1-s2-ragged", 1, 5, 9, 9, 7, 1, 2, 0, 1, 1, False, True, False, True, True, False),
    ("3x3-p1", 2, 8, 7, 7, 8, 3, 1, 1, 1, 1, False, False, False, False, True, True),
    ("3x3-ragged-all", 2, 5, 7, 7, 7, 3, 1, 1, 1, 1, True, True, True, True, True, False),
    ("3x3-s2-odd", 1, 6, 9, 9, 10, 3, 2, 1, 1, 1, True, False, True, True, True, True),
    ("3x3-p0", 1, 4, 7, 9, 6, 3, 1, 0, 1, 1, True, True, False, False, False, True),
    ("3x3-dil2", 1, 8, 9, 9, 8, 3, 1, 2, 2, 1, True, False, False, True, True, False),
    ("3x3-s2-dil2", 1, 4, 9, 7, 5, 3, 2, 2, 2, 1, False, True, True, False, True, True),
    ("3x3-g2", 2, 8, 7, 7, 12, 3, 1, 1, 1, 2, True, True, True, True, True, True),
    ("3x3-g4-ragged", 1, 20, 7, 7, 12, 3, 2, 1, 1, 4, True, False, False, True, True, False),
    ("1x1-g4", 1, 16, 5, 5, 8, 1, 1, 0, 1, 4, False, True, False, False, True, True),
    ("7x7-s2-p3", 1, 3, 9, 9, 8, 7, 2, 3, 1, 1, False, True, False, True, True, True),
    ("7x7-s1-p3-pro", 1, 3, 7, 7, 5, 7, 1, 3, 1, 1, True, False, True, False, False, False),
    ("batch1-1px", 1, 8, 1, 1, 8, 1, 1, 0, 1, 1, True, True, True, True, False, True),
    ("3x3-even-k", 1, 16, 6, 6, 8, 3, 1, 1, 1, 1, True, True, False, True, True, True),
    ("1x1-g2-multi-n", 1, 8, 5, 5, 40, 1, 1, 0, 1, 2, True, True, True, False, True, False),
    ("1x1-swizzle", 2, 4, 17, 17, 40, 1, 1, 0, 1, 1, False, True, False, True, True, True),
    ("3x3-g8-packed", 2, 32, 7, 7, 32, 3, 2, 1, 1, 8, True, True, True, True, True, True),
    ("3x3-g16-packed-ragged", 1, 48, 6, 5, 32, 3, 1, 1, 1, 16, False, True, False, True, True, False),
]


@pytest.mark.parametrize("case", FP32_CASES, ids=[c[0] for c in FP32_CASES])
def test_conv_fp32(case):
    _, n, cin, h, w, cout, k, s, p, d, g, pro, bias, res, relu, stats, cl = case
    args = make_inputs(n, cin, h, w, cout, k, s, p, d, g, pro, bias, res, channels_last=cl)
    check_fp32(args, relu, stats)


@pytest.mark.parametrize("case", [FP32_CASES[4], FP32_CASES[9], FP32_CASES[12]], ids=lambda c: c[0])
def test_conv_via_torch_op(case):
    _, n, cin, h, w, cout, k, s, p, d, g, pro, bias, res, relu, stats, cl = case
    args = make_inputs(n, cin, h, w, cout, k, s, p, d, g, pro, bias, res, channels_last=cl, seed=1)
    check_fp32(args, relu, stats, via_op=True)


FP16_CASES = [FP32_CASES[i] for i in (1, 4, 5, 8, 9, 12, 15, 18)]


@pytest.mark.parametrize("case", FP16_CASES, ids=[c[0] for c in FP16_CASES])
def test_conv_fp16(case):
    _, n, cin, h, w, cout, k, s, p, d, g, pro, bias, res, relu, stats, cl = case
    args = make_inputs(n, cin, h, w, cout, k, s, p, d, g, pro, bias, res, dtype=torch.float16, channels_last=cl)
    check_lowp(args, relu, stats)


@pytest.mark.parametrize("k,pad", [(3, 1), (7, 3)])
def test_padding_after_transform(k, pad):
    # relu(0*scale + shift) > 0 for every channel: padding before the transform would differ.
    args = make_inputs(1, 4, 5, 5, 6, k, 1, pad, pro=True, shift_offset=2.0)
    x, wt, _, sc, sf, _, stride, padding, dil, groups = args
    y, _, _ = check_fp32(args, relu=False, stats=False)
    a_padded_first = torch.relu(torch.nn.functional.pad(x, (pad,) * 4) * sc.view(1, -1, 1, 1)
                                + sf.view(1, -1, 1, 1))
    wrong = torch.nn.functional.conv2d(a_padded_first, wt)
    assert (y - wrong).abs().max() > 1e-2, "the shift must make padding order observable"


def test_stats_large_mean_many_tiles():
    # 1x1, 2x20x20 = 800 rows (25 interpreter tiles of 32, merged in several blocks, ragged
    # last tile) around a mean of 1000: E[y^2]-E[y]^2 in fp32 would lose the variance.
    x, wt, _, _, _, _, st, pd, dl, g = make_inputs(2, 4, 20, 20, 3, 1, seed=3)
    bias = torch.full((3,), 1000.0, device=DEVICE)
    args = (x, wt, bias, None, None, None, st, pd, dl, g)
    y, mean, var = _backend().conv(*args, False, True)
    yr, _, _ = reference.conv(*args, False, True)
    assert_close_fp32(y, yr, "y")
    var64, mean64 = torch.var_mean(y.double(), dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean.double(), mean64, rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), var64, rtol=1e-4, atol=1e-6)


def test_stats_are_of_rounded_output():
    args = make_inputs(2, 8, 5, 5, 8, 3, 1, 1, bias=True, dtype=torch.float16, seed=4)
    y, mean, var = _backend().conv(*args, True, True)
    var_y, mean_y = torch.var_mean(y.double(), dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean.double(), mean_y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var.double(), var_y, rtol=1e-4, atol=1e-6)


def test_deterministic():
    args = make_inputs(2, 6, 7, 7, 10, 3, 1, 1, pro=True, bias=True, res=True, seed=5)
    a = _backend().conv(*args, True, True)
    b = _backend().conv(*args, True, True)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_non_contiguous_inputs():
    args = list(make_inputs(2, 8, 7, 7, 6, 3, 1, 1, bias=True, res=True, seed=6))
    big = torch.randn(2, 16, 7, 9, device=DEVICE)
    args[0] = big[:, ::2, :, 1:8]  # neither NCHW- nor NHWC-contiguous
    args[1] = args[1].transpose(2, 3).contiguous().transpose(2, 3)  # non-contiguous weight
    args[5] = args[5].transpose(2, 3).contiguous().transpose(2, 3)
    check_fp32(tuple(args), True, True)


def test_nchw_and_channels_last_layouts():
    for cl in (False, True):
        args = make_inputs(2, 4, 5, 5, 6, 3, 1, 1, channels_last=cl, seed=7)
        y, _, _ = check_fp32(args, False, False)
        want = torch.channels_last if cl else torch.contiguous_format
        assert y.is_contiguous(memory_format=want)


def test_weight_updates_are_seen():
    args = list(make_inputs(1, 4, 5, 5, 4, 3, 1, 1, seed=8))
    y1, _, _ = _backend().conv(*args, False, False)
    with torch.no_grad():
        args[1].mul_(2.0)
    y2, _, _ = _backend().conv(*args, False, False)
    assert_close_fp32(y2, 2 * y1, "y after an in-place weight update")
    args[1].data.mul_(2.0)  # bumps no version counter
    y4, _, _ = _backend().conv(*args, False, False)
    assert_close_fp32(y4, 4 * y1, "y after a weight update through .data")


def test_autograd_through_op():
    args = list(make_inputs(1, 4, 5, 5, 6, 3, 1, 1, pro=True, bias=True, res=True, seed=9))
    for i in (0, 1, 2, 3, 4, 5):
        args[i] = args[i].detach().requires_grad_(True)
    grads = []
    for backend in ("triton", "reference"):
        y, mean, var = torch.ops.fused_resnet.conv(*args, True, True, backend)
        (y.square().sum() + mean.sum() + var.sum()).backward()
        grads.append([a.grad.clone() for a in args[:6]])
        for a in args[:6]:
            a.grad = None
    for i, (gt, gr) in enumerate(zip(*grads)):
        assert_close_fp32(gt, gr, f"grad {i}", rtol=1e-4, atol=1e-4)


def test_opcheck():
    args = make_inputs(1, 5, 5, 5, 6, 3, 1, 1, pro=True, bias=True, res=True, channels_last=True, seed=14)
    torch.library.opcheck(torch.ops.fused_resnet.conv.default, (*args, True, True, "triton"),
                          test_utils=("test_schema", "test_faketensor"))


def test_inference_mode_weight():
    with torch.inference_mode():
        args = make_inputs(1, 4, 5, 5, 6, 3, 1, 1, bias=True, seed=15)
        y, _, _ = _backend().conv(*args, True, False)
        yr, _, _ = reference.conv(*args, True, False)
    assert_close_fp32(y, yr, "y")


def test_empty_batch():
    x = torch.empty(0, 4, 5, 5, device=DEVICE)
    wt = torch.randn(6, 4, 3, 3, device=DEVICE)
    y, mean, var = _backend().conv(x, wt, None, None, None, None, (1, 1), (1, 1), (1, 1), 1, False, True)
    assert y.shape == (0, 6, 5, 5) and mean.shape == (6,) and torch.isnan(mean).all()


# ----------------------------------------------------------------------------- errors


def _good(**kw):
    return list(make_inputs(1, 4, 5, 5, 6, 3, 1, 1, pro=True, bias=True, res=True, seed=10, **kw))


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda a: a.__setitem__(1, a[1].half()), TypeError, "weight has dtype"),
    (lambda a: a.__setitem__(2, a[2].half()), TypeError, "bias must be float32"),
    (lambda a: a.__setitem__(2, a[2][:5]), ValueError, "bias must have shape"),
    (lambda a: a.__setitem__(4, None), ValueError, "in_scale and in_shift"),
    (lambda a: a.__setitem__(3, a[3][:3]), ValueError, "in_scale must have shape"),
    (lambda a: a.__setitem__(5, a[5][:, :, :4]), ValueError, "residual must have the output's shape"),
    (lambda a: a.__setitem__(5, a[5].double()), TypeError, "residual"),
    (lambda a: a.__setitem__(0, a[0][0]), ValueError, "x must be 4-D"),
    (lambda a: a.__setitem__(0, a[0].double()), TypeError, "x has dtype"),
    (lambda a: a.__setitem__(0, a[0].to(torch.int32)), TypeError, "x has dtype"),
    (lambda a: a.__setitem__(9, 3), ValueError, "groups=3"),
    (lambda a: a.__setitem__(9, 2), ValueError, "input channels per group"),
    (lambda a: a.__setitem__(1, a[1][:, :, :1, :1]), None, None),  # 1x1 weight: valid (and runs)
    (lambda a: a.__setitem__(7, (-1, 0)), ValueError, "invalid stride"),
    (lambda a: a.__setitem__(1, torch.randn(6, 4, 9, 9, device=DEVICE)), ValueError, "output would be empty"),
    (lambda a: a.__setitem__(1, a[1].to("meta")), ValueError, "weight is on meta"),
])
def test_bad_inputs(mutate, exc, match):
    args = _good()
    mutate(args)
    if exc is None:
        args[5] = None
        _backend().conv(*args, False, False)
        return
    with pytest.raises(exc, match=match):
        _backend().conv(*args, True, True)


def test_meta_device_refused():
    x = torch.empty(1, 4, 5, 5, device="meta")
    with pytest.raises(RuntimeError, match="not CUDA"):
        _backend().conv(x, torch.empty(4, 4, 1, 1, device="meta"), None, None, None, None,
                        (1, 1), (0, 0), (1, 1), 1, False, False)


# ----------------------------------------------------------------------------- GPU: realistic shapes

GPU_CASES = [
    # (id, N, Cin, H, W, Cout, k, stride, pad, groups, pro, bias, res, relu, stats)
    ("r50-l1-1x1-256-64", 16, 256, 56, 56, 64, 1, 1, 0, 1, True, False, False, False, True),
    ("r50-l1-3x3-64-64", 16, 64, 56, 56, 64, 3, 1, 1, 1, True, False, False, False, True),
    ("r50-l1-1x1-64-256-res", 16, 64, 56, 56, 256, 1, 1, 0, 1, True, True, True, True, False),
    ("r50-l2-3x3-s2", 16, 128, 56, 56, 128, 3, 2, 1, 1, True, False, False, False, True),
    ("r50-l3-1x1-1024-256", 16, 1024, 14, 14, 256, 1, 1, 0, 1, False, True, False, True, True),
    ("r50-stem-7x7", 8, 3, 224, 224, 64, 7, 2, 3, 1, False, False, False, False, True),
    ("rx50-3x3-g32", 16, 256, 28, 28, 256, 3, 1, 1, 32, True, False, False, False, True),
    ("ragged-3x3", 4, 60, 17, 17, 100, 3, 1, 1, 1, True, True, True, True, True),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", GPU_CASES, ids=[c[0] for c in GPU_CASES])
def test_conv_gpu_lowp(case, dtype):
    _, n, cin, h, w, cout, k, s, p, g, pro, bias, res, relu, stats = case
    args = make_inputs(n, cin, h, w, cout, k, s, p, 1, g, pro, bias, res, dtype=dtype, channels_last=True,
                       device="cuda")
    check_lowp(args, relu, stats)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES[:3] + GPU_CASES[5:], ids=[c[0] for c in GPU_CASES[:3] + GPU_CASES[5:]])
def test_conv_gpu_fp32(case):
    _, n, cin, h, w, cout, k, s, p, g, pro, bias, res, relu, stats = case
    args = make_inputs(2, cin, h, w, cout, k, s, p, 1, g, pro, bias, res, channels_last=True, device="cuda")
    y, mean, var = _backend().conv(*args, relu, stats)
    yr, mr, vr = reference.conv(*args, relu, stats)
    torch.testing.assert_close(y, yr, rtol=1e-4, atol=1e-4)
    if stats:
        torch.testing.assert_close(mean, mr, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(var, vr, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_conv_gpu_nchw_input_bf16():
    args = make_inputs(8, 64, 28, 28, 64, 3, 1, 1, 1, 1, True, True, True, dtype=torch.bfloat16, device="cuda")
    y, _, _ = _backend().conv(*args, True, True)
    assert y.is_contiguous()
    check_lowp(args, True, True)
