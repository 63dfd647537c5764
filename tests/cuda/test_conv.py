"""fused_resnet_cuda::conv on CUTLASS (csrc/cutlass/; host launcher: csrc/ops/conv.cpp):
BatchNorm-apply + ReLU fused into the mainloop (in_scale/in_shift), bias + residual +
ReLU fused into the epilogue (eval-mode blocks with BatchNorm folded), batch statistics
in the epilogue; and what the three CUTLASS convolutions (conv, conv_wgrad, conv_dgrad)
share: their operands' alignment, empty batches, fixed-order reductions, CUDA graphs.

CPU part: which inputs the kernels take and, for the others, the reason given
(``_C.conv_reason``), and the backend asking it.

GPU part (@pytest.mark.gpu): both fprop kinds against an fp64 reference in
float16/bfloat16 with the tolerance rule (1x1, 3x3, stride 2, dilation, odd sizes,
both tile shapes, residual, statistics), padding taken after the transform, bitwise
repeatability, CUDA-graph capture, the backend's cuDNN path, and the errors for
inputs the kernels do not take.
"""
from __future__ import annotations

import pytest
import torch

from fused_resnet import reference
from fused_resnet.backends import cuda as cuda_backend
from helpers import assert_within_2x, randn

from .common import CASES, DEV, LOWP, _assert_stats_of, _cl, _inputs, _Recorder, _ref_conv, _residual


# ====================================================================== CPU


