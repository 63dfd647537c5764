"""Launchers of ``fused_resnet::bn_act`` and ``fused_resnet::bn_act_backward`` on the kernels of
``kernels/bn_act.py``; the backward's per-channel sums go through conv_backward's ordered sum."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ... import reference
from ..._layout import empty_vec, output_format
from . import _common
from .conv_backward import sum_partials


def bn_act(
    y: Tensor, scale: Tensor, shift: Tensor, residual: Optional[Tensor],
    res_scale: Optional[Tensor], res_shift: Optional[Tensor], relu: bool,
) -> Tensor:
    """out = [relu](y*scale + shift + residual*res_scale + res_shift) in y's layout (NHWC or NCHW)."""
    from ...kernels import bn_act as kernels

    _common.check_activation("y", y)
    device = y.device
    c = y.shape[1]
    scale, shift = _common.check_vec("scale", scale, c, device), _common.check_vec("shift", shift, c, device)
    if scale is None or shift is None:
        raise ValueError("triton bn_act: scale and shift are required")
    res_scale, res_shift = _common.check_pair("bn_act", ("res_scale", "res_shift"), res_scale, res_shift, c, device)
    if res_scale is not None and residual is None:
        raise ValueError("triton bn_act: res_scale/res_shift given without a residual")
    fmt = output_format(y)
    yk = y.contiguous(memory_format=fmt)
    if residual is not None:
        _common.check_activation("residual", residual)
        _common.check_device("residual", residual, device)
        if residual.dtype != y.dtype:
            raise TypeError(f"triton bn_act: residual has dtype {residual.dtype}, but y has {y.dtype}")
        if residual.shape != y.shape:
            raise ValueError(f"triton bn_act: residual must have y's shape {list(y.shape)}, got {list(residual.shape)}")
        rk = residual.contiguous(memory_format=fmt)
    out = torch.empty(y.shape, dtype=y.dtype, device=device, memory_format=fmt)
    if y.numel() == 0:
        return out
    on_cols, r_, l_, grid, br, bl = _common.elementwise_plan(y, fmt)
    with _common.on_device(device):
        kernels.bn_act_kernel[grid](
            yk, scale, shift, rk if residual is not None else yk,
            res_scale if res_scale is not None else scale, res_shift if res_shift is not None else shift,
            out, r_, l_, c,
            CHANNEL_ON_COLS=on_cols, HAS_RES=residual is not None, HAS_RSCALE=res_scale is not None,
            RELU=bool(relu), BLOCK_R=br, BLOCK_L=bl, num_warps=4,
        )
    return out


def _check_backward(dout: Tensor, out: Tensor, y: Tensor, scale: Tensor, residual: Optional[Tensor],
                    res_scale: Optional[Tensor], mask: tuple[bool, ...]) -> tuple[Tensor, Optional[Tensor]]:
    """bn_act_backward's operands checked against y; returns (scale, res_scale) as check_vec does."""
    _common.check_activation("y", y)
    device, dtype = y.device, y.dtype
    c = y.shape[1]
    for name, t in (("dout", dout), ("out", out)):
        _common.check_activation(name, t)
        _common.check_device(name, t, device)
        if t.dtype != dtype or t.shape != y.shape:
            raise ValueError(f"triton bn_act_backward: {name} must match y ({dtype}, {list(y.shape)}), got "
                             f"{t.dtype}, {list(t.shape)}")
    scale, res_scale = _common.check_vec("scale", scale, c, device), _common.check_vec("res_scale", res_scale, c,
                                                                                         device)
    _, _, _, need_res, need_rscale, need_rshift = mask
    if (need_res or need_rscale or need_rshift) and residual is None:
        raise ValueError("triton bn_act_backward: residual gradients asked for without a residual")
    if residual is not None:
        _common.check_activation("residual", residual)
        _common.check_device("residual", residual, device)
        if residual.dtype != dtype or residual.shape != y.shape:
            raise ValueError("triton bn_act_backward: residual must match y's dtype and shape")
    if need_rscale and res_scale is None:
        raise ValueError("triton bn_act_backward: res_scale gradient asked for without res_scale")
    return scale, res_scale


