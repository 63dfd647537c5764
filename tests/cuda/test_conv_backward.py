"""The CUTLASS pieces of conv_backward: fused_resnet_cuda::conv_wgrad (BatchNorm-apply +
ReLU recomputed in the wgrad mainloop, csrc/cutlass/ and csrc/wgrad_reduce.cu) and
::conv_dgrad (the prologue's gradient, ReLU mask, scale and dscale/dshift sums, in the
epilogue of a unit-stride dgrad); host launchers: csrc/ops/conv_backward.cpp. And the
cuda backend's conv_backward that composes them.

CPU part: which inputs the dgrad takes and, for the others, the reason given
(``_C.conv_dgrad_reason``), and which pieces the backend calls for a prologue's backward.

GPU part (@pytest.mark.gpu): wgrad and dgrad against an fp64 reference in
float16/bfloat16 with the tolerance rule, and CudaBackend.conv_backward (partial
output masks, a conv + bias + ReLU) likewise.
"""
from __future__ import annotations

import pytest
import torch

from fused_resnet import reference
from fused_resnet.backends import cuda as cuda_backend
from helpers import assert_within_2x, randn

from .common import CASES, DEV, LOWP, _cl, _inputs, _Recorder, _ref_conv


# ====================================================================== CPU


DGRAD_REASONS = [
    (dict(dtype=torch.float32), "x has dtype Float; the CUTLASS kernels run float16/bfloat16"),
    (dict(groups=2), "groups=2: grouped convolutions are not instantiated"),
    (dict(c=60), "channels in=60, out=64: both must be multiples of 8"),
    (dict(cl=False), "x is not a 16-byte aligned channels_last"),
    # The device is asked last: on a CPU the stride is still named (tools.traffic.gpu_reason relies on it).
    (dict(stride=2), "stride [2, 2]: only unit-stride data gradients are instantiated"),
    (dict(stride=0), "strides and dilations must be positive, paddings non-negative"),
    (dict(n=0), "x is on cpu, not a CUDA device"),
    (dict(), "x is on cpu, not a CUDA device"),
]