def _conv_reason(C, *, n=2, c=64, h=8, w=8, k=64, r=3, dtype=torch.bfloat16, wdtype=None, cl=True, groups=1,
                 bias=False, prologue=True, residual=None, relu=False, stats=False, stride=1, padding=1, dilation=1):
    x = torch.zeros(n, c, h, w, dtype=dtype)
    x = _cl(x) if cl else x
    weight = torch.zeros(k, c // groups, r, r, dtype=wdtype or dtype)
    return C.conv_reason(x, weight, torch.zeros(k) if bias else None, torch.ones(c) if prologue else None, residual,
                         [stride] * 2, [padding] * 2, [dilation] * 2, groups, relu, stats)


_RES = _cl(torch.zeros(2, 64, 8, 8, dtype=torch.bfloat16))


REASONS = [
    (dict(prologue=False), "nothing to fuse (no prologue, bias, ReLU, residual or statistics)"),
    (dict(relu=True, residual=_RES), "a ReLU after the residual is fused only with a bias and no prologue"),
    (dict(relu=True, bias=True, residual=_RES), "a ReLU after the residual is fused only with a bias and no"),
    (dict(prologue=False, relu=True, residual=_RES), "a ReLU after the residual is fused only with a bias"),
    (dict(dtype=torch.float32), "x has dtype Float; the CUTLASS kernels run float16/bfloat16"),
    (dict(wdtype=torch.float32), "weight has dtype Float, x has BFloat16"),
    (dict(groups=2), "groups=2: grouped convolutions are not instantiated"),
    (dict(c=60), "channels in=60, out=64: both must be multiples of 8"),
    (dict(k=12), "channels in=64, out=12: both must be multiples of 8"),
    (dict(cl=False), "x is not a 16-byte aligned channels_last"),
    (dict(residual=torch.zeros(2, 64, 8, 8, dtype=torch.bfloat16)), "the residual is not a 16-byte aligned channels_last"),
    (dict(), "x is on cpu, not a CUDA device"),
    (dict(prologue=False, bias=True, relu=True), "x is on cpu, not a CUDA device"),
    (dict(prologue=False, stats=True), "x is on cpu, not a CUDA device"),
    (dict(stats=True), "x is on cpu, not a CUDA device"),
    # served by the epilogue's bias/ReLU in registers (the device aside)
    (dict(bias=True, relu=True, stats=True), "x is on cpu, not a CUDA device"),
    (dict(bias=True, residual=_RES), "x is on cpu, not a CUDA device"),
    (dict(prologue=False, bias=True), "x is on cpu, not a CUDA device"),
    (dict(prologue=False, relu=True, stats=True), "x is on cpu, not a CUDA device"),
    (dict(prologue=False, residual=_RES), "x is on cpu, not a CUDA device"),
    (dict(prologue=False, residual=_RES, stats=True), "x is on cpu, not a CUDA device"),
    (dict(dtype=torch.float16, residual=_cl(torch.zeros(2, 64, 8, 8, dtype=torch.float16))), "x is on cpu"),
    # Geometry torch.conv2d refuses is named, never divided by (stride 0) or rounded toward zero.
    (dict(stride=0), "strides and dilations must be positive, paddings non-negative"),
    (dict(dilation=0), "strides and dilations must be positive, paddings non-negative"),
    (dict(padding=-1), "strides and dilations must be positive, paddings non-negative"),
    (dict(h=2, w=2, padding=0), "the padded input (2 pixels) is smaller than the dilated kernel (3)"),
    (dict(h=2, w=2, padding=0, stride=2), "the padded input (2 pixels) is smaller than the dilated kernel (3)"),
    (dict(h=4, w=4, padding=0, dilation=2), "the padded input (4 pixels) is smaller than the dilated kernel (5)"),
    # An empty batch reads nothing: served in either layout (PyTorch calls it contiguous).
    (dict(n=0), "x is on cpu, not a CUDA device"),
    (dict(n=0, cl=False), "x is on cpu, not a CUDA device"),
]


@pytest.mark.parametrize("kwargs,reason", REASONS, ids=[g[1][:40] for g in REASONS])
def test_conv_reason_says_why(C, kwargs, reason):
    """Each unsupported input is named; an input the kernels take fails only on the CPU device."""
    assert reason in _conv_reason(C, **kwargs)


def test_backend_falls_back_with_reason_on_cpu(C):
    """The backend asks conv_reason before every convolution; on CPU tensors the answer is never ''."""
    x = _cl(torch.zeros(2, 64, 8, 8, dtype=torch.bfloat16))
    w = torch.zeros(64, 64, 3, 3, dtype=torch.bfloat16)
    for stats in (False, True):
        assert cuda_backend.conv_reason(x, w, None, torch.ones(64), None, (1, 1), (1, 1), (1, 1), 1, False,
                                        stats) == "x is on cpu, not a CUDA device"


def test_statistics_convolution_is_one_cutlass_call(C, monkeypatch):
    """With statistics and a prologue, the convolution is one CUTLASS call: the prologue in the
    mainloop (fp32 scale/shift), the statistics in the epilogue; no bn_act pass, no cuDNN, no
    batch-statistics pass."""
    x = _cl(torch.ones(2, 64, 8, 8, dtype=torch.bfloat16))
    w = torch.zeros(64, 64, 3, 3, dtype=torch.bfloat16)
    rec = _Recorder()
    monkeypatch.setattr(cuda_backend, "ops", lambda: rec)
    asked = []
    monkeypatch.setattr(cuda_backend, "conv_reason", lambda *a: asked.append(a) or "")
    scale, shift = torch.ones(64), torch.zeros(64)
    cuda_backend.CudaBackend().conv(x, w, None, scale, shift, None, (1, 1), (1, 1), (1, 1), 1, False, True)
    assert [name for name, _ in rec.calls] == ["conv"]
    conv_args = rec.calls[0][1]
    assert conv_args[3] is scale and conv_args[4] is shift and conv_args[-1] is True
    assert asked[0][3] is scale and asked[0][-1] is True


# ====================================================================== GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_conv_prologue(C, case, dtype, residual):
    x, weight, scale, shift, stride, pad, dil = _inputs(case, dtype)
    assert C.conv_reason(x, weight, None, scale, None, stride, pad, dil, 1, False, True) == ""
    res = _residual(x, weight, stride, pad, dil) if residual else None
    plain = _ref_conv(x, weight, scale, shift, res, stride, pad, dil)
    y, mean, var = cuda_backend.ops().conv(x, weight, None, scale, shift, res, stride, pad, dil, 1, False, True)
    ref64 = _ref_conv(x.double(), weight.double(), scale.double(), shift.double(),
                      None if res is None else res.double(), stride, pad, dil)
    assert y.is_contiguous(memory_format=torch.channels_last) and y.shape == plain.shape
    assert_within_2x(y, plain, ref64, "y")
    _assert_stats_of(y, mean, var)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", LOWP, ids=str)
def test_conv_prologue_reads_each_stage_before_it_is_refilled(C, dtype):
    """The mainloop transforms a stage's last k-group after the barrier that hands the stage
    back to the global->shared copies of a later tile: the fp32 scale/shift must be in
    registers by then, or some warps apply a later tile's channels (a moving error). Here
    every 16-channel group has its own scale and shift, far from the others', so a stale
    read fails the 2x rule, and twelve runs must agree bit for bit."""
    case = (8, 128, 28, 28, 128, 3, 1, 1, 1)  # 36 k-tiles: the 3x3 taps cycle through 4 channel tiles
    x, weight, _, _, stride, pad, dil = _inputs(case, dtype)
    group = torch.arange(128, device=DEV) // 16
    scale, shift = 0.4 + 0.3 * group.float(), 0.6 - 0.15 * group.float()
    ys = [cuda_backend.ops().conv(x, weight, None, scale, shift, None, stride, pad, dil, 1, False, False)[0]
          for _ in range(12)]
    for i, y in enumerate(ys[1:], 1):
        assert torch.equal(y, ys[0]), f"run {i} differs from run 0: a race on the scale/shift in shared memory"
    plain = _ref_conv(x, weight, scale, shift, None, stride, pad, dil)
    ref64 = _ref_conv(x.double(), weight.double(), scale.double(), shift.double(), None, stride, pad, dil)
    assert_within_2x(ys[0], plain, ref64, "y")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_conv_bias_relu(C, case, dtype, residual):
    x, weight, _, _, stride, pad, dil = _inputs(case, dtype)
    bias = (torch.randn(weight.shape[0], generator=torch.Generator().manual_seed(5)) * 0.5).to(DEV)
    assert C.conv_reason(x, weight, bias, None, None, stride, pad, dil, 1, True, False) == ""

    def run(x_, w_, b_, res_):
        return reference.conv(x_, w_, b_, None, None, res_, stride, pad, dil, 1, True, False)[0]

    res = _residual(x, weight, stride, pad, dil) if residual else None
    plain = run(x, weight, bias, res)
    ref64 = run(x.double(), weight.double(), bias.double(), None if res is None else res.double())
    y, _, _ = cuda_backend.ops().conv(x, weight, bias, None, None, res, stride, pad, dil, 1, True, False)
    assert y.is_contiguous(memory_format=torch.channels_last) and y.shape == plain.shape
    assert (y >= 0).all()
    assert_within_2x(y, plain, ref64, "y")


# (prologue, bias, relu, residual, stats): epilogues with the bias and the ReLU in registers
EPILOGUES = [
    (True, True, True, False, True),    # pre-activation eval: conv1 with bn2 folded, then ReLU
    (True, True, False, True, False),
    (True, False, True, False, False),
    (False, True, False, False, False),
    (False, False, True, False, True),
    (False, False, False, True, False),  # pre-activation eval: the last conv + the shortcut
    (False, True, False, True, True),    # statistics of y + residual: read back from y
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("combo", EPILOGUES, ids=lambda c: "-".join(
    n for n, on in zip(("prologue", "bias", "relu", "residual", "stats"), c) if on))
@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[4]], ids=str)
def test_conv_epilogue_bias_relu(C, case, combo, dtype):
    """Bias, ReLU and residual in the epilogue of the prologue and plain fprops (FpropEpilogue):
    y within the 2x rule, statistics those of the stored y."""
    pro, with_bias, relu, with_res, stats = combo
    x, weight, scale, shift, stride, pad, dil = _inputs(case, dtype)
    scale, shift = (scale, shift) if pro else (None, None)
    bias = (torch.randn(weight.shape[0], generator=torch.Generator().manual_seed(5)) * 0.5).to(DEV) if with_bias \
        else None
    res = _residual(x, weight, stride, pad, dil) if with_res else None
    assert C.conv_reason(x, weight, bias, scale, res, stride, pad, dil, 1, relu, stats) == ""

    def run(cast):
        t = [None if v is None else cast(v) for v in (x, weight, bias, scale, shift, res)]
        return reference.conv(*t, stride, pad, dil, 1, relu, False)[0]

    y, mean, var = cuda_backend.ops().conv(x, weight, bias, scale, shift, res, stride, pad, dil, 1, relu, stats)
    assert_within_2x(y, run(lambda v: v), run(torch.Tensor.double), "y")
    if relu:
        assert (y >= 0).all()
    if stats:
        _assert_stats_of(y, mean, var)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", LOWP, ids=str)