def _backward_grid(y: Tensor, on_cols: bool) -> tuple:
    """(R, L, T, grid, BLOCK_R, BLOCK_L) of bn_act_backward_kernel over y: NHWC in 2-D tiles (T
    partial rows, one per row tile), NCHW in rows summed whole (T = N)."""
    import triton

    n, c, h, w = y.shape
    r_, l_ = (n * h * w, c) if on_cols else (n * c, h * w)
    if not on_cols:
        bl = min(triton.next_power_of_2(l_), 32 if _common.interpreting() else 256)
        br = 4 if _common.interpreting() else 16
        return r_, l_, n, (triton.cdiv(r_, br), 1), br, bl
    if _common.interpreting():
        bl = min(triton.next_power_of_2(l_), 32)
        br = max(1, 128 // bl)
    else:
        bl = min(triton.next_power_of_2(l_), 128)
        br = max(1, 4096 // bl)
    t_ = triton.cdiv(r_, br)
    return r_, l_, t_, (t_, triton.cdiv(l_, bl)), br, bl


def bn_act_backward(
    dout: Tensor, out: Tensor, y: Tensor, scale: Tensor, residual: Optional[Tensor],
    res_scale: Optional[Tensor], relu: bool, output_mask: Sequence[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``fused_resnet::bn_act_backward`` on one elementwise kernel + an ordered per-channel reduce."""
    from ...kernels import bn_act as kernels

    mask = tuple(bool(b) for b in output_mask)
    scale, res_scale = _check_backward(dout, out, y, scale, residual, res_scale, mask)
    need_y, need_scale, need_shift, need_res, need_rscale, need_rshift = mask
    if y.numel() == 0:
        return reference.bn_act_backward(dout, out, y, scale, residual, res_scale, relu, output_mask)
    device, dtype, c = y.device, y.dtype, y.shape[1]
    fmt = output_format(y)
    dk = dout.contiguous(memory_format=fmt)
    ok = out.contiguous(memory_format=fmt) if relu else dk
    yk = y.contiguous(memory_format=fmt) if need_scale else dk
    rk = residual.contiguous(memory_format=fmt) if (need_rscale and residual is not None) else dk
    dy = torch.empty(y.shape, dtype=dtype, device=device, memory_format=fmt) if need_y else dk
    dres = torch.empty(y.shape, dtype=dtype, device=device, memory_format=fmt) if need_res else dk
    on_cols = fmt == torch.channels_last
    r_, l_, t_, grid, br, bl = _backward_grid(y, on_cols)
    need_sum = need_shift or need_rshift
    any_sum = need_scale or need_sum or need_rscale
    psum = torch.empty((3, t_, c), dtype=torch.float32, device=device) if any_sum else dk
    rs = res_scale if res_scale is not None else scale
    with _common.on_device(device):
        kernels.bn_act_backward_kernel[grid](
            dk, ok, yk, scale, rk, rs, dy, dres, psum, r_, l_, c, t_,
            CHANNEL_ON_COLS=on_cols, RELU=bool(relu), HAS_RSCALE=res_scale is not None,
            NEED_Y=need_y, NEED_SCALE=need_scale, NEED_SUM=need_sum, NEED_RES=need_res, NEED_RSCALE=need_rscale,
            BLOCK_R=br, BLOCK_L=bl, num_warps=4,
        )
        sums = sum_partials(psum) if any_sum else None
    if need_res:
        dres = dres.contiguous(memory_format=output_format(residual))
    return (
        dy if need_y else empty_vec(y),
        sums[0] if need_scale else empty_vec(y),
        sums[1] if need_shift else empty_vec(y),
        dres if need_res else empty_vec(y),
        sums[2] if need_rscale else empty_vec(y),
        (sums[1].clone() if need_shift else sums[1]) if need_rshift else empty_vec(y),  # no two returns alias
    )
