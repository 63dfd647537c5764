"""The triton backend's ``conv_shortcut``: the block's last conv with its shortcut in one kernel.

Projection (SC_MODE=1: a second K loop over the strided sc_x into the conv's
accumulator) and option A (SC_MODE=2: subsampled, channel-padded sc_x read in the
epilogue), each with and without the shortcut's prologue, against
``reference.conv_shortcut``; then whole eval-mode blocks converted with
backend="triton" against backend="reference".

Without a GPU these run under TRITON_INTERPRET=1 (set by conftest.py) on tiny CPU
tensors in fp32 (tight) and fp16 (2x rule against an fp64 reference); the
interpreter's bf16 is broken, so bf16 runs only in the @gpu tests.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

import fused_resnet
from fused_resnet import reference
from fused_resnet.backends import get
from fused_resnet.models import PreActBottleneck, ShortcutA

from helpers import assert_close_fp32, assert_within_2x, randomize_bn

from .test_conv import _to64, assert_same_layout

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


pytestmark = pytest.mark.usefixtures("no_tf32", "no_autotune_on_tiny_shapes")


def _backend():
    return get("triton")


def make_args(n, cin, h, w, cout, k, stride, pad, csc, hsc, sc_stride, proj, pro=False, sc_pro=False, bias=True,
              relu=True, dtype=torch.float32, channels_last=False, seed=0, device=DEVICE, groups=1):
    """conv_shortcut's arguments: x [n, cin, h, w], a k x k conv, sc_x [n, csc, hsc, hsc]."""
    g = torch.Generator().manual_seed(seed)

    def rn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    def act(*shape):
        t = rn(*shape).to(device=device, dtype=dtype)
        return t.contiguous(memory_format=torch.channels_last) if channels_last else t

    x = act(n, cin, h, w)
    wt = rn(cout, cin // groups, k, k, scale=(cin // groups * k * k) ** -0.5).to(device=device, dtype=dtype)
    sc_x = act(n, csc, hsc, hsc)
    sc_w = rn(cout, csc, 1, 1, scale=csc ** -0.5).to(device=device, dtype=dtype) if proj else None
    b = rn(cout).to(device) if bias else None
    sc = (torch.rand(cin, generator=g) + 0.5).to(device) if pro else None
    sf = rn(cin, scale=0.5).to(device) if pro else None
    ssc = (torch.rand(csc, generator=g) + 0.5).to(device) if sc_pro else None
    ssf = rn(csc, scale=0.5).to(device) if sc_pro else None
    return (x, wt, b, sc, sf, sc_x, sc_w, ssc, ssf, sc_stride, [stride] * 2, [pad] * 2, [1, 1], groups, relu)


def check_fp32(args, via_op=False):
    y = torch.ops.fused_resnet.conv_shortcut(*args, "triton") if via_op else _backend().conv_shortcut(*args)
    yr = reference.conv_shortcut(*args)
    assert y.dtype == yr.dtype and y.shape == yr.shape
    assert_same_layout(y, yr, args[0])
    assert_close_fp32(y, yr, "y")
    return y


def check_lowp(args):
    y = _backend().conv_shortcut(*args)
    yp = reference.conv_shortcut(*args)
    y64 = reference.conv_shortcut(*_to64(args))
    assert_same_layout(y, yp, args[0])
    assert_within_2x(y, yp, y64, "y")


# (id, N, Cin, H, W, Cout, k, stride, pad, Csc, Hsc, sc_stride, pro, sc_pro, bias, relu, channels_last)
PROJ_CASES = [
    # the bottleneck v1.5 transition: 1x1 conv3 on the strided t2, projection of x at stride 2
    ("1x1-s2sc", 2, 8, 5, 5, 16, 1, 1, 0, 8, 9, 2, False, False, True, True, False),
    ("1x1-s2sc-pros", 2, 8, 5, 5, 16, 1, 1, 0, 16, 9, 2, True, True, True, True, True),
    ("1x1-s1sc", 2, 16, 7, 7, 32, 1, 1, 0, 16, 7, 1, False, False, False, False, True),
    ("1x1-s1sc-scpro", 1, 16, 7, 7, 24, 1, 1, 0, 32, 7, 1, False, True, True, True, False),
    # BasicBlock: 3x3 conv2 (stride 1) + projection of the block input
    ("3x3-s2sc", 2, 8, 5, 5, 16, 3, 1, 1, 8, 9, 2, False, False, True, True, True),
    ("3x3-s2sc-pro", 1, 8, 4, 4, 16, 3, 1, 1, 8, 7, 2, True, False, True, True, False),
    ("3x3-s2sc-scpro", 1, 8, 5, 5, 8, 3, 1, 1, 4, 9, 2, False, True, False, True, True),
    # the main conv strided too (3x3, stride 2, pad 1: 9 -> 5)
    ("3x3s2-s2sc-pros", 1, 6, 9, 9, 10, 3, 2, 1, 6, 9, 2, True, True, True, False, False),
    # ragged channels (none a multiple of BLOCK_K=16 / BLOCK_N=16), odd sizes
    ("ragged-1x1", 2, 5, 7, 7, 7, 1, 1, 0, 6, 7, 1, True, True, True, True, False),
    ("ragged-3x3-s2", 1, 5, 5, 5, 13, 3, 1, 1, 3, 9, 2, False, True, True, True, True),
    ("ragged-even-mix", 1, 16, 5, 5, 20, 1, 1, 0, 5, 9, 2, True, False, True, True, False),
    ("batch1-1px", 1, 4, 1, 1, 8, 1, 1, 0, 4, 2, 2, True, True, True, True, True),
    ("multi-ntile", 1, 4, 5, 5, 40, 1, 1, 0, 20, 5, 1, False, True, True, True, True),
]


@pytest.mark.parametrize("case", PROJ_CASES, ids=[c[0] for c in PROJ_CASES])
def test_projection_fp32(case):
    _, n, cin, h, w, cout, k, s, p, csc, hsc, ss, pro, sc_pro, bias, relu, cl = case
    check_fp32(make_args(n, cin, h, w, cout, k, s, p, csc, hsc, ss, True, pro, sc_pro, bias, relu, channels_last=cl))


# (id, N, Cin, H, W, Cout, k, stride, pad, Csc, Hsc, sc_stride, pro, sc_pro, bias, relu, channels_last)
OPTA_CASES = [
    ("s2-odd", 2, 16, 5, 5, 16, 3, 1, 1, 8, 9, 2, False, False, True, True, False),
    ("s2-odd-scpro", 2, 16, 5, 5, 16, 3, 1, 1, 8, 9, 2, False, True, True, True, True),
    ("s1-oddpad-pros", 1, 8, 7, 7, 8, 3, 1, 1, 3, 7, 1, True, True, True, True, False),  # 5 extra: 2 in front
    ("s2-oddpad", 1, 8, 4, 4, 12, 3, 1, 1, 5, 7, 2, False, False, False, False, True),  # 7 extra: 3 in front
    ("s1-equal", 1, 8, 9, 9, 8, 3, 1, 1, 8, 9, 1, True, False, True, True, True),
    ("s2-main-s2", 1, 6, 9, 9, 20, 3, 2, 1, 7, 9, 2, False, True, True, False, False),
    ("batch1-1x1", 1, 4, 7, 7, 40, 1, 1, 0, 19, 13, 2, False, True, True, True, True),
]


@pytest.mark.parametrize("case", OPTA_CASES, ids=[c[0] for c in OPTA_CASES])
def test_option_a_fp32(case):
    _, n, cin, h, w, cout, k, s, p, csc, hsc, ss, pro, sc_pro, bias, relu, cl = case
    check_fp32(make_args(n, cin, h, w, cout, k, s, p, csc, hsc, ss, False, pro, sc_pro, bias, relu, channels_last=cl))


LOWP = [("proj", c) for c in (PROJ_CASES[1], PROJ_CASES[4], PROJ_CASES[8], PROJ_CASES[9])] + \
       [("optA", c) for c in (OPTA_CASES[1], OPTA_CASES[2], OPTA_CASES[5])]


@pytest.mark.parametrize("kind,case", LOWP, ids=[f"{k}-{c[0]}" for k, c in LOWP])
def test_fp16(kind, case):
    _, n, cin, h, w, cout, k, s, p, csc, hsc, ss, pro, sc_pro, bias, relu, cl = case
    check_lowp(make_args(n, cin, h, w, cout, k, s, p, csc, hsc, ss, kind == "proj", pro, sc_pro, bias, relu,
                         dtype=torch.float16, channels_last=cl, seed=1))


def test_option_a_padded_channels_are_zero_with_prologue():
    # relu(0*scale + shift) > 0: a prologue applied to the padded channels would make them nonzero.
    args = list(make_args(1, 4, 5, 5, 12, 1, 1, 0, 5, 9, 2, False, sc_pro=True, bias=False, relu=False, seed=2))
    args[1] = torch.zeros_like(args[1])  # the conv contributes nothing: y is the shortcut itself
    args[8] = args[8].abs() + 1.0
    y = check_fp32(tuple(args))
    front = (12 - 5) // 2
    assert torch.count_nonzero(y[:, :front]) == 0 and torch.count_nonzero(y[:, front + 5:]) == 0
    assert (y[:, front:front + 5] > 0).float().mean() > 0.5


@pytest.mark.parametrize("proj", [True, False], ids=["proj", "optA"])
def test_via_torch_op_and_layouts(proj):
    for cl in (False, True):
        args = make_args(2, 8, 5, 5, 16, 3, 1, 1, 8, 9, 2, proj, True, True, channels_last=cl, seed=3)
        y = check_fp32(args, via_op=True)
        assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


def test_mixed_layouts_and_non_contiguous():
    args = list(make_args(1, 8, 5, 5, 16, 1, 1, 0, 8, 9, 2, True, True, True, seed=4))
    args[5] = args[5].contiguous(memory_format=torch.channels_last)  # sc_x NHWC, x NCHW
    big = torch.randn(1, 16, 5, 7, device=DEVICE)
    args[0] = big[:, ::2, :, 1:6]  # neither NCHW- nor NHWC-contiguous
    args[6] = args[6].transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous sc_weight
    check_fp32(tuple(args))


@pytest.mark.parametrize("proj", [True, False], ids=["proj", "optA"])
def test_opcheck(proj):
    args = make_args(1, 5, 5, 5, 7, 3, 1, 1, 3, 9, 2, proj, True, True, channels_last=True, seed=5)
    torch.library.opcheck(torch.ops.fused_resnet.conv_shortcut.default, (*args, "triton"),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("proj", [True, False], ids=["proj", "optA"])
def test_autograd_through_op(proj):
    # The backward is composed in ops.py from conv_backward (the triton one here).
    args = list(make_args(1, 4, 5, 5, 8, 3, 1, 1, 3, 9, 2, proj, True, True, seed=16))
    idx = [i for i in range(9) if isinstance(args[i], torch.Tensor)]
    for i in idx:
        args[i] = args[i].detach().requires_grad_(True)
    grads = []
    for backend in ("triton", "reference"):
        y = torch.ops.fused_resnet.conv_shortcut(*args, backend)
        y.square().sum().backward()
        grads.append([args[i].grad.clone() for i in idx])
        for i in idx:
            args[i].grad = None
    for i, gt, gr in zip(idx, *grads):
        assert_close_fp32(gt, gr, f"grad {i}", rtol=1e-4, atol=1e-4)


def test_grouped_main_conv():
    args = make_args(1, 8, 5, 5, 16, 3, 1, 1, 6, 9, 2, True, True, True, seed=6, groups=2)
    check_fp32(args)


def test_deterministic_and_empty_batch():
    args = make_args(2, 6, 5, 5, 10, 3, 1, 1, 4, 9, 2, True, True, True, seed=7)
    assert torch.equal(_backend().conv_shortcut(*args), _backend().conv_shortcut(*args))
    empty = [a[:0] if isinstance(a, torch.Tensor) and a.dim() == 4 and i in (0, 5) else a
             for i, a in enumerate(args)]
    y = _backend().conv_shortcut(*empty)
    assert y.shape == (0, 10, 5, 5)


def test_weight_updates_are_seen():
    args = make_args(1, 4, 5, 5, 8, 1, 1, 0, 4, 9, 2, True, bias=False, relu=False, seed=8)
    y1 = _backend().conv_shortcut(*args)
    with torch.no_grad():
        args[1].mul_(2.0)
        args[6].mul_(2.0)
    assert_close_fp32(_backend().conv_shortcut(*args), 2 * y1, "y after in-place weight updates")
    args[1].data.mul_(2.0)  # bumps no version counter
    args[6].data.mul_(2.0)
    assert_close_fp32(_backend().conv_shortcut(*args), 4 * y1, "y after weight updates through .data")


# ----------------------------------------------------------------------------- errors


def _good(proj=True):
    return list(make_args(1, 4, 5, 5, 8, 3, 1, 1, 6, 9, 2, proj, True, True, seed=9))


@pytest.mark.parametrize("proj,mutate,exc,match", [
    (True, lambda a: a.__setitem__(5, a[5].half()), TypeError, "sc_x has dtype"),
    (True, lambda a: a.__setitem__(6, a[6].half()), TypeError, "sc_weight has dtype"),
    (True, lambda a: a.__setitem__(6, a[6][:, :5]), ValueError, r"sc_weight must have shape \[8, 6, 1, 1\]"),
    (True, lambda a: a.__setitem__(6, a[6].expand(8, 6, 3, 3)), ValueError, "sc_weight must have shape"),
    (True, lambda a: a.__setitem__(5, a[5][:, :, :8, :8]), ValueError, "sc_x is 8x8"),
    (False, lambda a: a.__setitem__(5, a[5][:, :, :, :7]), ValueError, "sc_x is 9x7"),
    (True, lambda a: a.__setitem__(9, 1), ValueError, "sc_x is 9x9, which at sc_stride=1"),
    (True, lambda a: a.__setitem__(9, 0), ValueError, "sc_stride must be a positive int"),
    (True, lambda a: a.__setitem__(5, torch.cat([a[5], a[5]])), ValueError, "sc_x has batch size 2"),
    (True, lambda a: a.__setitem__(5, a[5][0]), ValueError, "sc_x must be 4-D"),
    (False, lambda a: a.__setitem__(5, torch.randn(1, 9, 9, 9, device=DEVICE)), ValueError, "option A"),
    (True, lambda a: a.__setitem__(8, None), ValueError, "sc_in_scale and sc_in_shift"),
    (True, lambda a: a.__setitem__(7, a[7][:4]), ValueError, "sc_in_scale must have shape"),
    (False, lambda a: a.__setitem__(8, a[8].half()), TypeError, "sc_in_shift must be float32"),
    (True, lambda a: a.__setitem__(1, a[1].half()), TypeError, "weight has dtype"),
    (True, lambda a: a.__setitem__(2, a[2][:5]), ValueError, "bias must have shape"),
    (True, lambda a: a.__setitem__(3, a[3][:3]), ValueError, "in_scale must have shape"),
    (True, lambda a: a.__setitem__(6, a[6].to("meta")), ValueError, "sc_weight is on meta"),
])
def test_bad_inputs(proj, mutate, exc, match):
    args = _good(proj)
    mutate(args)
    with pytest.raises(exc, match=match):
        _backend().conv_shortcut(*args)


# ----------------------------------------------------------------------------- whole eval-mode blocks


def _proj(cin, cout, stride):
    return nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


EVAL_BLOCKS = {
    "bottleneck_s2_proj": lambda: Bottleneck(8, 4, 2, _proj(8, 16, 2)),
    "bottleneck_s1_proj": lambda: Bottleneck(8, 4, 1, _proj(8, 16, 1)),
    "basic_s2_proj": lambda: BasicBlock(8, 16, 2, _proj(8, 16, 2)),
    "basic_optionA": lambda: BasicBlock(8, 16, 2, ShortcutA(8, 16, 2)),
    "basic_optionA_odd": lambda: BasicBlock(5, 12, 2, ShortcutA(5, 12, 2)),
    "preact_bottleneck_conv1x1": lambda: PreActBottleneck(8, 4, 2, conv1x1(8, 16, 2)),
}


def _randomized(kind, seed):
    torch.manual_seed(seed)
    block = randomize_bn(EVAL_BLOCKS[kind](), seed)
    return nn.Sequential(block).eval().to(DEVICE)


@pytest.fixture
def count_shortcut_launches(monkeypatch):
    """Counts the triton backend's conv_shortcut calls (the fused path was taken)."""
    cls = type(_backend())
    inner = cls.conv_shortcut
    calls = []

    def spy(*args):
        calls.append(args[6] is not None)
        return inner(*args)

    monkeypatch.setattr(cls, "conv_shortcut", staticmethod(spy))
    return calls


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("kind", list(EVAL_BLOCKS))
def test_eval_block_fp32(kind, cl, count_shortcut_launches):
    model = _randomized(kind, seed=10)
    fused = fused_resnet.convert(model, backend="triton")
    ref = fused_resnet.convert(model, backend="reference")
    in_ch = model[0].conv1.in_channels if hasattr(model[0], "conv1") else model[0].bn1.num_features
    x = torch.randn(2, in_ch, 9, 9, generator=torch.Generator().manual_seed(11)).to(DEVICE)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = fused(x)
        yr = ref(x)
        y_unfused = model(x)
    assert count_shortcut_launches == ["optionA" not in kind], "the block did not take the fused shortcut path"
    assert y.shape == yr.shape and y.stride() == yr.stride()
    assert_close_fp32(y, yr, "block output", atol=1e-4)
    assert_close_fp32(y, y_unfused, "block output vs the unfused block", atol=1e-4)


@pytest.mark.parametrize("kind", ["bottleneck_s2_proj", "basic_optionA", "preact_bottleneck_conv1x1"])
def test_eval_block_fp16(kind):
    model = _randomized(kind, seed=12)
    in_ch = model[0].conv1.in_channels if hasattr(model[0], "conv1") else model[0].bn1.num_features
    x = torch.randn(2, in_ch, 9, 9, generator=torch.Generator().manual_seed(13)).to(DEVICE)
    with torch.no_grad():
        y = fused_resnet.convert(model, backend="triton").half()(x.half())
        plain = fused_resnet.convert(model, backend="reference").half()(x.half())
        y64 = fused_resnet.convert(model, backend="reference").double()(x.double())
    assert_within_2x(y, plain, y64, "block output")


# ----------------------------------------------------------------------------- GPU: ResNet layer transitions

# (id, N, Cin, H, Cout, k, Csc, Hsc, sc_stride, proj, pro, sc_pro)
GPU_CASES = [
    ("r50-l2-1x1-128-512-proj256-s2", 16, 128, 28, 512, 1, 256, 56, 2, True, False, False),
    ("r50-l3-1x1-256-1024-proj512-s2", 16, 256, 14, 1024, 1, 512, 28, 2, True, False, False),
    ("r50-l1-1x1-64-256-proj64-s1", 16, 64, 56, 256, 1, 64, 56, 1, True, False, False),
    ("r18-l2-3x3-128-proj64-s2", 16, 128, 28, 128, 3, 64, 56, 2, True, False, False),
    ("preact-r50-l2-pros", 16, 128, 28, 512, 1, 256, 56, 2, True, True, True),
    ("cifar-optA-16-32-s2", 64, 32, 16, 32, 3, 16, 32, 2, False, False, False),
    ("cifar-optA-32-64-s2-scpro", 64, 64, 8, 64, 3, 32, 16, 2, False, True, True),
    ("ragged-proj", 4, 60, 17, 100, 3, 37, 33, 2, True, True, True),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", GPU_CASES, ids=[c[0] for c in GPU_CASES])
def test_gpu_lowp(case, dtype):
    _, n, cin, h, cout, k, csc, hsc, ss, proj, pro, sc_pro = case
    args = make_args(n, cin, h, h, cout, k, 1, k // 2, csc, hsc, ss, proj, pro, sc_pro, dtype=dtype,
                     channels_last=True, device="cuda")
    check_lowp(args)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=[c[0] for c in GPU_CASES])
def test_gpu_fp32(case):
    _, n, cin, h, cout, k, csc, hsc, ss, proj, pro, sc_pro = case
    args = make_args(2, cin, h, h, cout, k, 1, k // 2, csc, hsc, ss, proj, pro, sc_pro, channels_last=True,
                     device="cuda")
    y = _backend().conv_shortcut(*args)
    torch.testing.assert_close(y, reference.conv_shortcut(*args), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["bottleneck_s2_proj", "basic_optionA", "preact_bottleneck_conv1x1"])
def test_gpu_eval_block_bf16(kind):
    model = _randomized(kind, seed=14)
    in_ch = model[0].conv1.in_channels if hasattr(model[0], "conv1") else model[0].bn1.num_features
    x = torch.randn(8, in_ch, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = fused_resnet.convert(model, backend="triton").bfloat16()(x.bfloat16())
        plain = copy.deepcopy(model).bfloat16()(x.bfloat16())
        y64 = fused_resnet.convert(model, backend="reference").double()(x.double())
    assert_within_2x(y, plain, y64, "block output")