def test_mainloop_prologue_keeps_the_fp32_scale(C, dtype):
    """The mainloop reads scale and shift in fp32: a scale of 1 + 2^-9 + 2^-12 (off by 2^-12 in
    float16, 2^-9 in bfloat16) and a shift that 16 bits do not hold leave no per-channel bias in
    the output. Each channel's mean error against fp64 stays within 2x plain PyTorch's (which
    applies the BatchNorm in fp32); the same scale and shift rounded to 16 bits, as CUTLASS's stock
    fusion reads them, would miss that bound (checked here too, so the test can tell the two apart)."""
    x, weight, _, _, stride, pad, dil = _inputs((8, 64, 14, 14, 64, 3, 1, 1, 1), dtype)
    x = (x.float().abs() + 0.5).to(dtype)
    weight = (weight.float().abs() / 8).to(dtype)  # positive: the per-channel errors add up
    scale = torch.full((64,), 1 + 2.0 ** -9 + 2.0 ** -12, device=DEV)
    shift = torch.full((64,), 3 * 2.0 ** -12 + 0.1, device=DEV)

    def channel_mean_err(y, ref64):
        return (y.double() - ref64).mean(dim=(0, 2, 3)).abs().max().item()

    ref64 = _ref_conv(x.double(), weight.double(), scale.double(), shift.double(), None, stride, pad, dil)
    plain = _ref_conv(x, weight, scale, shift, None, stride, pad, dil)
    rounded = _ref_conv(x, weight, scale.to(dtype).float(), shift.to(dtype).float(), None, stride, pad, dil)
    y = cuda_backend.ops().conv(x, weight, None, scale, shift, None, stride, pad, dil, 1, False, False)[0]
    bound = 2 * channel_mean_err(plain, ref64) + 1e-6
    assert channel_mean_err(rounded, ref64) > bound, "the case does not separate fp32 from 16-bit scale/shift"
    assert channel_mean_err(y, ref64) <= bound


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("offset", [0.0, 40.0], ids=["centred", "offset"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_conv_statistics_in_epilogue(C, case, offset, dtype):
    """A plain convolution with statistics (fprop_stats): y within the 2x rule, and the
    statistics taken in the epilogue equal those of the stored y, also when the mean is
    far larger than the spread (each slab's M2 is taken about its own mean). Cases with
    more than 64 slabs of rows go through the two-level merge."""
    x, weight, _, _, stride, pad, dil = _inputs(case, dtype)
    x = (x.float().relu() + offset).to(dtype)  # offset: every output channel's mean moves far from 0
    weight = (weight.float().abs() * 0.2 + weight.float() if offset else weight.float()).to(dtype)
    assert C.conv_reason(x, weight, None, None, None, stride, pad, dil, 1, False, True) == ""
    y, mean, var = cuda_backend.ops().conv(x, weight, None, None, None, None, stride, pad, dil, 1, False, True)
    plain = _ref_conv(x, weight, None, None, None, stride, pad, dil)
    ref64 = _ref_conv(x.double(), weight.double(), None, None, None, stride, pad, dil)
    assert y.is_contiguous(memory_format=torch.channels_last) and y.shape == plain.shape
    assert_within_2x(y, plain, ref64, "y")
    _assert_stats_of(y, mean, var)


@pytest.mark.gpu
def test_prologue_vectors_may_be_unaligned_views(C):
    """Scale/shift that are views starting mid-allocation (not 16-byte aligned) give the same
    result as aligned copies: the mainloop copies them in 16-byte vectors."""
    x, weight, scale, shift, stride, pad, dil = _inputs(CASES[2], torch.bfloat16)
    ns = cuda_backend.ops()
    packed = torch.cat([torch.zeros(1, device=DEV), scale, shift])
    views = packed[1:65], packed[65:]
    assert views[0].data_ptr() % 16 != 0
    want = ns.conv(x, weight, None, scale, shift, None, stride, pad, dil, 1, False, True)
    got = ns.conv(x, weight, None, *views, None, stride, pad, dil, 1, False, True)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    g = _cl(randn(*want[0].shape, device=DEV, seed=3).to(torch.bfloat16))
    assert torch.equal(ns.conv_wgrad(g, x, weight, *views, stride, pad, dil),
                       ns.conv_wgrad(g, x, weight, scale, shift, stride, pad, dil))


def _offset_view(t: torch.Tensor, elements: int = 1) -> torch.Tensor:
    """t's values and layout in a view that starts ``elements`` past an allocation's start."""
    flat = torch.empty(t.numel() + elements, dtype=t.dtype, device=t.device)
    view = flat[elements:].as_strided(t.shape, t.stride())
    return view.copy_(t)


@pytest.mark.gpu
def test_bias_output_grad_and_weight_may_be_unaligned_views(C):
    """The bias of the broadcast epilogue (read 8 floats at a time), the output gradient of
    dgrad and wgrad and the filter (copied in 16-byte vectors) as views that start off
    alignment: the same results as aligned tensors, not a misaligned-address fault."""
    x, weight, scale, shift, stride, pad, dil = _inputs(CASES[2], torch.bfloat16)
    ns = cuda_backend.ops()
    bias = torch.rand(weight.shape[0], device=DEV)
    views = {"bias": _offset_view(bias), "weight": _offset_view(weight)}
    assert views["bias"].data_ptr() % 16 != 0 and views["weight"].data_ptr() % 16 != 0
    assert views["weight"].is_contiguous(memory_format=torch.channels_last)
    want = ns.conv(x, weight, bias, None, None, None, stride, pad, dil, 1, True, False)[0]
    got = ns.conv(x, views["weight"], views["bias"], None, None, None, stride, pad, dil, 1, True, False)[0]
    assert torch.equal(got, want)
    g = _cl(randn(*want.shape, device=DEV, seed=3).to(torch.bfloat16))
    g_view = _offset_view(g)
    assert g_view.data_ptr() % 16 != 0 and g_view.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(ns.conv_dgrad(g_view, x, views["weight"], scale, shift, stride, pad, dil),
                    ns.conv_dgrad(g, x, weight, scale, shift, stride, pad, dil)):
        assert torch.equal(a, b)
    assert torch.equal(ns.conv_wgrad(g_view, x, weight, scale, shift, stride, pad, dil),
                       ns.conv_wgrad(g, x, weight, scale, shift, stride, pad, dil))


@pytest.mark.gpu
def test_empty_batch_launches_nothing(C):
    """A batch of 0 images: an empty output, NaN statistics (as torch.var_mean of no rows), a data
    gradient whose scale/shift sums are zeros and a zero weight gradient, with no kernel launched
    on an empty problem."""
    x, weight, scale, shift, stride, pad, dil = _inputs(CASES[2], torch.bfloat16)
    x = x[:0]
    ns = cuda_backend.ops()
    y, mean, var = ns.conv(x, weight, None, scale, shift, None, stride, pad, dil, 1, False, True)
    assert y.shape == (0, 64, 15, 15) and mean.isnan().all() and var.isnan().all()
    dx, dscale, dshift = ns.conv_dgrad(y, x, weight, scale, shift, stride, pad, dil)
    assert dx.shape == x.shape and not dscale.any() and not dshift.any()
    dw = ns.conv_wgrad(y, x, weight, scale, shift, stride, pad, dil)
    assert dw.shape == weight.shape and dw.dtype == weight.dtype and not dw.any()
    torch.cuda.synchronize()


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["conv-statistics", "dgrad", "wgrad"])
def test_reductions_are_bitwise_repeatable(C, kernel):
    """The epilogue statistics and the dgrad's scale/shift sums are merged in a fixed order, the
    wgrad's serial split-K adds its slices in one: no run-to-run variation."""
    x, weight, scale, shift, stride, pad, dil = _inputs((8, 64, 28, 28, 64, 3, 1, 1, 1), torch.bfloat16)
    g = _cl(randn(8, 64, 28, 28, device=DEV, seed=3).to(torch.bfloat16))
    ns = cuda_backend.ops()
    run = {
        "conv-statistics": lambda: ns.conv(x, weight, None, None, None, None, stride, pad, dil, 1, False, True),
        "dgrad": lambda: ns.conv_dgrad(g, x, weight, scale, shift, stride, pad, dil),
        "wgrad": lambda: (ns.conv_wgrad(g, x, weight, scale, shift, stride, pad, dil),),
    }[kernel]
    first = run()
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(first, run()))


