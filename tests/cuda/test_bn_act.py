"""fused_resnet_cuda::bn_act and ::bn_act_backward (kernels: csrc/bn_act.cu,
csrc/bn_act_backward.cu; host launchers: csrc/ops/bn_act.cpp), on a GPU: against
fused_resnet.reference in fp32/fp16/bf16, NHWC and NCHW, every residual mode and
output_mask, misaligned and strided inputs, determinism.
"""
from __future__ import annotations

import pytest
import torch

from fused_resnet import reference
from helpers import max_err

from .common import DEV, DTYPES, SHAPES, _act, _close_act, _vec


RES_MODES = ["none", "plain", "affine", "other_layout"]


def _bn_act_inputs(shape, dtype, cl, res_mode, seed=0):
    c = shape[1]
    y = _act(shape, dtype, cl, seed=seed)
    scale, shift = _vec(c, seed + 1), torch.randn(c, device=DEV) * 0.5
    res = rs = rb = None
    if res_mode != "none":
        res = _act(shape, dtype, cl if res_mode != "other_layout" else not cl, seed=seed + 2)
    if res_mode == "affine":
        rs, rb = _vec(c, seed + 3), torch.randn(c, device=DEV) * 0.5
    return y, scale, shift, res, rs, rb


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("res_mode", RES_MODES)
@pytest.mark.parametrize("relu", [True, False])
def test_bn_act(ns, dtype, cl, shape, res_mode, relu):
    args = _bn_act_inputs(shape, dtype, cl, res_mode)
    out = ns.bn_act(*args, relu)
    ref = reference.bn_act(*args, relu)
    _close_act(out, ref, "out")


@pytest.mark.gpu
def test_bn_act_misaligned_and_strided(ns):
    c = 64
    base = torch.randn(1 + 2 * c * 6 * 6, device=DEV, dtype=torch.float16)
    y = base[1:].view(2, c, 6, 6)  # 2-byte offset: not 16-byte aligned
    scale, shift = _vec(c), torch.randn(c, device=DEV)
    _close_act(ns.bn_act(y, scale, shift, None, None, None, True), reference.bn_act(y, scale, shift, None, None, None, True), "out")
    t = _act((2, 6, 6, c), torch.float16, False).permute(0, 3, 1, 2)  # channels_last view
    r = _act((2, c, 6, 6), torch.float16, False)
    _close_act(ns.bn_act(t, scale, shift, r, None, None, False), reference.bn_act(t, scale, shift, r, None, None, False), "out")


MASKS = [
    [True] * 6,
    [True, False, False, False, False, False],
    [False, True, True, False, False, False],
    [True, True, True, True, False, False],
    [False, False, False, True, True, True],
    [False, False, True, False, False, True],
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES[:3] + [(16, 64, 28, 28)], ids=str)
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: "".join("1" if b else "0" for b in m))
@pytest.mark.parametrize("relu", [True, False])
def test_bn_act_backward(ns, dtype, cl, shape, mask, relu):
    needs_res = mask[3] or mask[4] or mask[5]
    y, scale, shift, res, rs, rb = _bn_act_inputs(shape, dtype, cl, "affine" if needs_res else "none")
    out = reference.bn_act(y, scale, shift, res, rs, rb, relu)
    dout = _act(shape, dtype, cl, seed=7)
    got = ns.bn_act_backward(dout, out, y, scale, res, rs, relu, mask)
    want = reference.bn_act_backward(dout, out, y, scale, res, rs, relu, mask)
    # fp64 reference of the sums, for the low-precision rule
    g64 = dout.double() * (out > 0) if relu else dout.double()
    sums64 = {1: (g64 * y.double()).sum((0, 2, 3)), 2: g64.sum((0, 2, 3)), 5: g64.sum((0, 2, 3))}
    if res is not None:
        sums64[4] = (g64 * res.double()).sum((0, 2, 3))
    names = ("dy", "dscale", "dshift", "dresidual", "dres_scale", "dres_shift")
    for i, (g, w, name) in enumerate(zip(got, want, names)):
        if not mask[i]:
            assert g.numel() == 0 and g.dtype == torch.float32, f"{name}: not asked for, got {g.shape} {g.dtype}"
            continue
        if i in (0, 3):
            _close_act(g, w, name)
        else:
            assert g.dtype == torch.float32 and g.shape == (shape[1],), name
            bound = 2 * max_err(w, sums64[i]) + 1e-5 * (1 + sums64[i].abs().max().item())
            assert max_err(g, sums64[i]) <= bound, f"{name}: {max_err(g, sums64[i]):.3g} > {bound:.3g}"
    if mask[2] and mask[5]:
        assert got[2].data_ptr() != got[5].data_ptr(), "dshift and dres_shift must not alias"
    again = ns.bn_act_backward(dout, out, y, scale, res, rs, relu, mask)
    for a, b in zip(got, again):
        assert torch.equal(a, b), "not deterministic"


@pytest.mark.gpu
def test_bn_act_backward_residual_layouts(ns):
    """dresidual takes residual's layout, dy takes y's."""
    y, scale, shift, _, rs, rb = _bn_act_inputs((2, 64, 6, 6), torch.bfloat16, True, "affine")
    res = _act((2, 64, 6, 6), torch.bfloat16, False, seed=3)
    out = reference.bn_act(y, scale, shift, res, rs, rb, True)
    dout = _act((2, 64, 6, 6), torch.bfloat16, False, seed=4)
    got = ns.bn_act_backward(dout, out, y, scale, res, rs, True, [True] * 6)
    want = reference.bn_act_backward(dout, out, y, scale, res, rs, True, [True] * 6)
    _close_act(got[0], want[0], "dy")
    _close_act(got[3], want[3], "dresidual")
