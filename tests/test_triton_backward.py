"""The triton backend's fused backward (conv_backward, bn_act_backward) against the reference.

Without a GPU these run under TRITON_INTERPRET=1 (set by conftest.py) on tiny CPU
tensors: fp32 tightly, fp16 with the 2x rule against an fp64 reference; whole fused
blocks in train mode, triton against reference; bitwise determinism. The @gpu tests
run ResNet-50 shapes in bf16/fp16 with the 2x rule.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

import fused_resnet  # noqa: F401  (registers torch.ops.fused_resnet)
from fused_resnet import FusedBasicBlock, FusedBottleneck, FusedPreActBottleneck, reference
from fused_resnet._layout import empty_like_layout
from fused_resnet.backends import get
from fused_resnet.models import PreActBottleneck

from helpers import assert_close_fp32, assert_within_2x, sgd_step

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


# ----------------------------------------------------------------------------- through autograd / whole blocks


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


def _proj(cin, cout, stride):
    return nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


BLOCKS = {
    "bottleneck": (FusedBottleneck, lambda: Bottleneck(16, 4)),
    "bottleneck_s2_proj": (FusedBottleneck, lambda: Bottleneck(8, 4, 2, _proj(8, 16, 2))),
    "basic_s2_proj": (FusedBasicBlock, lambda: BasicBlock(8, 16, 2, _proj(8, 16, 2))),
    "preact_bottleneck_s2_proj": (FusedPreActBottleneck, lambda: PreActBottleneck(8, 4, 2, _proj(8, 16, 2))),
}


def _randomize_bn(block, g):
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)


def _close(a, b, name, tol):
    scale = max(b.abs().max().item(), 1.0)
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("kind,cl", [("bottleneck", True), ("bottleneck_s2_proj", False),
                                     ("basic_s2_proj", True), ("preact_bottleneck_s2_proj", False)])
def test_block_train_triton_vs_reference(kind, cl):
    fused_cls, make = BLOCKS[kind]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    base = make()
    _randomize_bn(base, g)
    tri = fused_cls.from_block(copy.deepcopy(base), backend="triton").to(DEVICE).train()
    ref = fused_cls.from_block(copy.deepcopy(base), backend="reference").to(DEVICE).train()
    cin = base.conv1.in_channels
    for step in range(2):
        x = torch.randn(2, cin, 5, 5, generator=g).to(DEVICE)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        ya, dxa, ga = sgd_step(ref, x, 100 + step)
        yb, dxb, gb = sgd_step(tri, x, 100 + step)
        assert tri.backend == "triton"
        _close(yb, ya, f"step {step} output", 2e-5)
        _close(dxb, dxa, f"step {step} input grad", 1e-4)
        for name in ga:
            _close(gb[name], ga[name], f"step {step} grad of {name}", 1e-4)
        for (name, a), (_, b) in zip(ref.named_buffers(), tri.named_buffers()):
            _close(b.float(), a.float(), f"step {step} buffer {name}", 1e-5)


def test_block_backward_deterministic():
    torch.manual_seed(1)
    base = Bottleneck(8, 4, 2, _proj(8, 16, 2))
    x = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            blk = FusedBottleneck.from_block(copy.deepcopy(base), backend="triton").to(DEVICE).train()
            runs.append(sgd_step(blk, x, 0))
    finally:
        torch.use_deterministic_algorithms(old)
    (ya, dxa, ga), (yb, dxb, gb) = runs
    assert torch.equal(ya, yb) and torch.equal(dxa, dxb)
    for name in ga:
        assert torch.equal(ga[name], gb[name]), name


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
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_bn_act_backward_gpu_lowp(dtype):
    for cl in (False, True):
        _check_bn_act_backward_lowp(
            make_bn_act_args(cl, True, True, True, dtype=dtype, seed=12, shape=(16, 256, 28, 28)))


@pytest.mark.gpu
def test_layer1_bottleneck_train_step_gpu_bf16():
    """Whole layer1 bottleneck (N=32) in bf16: triton vs reference gradients with the 2x rule against
    an fp64 reference; prints the N=128 training-step time (target: <= 3.0 ms on an H100)."""
    torch.manual_seed(0)
    base = Bottleneck(256, 64).cuda()
    g = torch.Generator().manual_seed(0)
    _randomize_bn(base, g)
    x = torch.randn(32, 256, 56, 56, generator=g).cuda().contiguous(memory_format=torch.channels_last)
    gout = torch.randn(32, 256, 56, 56, generator=g).cuda().contiguous(memory_format=torch.channels_last)
    results = {}
    for name, backend, dtype in (("tri", "triton", torch.bfloat16), ("plain", "reference", torch.bfloat16),
                                 ("ref64", "reference", torch.float64)):
        blk = FusedBottleneck.from_block(copy.deepcopy(base), backend=backend).to(dtype).train()
        blk = blk.to(memory_format=torch.channels_last)
        xi = x.to(dtype).requires_grad_()
        y = blk(xi)
        (y * gout.to(dtype)).sum().backward()
        results[name] = [y.detach(), xi.grad] + [p.grad for p in blk.parameters()]
    for i, (a, b, c) in enumerate(zip(results["tri"], results["plain"], results["ref64"])):
        assert_within_2x(a, b, c, f"tensor {i}")

    blk = FusedBottleneck.from_block(copy.deepcopy(base), backend="triton").to(torch.bfloat16).train()
    blk = blk.to(memory_format=torch.channels_last)
    xb = torch.randn(128, 256, 56, 56, device="cuda", dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    gb = torch.randn_like(xb)

    def step():
        blk(xb).backward(gb)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    from triton.testing import do_bench

    ms = do_bench(step, warmup=10, rep=50)
    print(f"\nlayer1 bottleneck train step, N=128 bf16, triton: {ms:.3f} ms (target <= 3.0 ms)")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("case", [R50_CASES[1], R50_CASES[2]], ids=[R50_CASES[1][0], R50_CASES[2][0]])
def test_every_autotune_candidate_is_correct(case, dtype, monkeypatch):
    """Autotuning keeps whichever candidate configuration is fastest on the machine, so each
    one, forced in turn (forward, dgrad and wgrad alike), must compute the same function:
    the 2x rule in bf16, fp32 (TF32 off) against the reference."""
    from fused_resnet.backends import triton as triton_backend

    _, cin, h, cout, k, s, p, pro = case
    args = make_case(4, cin, h, h, cout, k, s, p, pro=pro, stats=True, dtype=dtype, channels_last=True, seed=5)
    dy, _, _, x, wt, _, _, sc, sf, stride, pad, dil, groups, relu, stats = args
    fwd = (x, wt, None, sc, sf, None, stride, pad, dil, groups, relu, stats)
    plain_y = reference.conv(*fwd)[0]
    ref_y = reference.conv(*_to64(fwd))[0]
    most = max(len(triton_backend.kernels().conv_configs(cin, cout, x.element_size())),
               len(triton_backend.backward_kernels().dgrad_configs(cin, cout, x.element_size())),
               len(triton_backend.backward_kernels().wgrad_configs(cin, cout, x.element_size())))
    for i in range(most):
        monkeypatch.setattr(triton_backend, "_pick_config",
                            lambda key, cands, launch, device, i=i: cands[min(i, len(cands) - 1)])
        y = _tb().conv(*fwd)[0]
        if dtype == torch.float32:
            assert_close_fp32(y, plain_y, f"y, candidate {i}", atol=1e-5 * max(1.0, plain_y.abs().max().item()))
            check_fp32(args)
        else:
            assert_within_2x(y, plain_y, ref_y, f"y, candidate {i}")
            check_lowp(args)