@pytest.mark.gpu
def test_cuda_graph_capture(C):
    """No host synchronisation and PyTorch-allocated workspaces: the kernels replay in a graph."""
    x, weight, scale, shift, stride, pad, dil = _inputs((4, 64, 14, 14, 64, 3, 1, 1, 1), torch.float16)
    g = _cl(randn(4, 64, 14, 14, device=DEV, seed=3).half())
    ns = cuda_backend.ops()
    expect_y = ns.conv(x, weight, None, scale, shift, None, stride, pad, dil, 1, False, True)[0]
    expect_dw = ns.conv_wgrad(g, x, weight, scale, shift, stride, pad, dil)
    expect_dx = ns.conv_dgrad(g, x, weight, scale, shift, stride, pad, dil)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as CUDA graphs require
        ns.conv(x, weight, None, scale, shift, None, stride, pad, dil, 1, False, True)
        ns.conv_wgrad(g, x, weight, scale, shift, stride, pad, dil)
        ns.conv_dgrad(g, x, weight, scale, shift, stride, pad, dil)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = ns.conv(x, weight, None, scale, shift, None, stride, pad, dil, 1, False, True)[0]
        dw = ns.conv_wgrad(g, x, weight, scale, shift, stride, pad, dil)
        dx = ns.conv_dgrad(g, x, weight, scale, shift, stride, pad, dil)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, expect_y) and torch.equal(dw, expect_dw)
    assert all(torch.equal(a, b) for a, b in zip(dx, expect_dx))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", LOWP + (torch.float32,), ids=str)