@pytest.mark.parametrize("kwargs,reason", DGRAD_REASONS, ids=[g[1][:40] for g in DGRAD_REASONS])
def test_conv_dgrad_reason_says_why(C, kwargs, reason):
    n, c, k, groups = kwargs.get("n", 2), kwargs.get("c", 64), 64, kwargs.get("groups", 1)
    x = torch.zeros(n, c, 8, 8, dtype=kwargs.get("dtype", torch.bfloat16))
    x = _cl(x) if kwargs.get("cl", True) else x
    weight = torch.zeros(k, c // groups, 3, 3, dtype=x.dtype)
    stride = [kwargs.get("stride", 1)] * 2
    assert reason in cuda_backend.conv_dgrad_reason(x, weight, stride, (1, 1), (1, 1), groups)


def test_mainloop_prologue_is_asked_of_conv_reason(C, monkeypatch):
    """Whether the mainloop applies a prologue is conv_reason's answer for the prologue convolution
    (no bias, residual or ReLU), statistics or not; without a prologue there is none to apply."""
    x = _cl(torch.zeros(2, 64, 8, 8, dtype=torch.bfloat16))
    w = torch.zeros(64, 64, 3, 3, dtype=torch.bfloat16)
    geometry = ((1, 1), (1, 1), (1, 1), 1)
    asked = []
    monkeypatch.setattr(cuda_backend, "conv_reason", lambda *a: asked.append(a) or "")
    assert cuda_backend._mainloop_reason(x, w, None, *geometry) == "no prologue"
    assert asked == []
    assert cuda_backend._mainloop_reason(x, w, torch.ones(64), *geometry) == ""
    assert len(asked) == 1 and asked[0][2] is None and asked[0][4] is None and asked[0][-2:] == (False, False)
    monkeypatch.setattr(cuda_backend, "conv_reason", lambda *a: "x is on cpu")
    assert cuda_backend._mainloop_reason(x, w, torch.ones(64), *geometry) == "x is on cpu"


@pytest.mark.parametrize("need_w,mainloop", [(True, False), (True, True), (False, False)],
                         ids=["cudnn-dw", "cutlass-dw", "no-dw"])
def test_prologue_backward_takes_the_fused_dgrad(C, monkeypatch, need_w, mainloop):
    """Where conv_dgrad serves, the prologue's backward is that one call: no bn_act_backward, and
    the activation is recomputed (bn_act) only for a cuDNN weight gradient."""
    x = _cl(torch.ones(2, 64, 8, 8, dtype=torch.bfloat16))
    w = torch.zeros(64, 64, 3, 3, dtype=torch.bfloat16)
    g = _cl(torch.ones(2, 64, 8, 8, dtype=torch.bfloat16))
    rec = _Recorder()
    monkeypatch.setattr(cuda_backend, "ops", lambda: rec)
    monkeypatch.setattr(cuda_backend, "conv_dgrad_reason", lambda *a: "")
    monkeypatch.setattr(cuda_backend, "_mainloop_reason", lambda *a: "" if mainloop else "not served")
    monkeypatch.setenv("FUSED_RESNET_CHOOSE", "0")  # the fused kernels wherever served, untimed
    backend = cuda_backend.CudaBackend()
    mask = [True, need_w, False, True, True, False]
    dx, dw, dscale, dshift = backend._prologue_backward(g, x, w, torch.ones(64), torch.zeros(64),
                                                        ((1, 1), (1, 1), (1, 1), 1), mask)
    names = [name for name, _ in rec.calls]
    want = {(True, False): ["bn_act", "conv_dgrad"], (True, True): ["conv_wgrad", "conv_dgrad"],
            (False, False): ["conv_dgrad"]}[(need_w, mainloop)]
    assert names == want
    assert dx.shape == x.shape and dscale.shape == dshift.shape == (64,)
    assert (dw.shape == w.shape) if need_w else dw.numel() == 0


# ====================================================================== GPU


def _assert_vector_within_2x(got, plain, ref64, name):
    """A per-channel gradient (a sum over every row): max error against fp64 within 2x plain
    PyTorch's, plus 1e-3 of the largest magnitude (sums whose terms cancel)."""
    err = (got.double() - ref64).abs().max().item()
    bound = 2 * (plain.double() - ref64).abs().max().item() + 1e-3 * ref64.abs().max().item()
    assert err <= bound, (name, err, bound)


def _backward_three_ways(backend, tensors, *flags):
    """conv_backward(*tensors, *flags) of the backend, of the reference in the inputs' dtypes
    (plain PyTorch) and of the reference in fp64."""
    def run(fn, cast):
        return fn(*[None if t is None else cast(t) for t in tensors], *flags)

    return (run(backend.conv_backward, lambda t: t), run(reference.conv_backward, lambda t: t),
            run(reference.conv_backward, torch.Tensor.double))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_conv_wgrad_prologue(C, case, dtype):
    x, weight, scale, shift, stride, pad, dil = _inputs(case, dtype)
    y = _ref_conv(x, weight, scale, shift, None, stride, pad, dil)
    g = _cl(randn(*y.shape, device=DEV, seed=7).to(dtype))

    def wgrad(x_, g_, w_, s_, t_):
        a = reference.prologue(x_, s_, t_)
        return torch.ops.aten.convolution_backward(g_, a, w_, None, stride, pad, dil, False, [0, 0], 1,
                                                   [False, True, False])[1]

    plain = wgrad(x, g, weight, scale, shift)
    ref64 = wgrad(x.double(), g.double(), weight.double(), scale.double(), shift.double())
    dw = cuda_backend.ops().conv_wgrad(g, x, weight, scale, shift, stride, pad, dil)
    assert dw.shape == weight.shape and dw.dtype == weight.dtype and dw.is_contiguous()
    assert_within_2x(dw, plain.contiguous(), ref64, "dw")


DGRAD_CASES = [c for c in CASES if c[6] == 1] + [(4, 256, 14, 14, 64, 1, 1, 0, 1)]  # + wide: 256 input channels


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("case", DGRAD_CASES, ids=str)
def test_conv_dgrad_bn_relu(C, case, dtype):
    """dx, dscale, dshift of conv(relu(x*s + t), W) from the fused dgrad against an fp64
    reference, the 2x rule (dscale/dshift: max error, as for the other vectors)."""
    x, weight, scale, shift, stride, pad, dil = _inputs(case, dtype)
    assert cuda_backend.conv_dgrad_reason(x, weight, stride, pad, dil, 1) == ""
    y = _ref_conv(x, weight, scale, shift, None, stride, pad, dil)
    g = _cl(randn(*y.shape, device=DEV, seed=7).to(dtype))
    mask = [True, False, False, True, True, False]

    def grads(cast):
        return reference.conv_backward_from_output_grad(cast(g), cast(x), cast(weight), cast(scale), cast(shift),
                                                        stride, pad, dil, 1, mask)

    plain, ref64 = grads(lambda t: t), grads(torch.Tensor.double)
    dx, dscale, dshift = cuda_backend.ops().conv_dgrad(g, x, weight, scale, shift, stride, pad, dil)
    assert dx.shape == x.shape and dx.dtype == x.dtype and dx.is_contiguous(memory_format=torch.channels_last)
    assert_within_2x(dx, plain[0], ref64[0], "dx")
    _assert_vector_within_2x(dscale, plain[3], ref64[3], "dscale")
    _assert_vector_within_2x(dshift, plain[4], ref64[4], "dshift")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", LOWP + (torch.float32,), ids=str)
@pytest.mark.parametrize("pro", [True, False], ids=["prologue", "plain"])
@pytest.mark.parametrize("stats", [True, False], ids=["stats", "nostats"])
@pytest.mark.parametrize("case", [CASES[2], CASES[3], CASES[5]], ids=str)
def test_backend_conv_and_backward(C, case, stats, pro, dtype):
    """CudaBackend.conv/conv_backward vs fp64, the 2x rule: 16-bit convolutions on CUTLASS (fprop
    with the prologue in the mainloop and the statistics in the epilogue, mainloop wgrad, the
    fused dgrad at unit stride), fp32 on cuDNN between bn_act passes."""
    x, weight, scale, shift, stride, pad, dil = _inputs(case, dtype)
    if not pro:
        scale = shift = None
    backend = cuda_backend.CudaBackend()
    y, mean, var = backend.conv(x, weight, None, scale, shift, None, stride, pad, dil, 1, False, stats)
    dy = _cl(randn(*y.shape, device=DEV, seed=4).to(dtype))
    g = torch.Generator().manual_seed(8)
    dmean, dvar = [(torch.randn(y.shape[1], generator=g) * 0.1).to(DEV) for _ in range(2)]
    mask = [True, True, False, pro, pro, True]
    got, plain, ref64 = _backward_three_ways(backend, (dy, dmean, dvar, x, weight, y, mean, scale, shift),
                                             stride, pad, dil, 1, False, stats, mask)
    for name, i in (("dx", 0), ("dw", 1), ("dres", 5)):
        assert got[i].shape == plain[i].shape and got[i].dtype == plain[i].dtype, name
        assert_within_2x(got[i], plain[i].contiguous(), ref64[i], name)
    for name, i in (("dscale", 3), ("dshift", 4))[:2 if pro else 0]:
        _assert_vector_within_2x(got[i], plain[i], ref64[i], name)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("case", [CASES[2], CASES[3]], ids=str)
def test_backend_conv_backward_through_relu(C, case, dtype):
    """The backward of a conv + bias + ReLU (eval-mode block, parameters training) on the backend's
    own path: dx, dW, dbias, dresidual within the 2x rule."""
    x, weight, _, _, stride, pad, dil = _inputs(case, dtype)
    bias = (torch.randn(weight.shape[0], generator=torch.Generator().manual_seed(5)) * 0.5).to(DEV)
    backend = cuda_backend.CudaBackend()
    y, mean, _ = backend.conv(x, weight, bias, None, None, None, stride, pad, dil, 1, True, False)
    dy = _cl(randn(*y.shape, device=DEV, seed=4).to(dtype))
    mask = [True, True, True, False, False, True]
    got, plain, ref64 = _backward_three_ways(backend, (dy, None, None, x, weight, y, None, None, None),
                                             stride, pad, dil, 1, True, False, mask)
    for name, i in (("dx", 0), ("dw", 1), ("dres", 5)):
        assert_within_2x(got[i], plain[i].contiguous(), ref64[i], name)
    _assert_vector_within_2x(got[2], plain[2], ref64[2], "dbias")


@pytest.mark.gpu
@pytest.mark.parametrize("stats", [True, False], ids=["stats", "nostats"])
@pytest.mark.parametrize("mask", [[False, False, False, False, False, True], [False, True, False, False, False, False],
                                  [True, False, False, True, False, False]], ids=["dres", "dw", "dx-dscale"])
def test_backend_conv_backward_partial_masks(C, mask, stats):
    """A prologue convolution's backward asked for some gradients only: those come out right
    (the 2x rule), the others empty."""
    x, weight, scale, shift, stride, pad, dil = _inputs(CASES[2], torch.bfloat16)
    backend = cuda_backend.CudaBackend()
    y, mean, _ = backend.conv(x, weight, None, scale, shift, None, stride, pad, dil, 1, False, stats)
    dy = _cl(randn(*y.shape, device=DEV, seed=4).to(torch.bfloat16))
    dmean, dvar = [(torch.randn(y.shape[1], generator=torch.Generator().manual_seed(s)) * 0.1).to(DEV) for s in (8, 9)]
    got, plain, ref64 = _backward_three_ways(backend, (dy, dmean, dvar, x, weight, y, mean, scale, shift),
                                             stride, pad, dil, 1, False, stats, mask)
    for i, wanted in enumerate(mask):
        if not wanted:
            assert got[i].numel() == 0, i
        elif got[i].dim() == 4:
            assert_within_2x(got[i], plain[i].contiguous(), ref64[i], f"output {i}")
        else:
            _assert_vector_within_2x(got[i], plain[i], ref64[i], f"output {i}")
