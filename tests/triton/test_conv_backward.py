"""The triton backend's fused ``fused_resnet::conv_backward`` against the reference.

Without a GPU these run under TRITON_INTERPRET=1 (set by conftest.py) on tiny CPU
tensors: fp32 tightly, fp16 with the 2x rule against an fp64 reference; every
output mask the blocks produce; bitwise determinism; the ordered sums of partials.
The @gpu tests run ResNet-50 shapes in bf16/fp16 with the 2x rule, and every
autotuning candidate.
"""
from __future__ import annotations

import pytest
import torch

import fused_resnet  # noqa: F401  (registers torch.ops.fused_resnet)
from fused_resnet import reference
from fused_resnet._layout import empty_like_layout
from fused_resnet.backends import get

from helpers import assert_close_fp32, assert_within_2x

from .test_bn_act import make_bn_act_args

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


pytestmark = pytest.mark.usefixtures("no_tf32", "no_autotune_on_tiny_shapes")


def _tb():
    return get("triton")


def make_case(n, cin, h, w, cout, k, stride=1, pad=0, dil=1, groups=1, pro=False, relu=False, stats=False,
              dtype=torch.float32, channels_last=False, seed=0, device=DEVICE, dy_cl=None):
    """Inputs of conv_backward: a forward through the reference, then random upstream grads."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=g).to(device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wt = (torch.randn(cout, cin // groups, k, k, generator=g) * (cin // groups * k * k) ** -0.5).to(device, dtype)
    sc = (torch.rand(cin, generator=g) + 0.5).to(device) if pro else None
    sf = (torch.randn(cin, generator=g) * 0.5).to(device) if pro else None
    y, mean, _ = reference.conv(x, wt, None, sc, sf, None, (stride, stride), (pad, pad), (dil, dil), groups,
                                relu, stats)
    dy = torch.randn(y.shape, generator=g).to(device, dtype)
    if dy_cl is not None:
        dy = dy.contiguous(memory_format=torch.channels_last if dy_cl else torch.contiguous_format)
    dmean = torch.randn(cout, generator=g).to(device)
    dvar = torch.randn(cout, generator=g).to(device)
    return [dy, dmean, dvar, x, wt, y, mean, sc, sf, (stride, stride), (pad, pad), (dil, dil), groups, relu, stats]


def full_mask(args):
    pro = args[7] is not None
    return [True, True, True, pro, pro, True]


NAMES = ("dx", "dweight", "dbias", "dscale", "dshift", "dresidual")


def _check_meta(outs, refs, args, mask):
    x, y = args[3], args[5]
    for name, o, r, m in zip(NAMES, outs, refs, mask):
        if not m:
            assert o.numel() == 0 and o.dtype == torch.float32, f"{name}: not asked for, must be empty fp32"
            continue
        assert o.shape == r.shape and o.dtype == r.dtype, f"{name}: {o.shape}/{o.dtype} vs {r.shape}/{r.dtype}"
    if mask[0]:
        assert outs[0].stride() == empty_like_layout(x, x.shape).stride(), "dx layout"
    if mask[1]:
        assert outs[1].is_contiguous(), "dweight must be contiguous [Cout, Cin/g, KH, KW]"
    if mask[5]:
        assert outs[5].stride() == empty_like_layout(x, y.shape).stride(), "dresidual layout"
    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.numel()]
    for o in outs:
        if o.numel():
            assert all(o.data_ptr() != a.data_ptr() for a in inputs), "an output aliases an input"


def check_fp32(args, mask=None):
    mask = mask or full_mask(args)
    outs = _tb().conv_backward(*args, mask)
    refs = reference.conv_backward(*args, mask)
    _check_meta(outs, refs, args, mask)
    for name, o, r, m in zip(NAMES, outs, refs, mask):
        if m:
            assert_close_fp32(o, r, name, atol=1e-5 * max(1.0, r.abs().max().item()))
    return outs


def _to64(args):
    return [a.double() if isinstance(a, torch.Tensor) and a.dim() == 4 else a for a in args]


def check_lowp(args, mask=None):
    mask = mask or full_mask(args)
    outs = _tb().conv_backward(*args, mask)
    plain = reference.conv_backward(*args, mask)
    ref64 = reference.conv_backward(*_to64(args), mask)
    _check_meta(outs, plain, args, mask)
    for name, o, p, r, m in zip(NAMES, outs, plain, ref64, mask):
        if m:
            assert_within_2x(o, p, r, name)


# (id, N, Cin, H, W, Cout, k, stride, pad, dil, groups, pro, relu, stats, channels_last)
FP32_CASES = [
    ("1x1", 2, 8, 5, 5, 16, 1, 1, 0, 1, 1, False, False, False, False),
    ("1x1-pro-stats-cl", 2, 16, 4, 5, 8, 1, 1, 0, 1, 1, True, False, True, True),
    ("1x1-s2-ragged-relu", 1, 5, 9, 9, 7, 1, 2, 0, 1, 1, False, True, True, False),
    ("3x3-p1-pro-stats", 2, 8, 5, 5, 8, 3, 1, 1, 1, 1, True, False, True, True),
    ("3x3-ragged-all", 2, 5, 6, 7, 7, 3, 1, 1, 1, 1, True, True, True, False),
    ("3x3-s2-odd-pro", 1, 6, 9, 9, 10, 3, 2, 1, 1, 1, True, False, True, True),
    ("3x3-dil2-groups2", 2, 8, 6, 6, 8, 3, 1, 2, 2, 2, True, True, False, True),
    ("3x3-groups4-ragged", 1, 12, 5, 5, 20, 3, 1, 1, 1, 4, False, False, True, False),
    ("3x3-nopad-batch1", 1, 4, 6, 5, 6, 3, 1, 0, 1, 1, True, False, True, False),
    ("7x7-s2-p3", 1, 3, 9, 9, 8, 7, 2, 3, 1, 1, False, False, True, True),
    ("3x3-s2-dil2-pro", 1, 8, 9, 9, 8, 3, 2, 2, 2, 1, True, False, True, False),
    ("3x3-s2-even-h1", 2, 8, 1, 4, 8, 3, 2, 1, 1, 1, True, True, True, True),
    ("1x1-s2-groups2-pro", 2, 8, 6, 7, 8, 1, 2, 0, 1, 2, True, False, False, True),
    ("3x3-s2-groups8-packed", 2, 32, 7, 7, 32, 3, 2, 1, 1, 8, True, False, True, True),
    ("3x3-groups16-packed-ragged", 1, 48, 5, 6, 32, 3, 1, 1, 1, 16, True, True, True, False),
    ("1x1-many-channels", 1, 40, 3, 3, 36, 1, 1, 0, 1, 1, True, True, True, True),
]


@pytest.mark.parametrize("case", FP32_CASES, ids=[c[0] for c in FP32_CASES])
def test_conv_backward_fp32(case):
    _, n, cin, h, w, cout, k, s, p, d, g, pro, relu, stats, cl = case
    check_fp32(make_case(n, cin, h, w, cout, k, s, p, d, g, pro, relu, stats, channels_last=cl))


# Every output_mask the fused blocks produce, and the corner ones.
MASKS = [
    [True, True, False, True, True, False],    # train, conv with prologue (conv2/conv3, pre-act)
    [True, True, False, False, False, False],  # train, first conv of a post-activation block
    [False, True, False, False, False, False],  # input needs no grad (first layer)
    [False, True, False, True, True, False],   # prologue grads without dx
    [True, False, False, True, True, False],   # frozen weight
    [False, False, False, True, False, False],  # dscale alone
    [False, False, False, False, True, False],  # dshift alone
    [True, True, True, False, False, True],    # eval (folded bias, residual in the epilogue)
    [False, False, True, False, False, True],  # g only
    [False, False, False, False, False, False],
]


def test_output_masks():
    args = make_case(2, 6, 5, 5, 10, 1, pro=True, relu=True, stats=True, channels_last=True, seed=3)
    for mask in MASKS:
        check_fp32(args, mask)
    args = make_case(1, 6, 5, 5, 10, 3, 1, 1, pro=True, stats=True, seed=3)
    for mask in MASKS[:2]:
        check_fp32(args, mask)
    args = make_case(1, 6, 7, 7, 4, 3, 2, 1, relu=True, seed=4)  # no prologue: dx straight from dgrad
    for mask in ([True, False, False, False, False, False], [True, True, True, False, False, True]):
        check_fp32(args, mask)


def test_layouts_of_dy_and_x_mixed():
    for x_cl, dy_cl in ((False, True), (True, False)):
        check_fp32(make_case(1, 4, 5, 5, 6, 3, 1, 1, pro=True, stats=True, channels_last=x_cl, dy_cl=dy_cl, seed=5))


def test_prologue_mask_at_zero():
    # u = x*s + t exactly 0 (and negative) must block the gradient like relu's backward in the reference
    args = make_case(1, 4, 4, 4, 4, 1, pro=True, stats=True, seed=6)
    args[8] = torch.zeros_like(args[8])
    args[3][:, :, :2] = 0.0
    check_fp32(args)


@pytest.mark.parametrize("case", [FP32_CASES[1], FP32_CASES[4], FP32_CASES[5], FP32_CASES[6]],
                         ids=["1x1", "3x3-ragged", "3x3-s2", "3x3-groups"])
def test_conv_backward_fp16(case):
    _, n, cin, h, w, cout, k, s, p, d, g, pro, relu, stats, cl = case
    check_lowp(make_case(n, cin, h, w, cout, k, s, p, d, g, pro, relu, stats, dtype=torch.float16,
                         channels_last=cl, seed=7))


def test_wgrad_many_splits():
    # enough rows for several split-K partials and reduce blocks
    check_fp32(make_case(2, 4, 9, 9, 4, 3, 1, 1, pro=True, stats=True, seed=8), [False, True, False, False, False,
                                                                                 False])


def test_empty_batch():
    args = make_case(1, 4, 5, 5, 6, 3, 1, 1, pro=True, stats=True)
    args[0], args[3], args[5] = args[0][:0], args[3][:0], args[5][:0]
    outs = _tb().conv_backward(*args, full_mask(args))
    assert outs[0].shape == (0, 4, 5, 5) and outs[5].shape == (0, 6, 5, 5)
    for o in outs[1:5]:
        assert o.numel() and torch.count_nonzero(o) == 0


def test_bad_inputs():
    args = make_case(1, 4, 5, 5, 6, 3, 1, 1, pro=True, stats=True)
    bad = list(args)
    bad[0] = bad[0][:, :, :3]
    with pytest.raises(ValueError, match="dy and y must have the output's shape"):
        _tb().conv_backward(*bad, full_mask(args))
    bad = list(args)
    bad[4] = bad[4].half()
    with pytest.raises(TypeError, match="weight has dtype"):
        _tb().conv_backward(*bad, full_mask(args))
    bad = list(args)
    bad[7], bad[8] = None, None
    with pytest.raises(ValueError, match="without a prologue"):
        _tb().conv_backward(*bad, full_mask(args))


# ----------------------------------------------------------------------------- determinism


def test_deterministic_bitwise():
    args = make_case(2, 6, 6, 6, 8, 3, 1, 1, pro=True, relu=True, stats=True, channels_last=True, seed=9)
    mask = [True, True, True, True, True, True]
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        a = _tb().conv_backward(*args, mask)
        b = _tb().conv_backward(*args, mask)
        bargs = [make_bn_act_args(True, True, True, True, seed=9)]
        c = _tb().bn_act_backward(*bargs[0], [True] * 6)
        d = _tb().bn_act_backward(*bargs[0], [True] * 6)
    finally:
        torch.use_deterministic_algorithms(old)
    for name, u, v in zip(NAMES + NAMES, a + c, b + d):
        assert torch.equal(u, v), f"{name} differs between two identical runs"


@pytest.mark.parametrize("s, t", [(1, 7), (2, 33), (3, 301)])
def test_sum_partials_in_one_or_two_levels(s, t):
    # Many rows go through a first level of chunk sums (t > 2 * rows per chunk): both paths
    # must give the column sums of every s, repeatably, and separate tensors per s.
    from fused_resnet.backends.triton.conv_backward import sum_partials

    g = torch.Generator().manual_seed(t)
    p = (torch.randn(s, t, 37, generator=g) * 3 + 1).to(DEVICE)  # 37: no multiple of a channel block
    got = sum_partials(p)
    assert len(got) == s and len({v.data_ptr() for v in got}) == s
    want = p.double().sum(1)
    for i in range(s):
        torch.testing.assert_close(got[i].double(), want[i], rtol=1e-6, atol=1e-5)
        assert torch.equal(got[i], sum_partials(p)[i])


# ----------------------------------------------------------------------------- GPU


# ResNet-50 shapes (N=8 to keep the fp64 reference cheap): (id, Cin, H, Cout, k, stride, pad, pro)
R50_CASES = [
    ("l1-conv1", 256, 56, 64, 1, 1, 0, True),
    ("l1-conv2", 64, 56, 64, 3, 1, 1, True),
    ("l1-conv3", 64, 56, 256, 1, 1, 0, True),
    ("l2-conv2-s2", 128, 56, 128, 3, 2, 1, True),
    ("l2-down-s2", 256, 56, 512, 1, 2, 0, False),
    ("stem-7x7", 3, 64, 64, 7, 2, 3, False),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", R50_CASES, ids=[c[0] for c in R50_CASES])
def test_conv_backward_gpu_lowp(case, dtype):
    _, cin, h, cout, k, s, p, pro = case
    args = make_case(8, cin, h, h, cout, k, s, p, pro=pro, stats=True, dtype=dtype, channels_last=True, seed=11)
    check_lowp(args)
    check_lowp(args, [True, True, False, pro, pro, False])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("case", [R50_CASES[1], R50_CASES[2]], ids=[R50_CASES[1][0], R50_CASES[2][0]])
def test_every_autotune_candidate_is_correct(case, dtype, monkeypatch):
    """Autotuning keeps whichever candidate configuration is fastest on the machine, so each
    one, forced in turn (forward, dgrad and wgrad alike), must compute the same function:
    the 2x rule in bf16, fp32 (TF32 off) against the reference."""
    from fused_resnet.backends.triton import tuning
    from fused_resnet.kernels import conv, conv_backward

    _, cin, h, cout, k, s, p, pro = case
    args = make_case(4, cin, h, h, cout, k, s, p, pro=pro, stats=True, dtype=dtype, channels_last=True, seed=5)
    dy, _, _, x, wt, _, _, sc, sf, stride, pad, dil, groups, relu, stats = args
    fwd = (x, wt, None, sc, sf, None, stride, pad, dil, groups, relu, stats)
    plain_y = reference.conv(*fwd)[0]
    ref_y = reference.conv(*_to64(fwd))[0]
    most = max(len(conv.conv_configs(cin, cout, x.element_size())),
               len(conv_backward.dgrad_configs(cin, cout, x.element_size())),
               len(conv_backward.wgrad_configs(cin, cout, x.element_size())))
    for i in range(most):
        monkeypatch.setattr(tuning, "pick",
                            lambda key, cands, launch, device, i=i: cands[min(i, len(cands) - 1)])
        y = _tb().conv(*fwd)[0]
        if dtype == torch.float32:
            assert_close_fp32(y, plain_y, f"y, candidate {i}", atol=1e-5 * max(1.0, plain_y.abs().max().item()))
            check_fp32(args)
        else:
            assert_within_2x(y, plain_y, ref_y, f"y, candidate {i}")
            check_lowp(args)