@pytest.mark.parametrize("what", ["groups-bias-res-relu", "groups-prologue", "nchw-bias-relu"])
def test_backend_cudnn_path(C, what, dtype):
    """Convolutions the CUTLASS kernels do not take (conv_reason says why): bn_act + cuDNN + bn_act, 2x rule."""
    groups = 4 if what.startswith("groups") else 1
    x, weight, scale, shift, stride, pad, dil = _inputs((2, 64, 15, 15, 64, 3, 1, 1, 1), dtype)
    weight = weight[:, : 64 // groups].contiguous()
    if what.startswith("nchw"):
        x = x.contiguous()
    pro = what.endswith("prologue")
    bias = None if pro else (torch.randn(64, generator=torch.Generator().manual_seed(5)) * 0.5).to(DEV)
    res = _residual(x, weight, stride, pad, dil) if "res" in what else None
    relu = "relu" in what
    if not pro:
        scale = shift = None
    assert C.conv_reason(x, weight, bias, scale, res, stride, pad, dil, groups, relu, True) != ""

    def run(fn, cast):
        t = [None if v is None else cast(v) for v in (x, weight, bias, scale, shift, res)]
        return fn(*t, stride, pad, dil, groups, relu, True)

    y, mean, var = run(cuda_backend.CudaBackend().conv, lambda v: v)
    plain = run(reference.conv, lambda v: v)[0]
    ref64 = run(reference.conv, torch.Tensor.double)[0]
    assert y.shape == plain.shape and y.stride() == plain.stride()
    assert_within_2x(y, plain, ref64, "y")
    _assert_stats_of(y, mean, var)


@pytest.mark.gpu
def test_unserved_inputs_raise(C):
    x, weight, scale, shift, stride, pad, dil = _inputs((2, 64, 8, 8, 64, 3, 1, 1, 1), torch.float16)
    ns = cuda_backend.ops()
    with pytest.raises(RuntimeError, match="not served: x has dtype Float"):
        ns.conv(x.float(), weight.float(), None, scale, shift, None, stride, pad, dil, 1, False, False)
    with pytest.raises(RuntimeError, match="not served: x is not a 16-byte aligned channels_last"):
        ns.conv(x.contiguous(), weight, None, scale, shift, None, stride, pad, dil, 1, False, False)
    with pytest.raises(RuntimeError, match="not served: stride \\[2, 2\\]: only unit-stride data gradients"):
        ns.conv_dgrad(x[:, :, ::2, ::2].contiguous(memory_format=torch.channels_last), x, weight, scale, shift,
                      [2, 2], pad, dil)
    with pytest.raises(RuntimeError, match="not served: nothing to fuse"):
        ns.conv(x, weight, None, None, None, None, stride, pad, dil, 1, False, False)
    with pytest.raises(RuntimeError, match=r"in_scale must have shape \[64\]"):
        ns.conv(x, weight, None, scale[:8], shift, None, stride, pad, dil, 1, False, False)
    with pytest.raises(RuntimeError, match=r"g must have the output's shape"):
        ns.conv_wgrad(x[:1], x, weight, scale, shift, stride, pad, dil)
