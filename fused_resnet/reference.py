"""Pure-PyTorch implementations of every fused_resnet op.

These are the numerical oracle for the other backends and the path that runs on
the CPU. Each function computes exactly what the op's contract in ``ops.py``
says, in the same dtypes the kernels use: activations and weights in the
activation dtype, per-channel vectors (bias, scale, shift, statistics) in fp32.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ._layout import acc, acc_dtype, empty_vec, like_layout

_CHANNEL_DIMS = (0, 2, 3)


def _per_channel(v: Tensor) -> Tensor:
    return v.view(1, -1, 1, 1)


def prologue(x: Tensor, in_scale: Optional[Tensor], in_shift: Optional[Tensor]) -> Tensor:
    """relu(x * in_scale + in_shift) per input channel, in x's dtype (identity if no scale)."""
    if in_scale is None:
        return x
    u = acc(x) * _per_channel(in_scale) + _per_channel(in_shift)
    return torch.relu(u).to(x.dtype)


def relu_grad(g: Tensor, v: Tensor) -> Tensor:
    """g through a ReLU whose input (or output) is v, by torch's rule: zero where v <= 0, g
    elsewhere, a NaN v included (g * (v > 0) would also turn a NaN g into NaN where v <= 0)."""
    return torch.where(v <= 0, 0.0, g)


def _stats(y: Tensor) -> tuple[Tensor, Tensor]:
    if y.numel() == 0:  # 0/0, as the other backends return it, without var_mean's warning
        nan = torch.full((y.shape[1],), float("nan"), dtype=acc_dtype(y), device=y.device)
        return nan, nan.clone()
    var, mean = torch.var_mean(acc(y), dim=_CHANNEL_DIMS, unbiased=False)
    return mean, var


def conv(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], in_scale: Optional[Tensor],
    in_shift: Optional[Tensor], residual: Optional[Tensor], stride: Sequence[int],
    padding: Sequence[int], dilation: Sequence[int], groups: int, relu: bool, stats: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    # Zero padding is applied by conv2d to the already transformed operand, so
    # padded taps are zeros of the normalised activation, as the contract says.
    a = prologue(x, in_scale, in_shift)
    z = acc(torch.nn.functional.conv2d(a, weight, None, stride, padding, dilation, groups))
    if bias is not None:
        z = z + _per_channel(bias)
    if residual is not None:
        z = z + acc(residual)
    if relu:
        z = torch.relu(z)
    y = like_layout(z.to(x.dtype), x)
    if not stats:
        return y, empty_vec(x), empty_vec(x)
    mean, var = _stats(y)
    return y, mean, var


def shortcut(
    sc_x: Tensor, sc_weight: Optional[Tensor], sc_in_scale: Optional[Tensor],
    sc_in_shift: Optional[Tensor], sc_stride: int, out_channels: int,
) -> Tensor:
    """The shortcut branch of ``conv_shortcut``, in the accumulation dtype.

    With ``sc_weight``: a 1x1 convolution of stride ``sc_stride`` over
    relu(sc_x*sc_in_scale + sc_in_shift) (the prologue only if given). Without:
    option A, sc_x subsampled by ``sc_stride`` with its channels zero-padded to
    ``out_channels``, (out - in)//2 in front.
    """
    a = prologue(sc_x, sc_in_scale, sc_in_shift)
    if sc_weight is not None:
        return acc(torch.nn.functional.conv2d(a, sc_weight, None, sc_stride))
    a = acc(a[:, :, ::sc_stride, ::sc_stride])
    extra = out_channels - a.shape[1]
    return torch.nn.functional.pad(a, (0, 0, 0, 0, extra // 2, extra - extra // 2))


def conv_shortcut(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], in_scale: Optional[Tensor],
    in_shift: Optional[Tensor], sc_x: Tensor, sc_weight: Optional[Tensor],
    sc_in_scale: Optional[Tensor], sc_in_shift: Optional[Tensor], sc_stride: int,
    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int, relu: bool,
) -> Tensor:
    a = prologue(x, in_scale, in_shift)
    z = acc(torch.nn.functional.conv2d(a, weight, None, stride, padding, dilation, groups))
    z = z + shortcut(sc_x, sc_weight, sc_in_scale, sc_in_shift, sc_stride, weight.shape[0])
    if bias is not None:
        z = z + _per_channel(bias)
    if relu:
        z = torch.relu(z)
    return like_layout(z.to(x.dtype), x)


def conv_backward(
    dy: Tensor, dmean: Tensor, dvar: Tensor, x: Tensor, weight: Tensor, y: Tensor,
    mean: Tensor, in_scale: Optional[Tensor], in_shift: Optional[Tensor],
    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int,
    relu: bool, stats: bool, output_mask: Sequence[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``conv`` w.r.t. (x, weight, bias, in_scale, in_shift, residual).

    Entries whose output_mask is False come back as empty tensors.
    """
    g = conv_output_grad(dy, dmean, dvar, y, mean, relu, stats)
    return conv_backward_from_output_grad(
        g, x, weight, in_scale, in_shift, stride, padding, dilation, groups, output_mask
    )


def conv_output_grad(
    dy: Tensor, dmean: Tensor, dvar: Tensor, y: Tensor, mean: Tensor, relu: bool, stats: bool,
) -> Tensor:
    """g_z, the gradient of ``conv``'s pre-ReLU sum z, in the accumulation dtype.

    Derivation, with M = N*Ho*Wo rows per channel:
      mean = sum(y)/M            -> d mean / d y_i = 1/M
      var  = sum((y-mean)^2)/M   -> d var / d y_i = 2 (y_i - mean)/M (the mean term sums to 0)
      so g_y = dy + dmean/M + dvar * 2 (y - mean)/M.
      y = relu(z)                -> g_z = g_y * (y > 0)
    """
    g = acc(dy)
    if stats and y.numel():  # an empty batch has no rows to take the statistics' gradient
        m = y.numel() // y.shape[1]
        g = g + _per_channel(dmean) / m + _per_channel(dvar) * (2.0 / m) * (acc(y) - _per_channel(mean))
    if relu:
        g = relu_grad(g, y)
    return g


def conv_backward_from_output_grad(
    g: Tensor, x: Tensor, weight: Tensor, in_scale: Optional[Tensor], in_shift: Optional[Tensor],
    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int,
    output_mask: Sequence[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``conv_backward`` from g_z (``conv_output_grad``).

      z = conv(a, W) + bias + residual -> d residual = g_z, d bias = sum g_z,
                                          da, dW from the convolution's own backward.
      a = relu(u), u = x*s + t    -> g_u = da * (u > 0); dx = g_u * s,
                                     ds = sum(g_u * x), dt = sum(g_u).
    """
    need_x, need_w, need_bias, need_scale, need_shift, need_res = output_mask
    # The data gradient needs only the operand's shape: x stands in for a then.
    a = prologue(x, in_scale, in_shift) if need_w else x
    da, dw, _ = torch.ops.aten.convolution_backward(
        g.to(x.dtype), a, weight, None, stride, padding, dilation, False, [0, 0], groups,
        [need_x or need_scale or need_shift, need_w, False],
    )
    dbias = g.sum(_CHANNEL_DIMS) if need_bias else empty_vec(x)
    dres = like_layout(g.to(x.dtype, copy=True), x) if need_res else empty_vec(x)
    dx, dscale, dshift = empty_vec(x), empty_vec(x), empty_vec(x)
    if in_scale is None:
        dx = like_layout(da, x) if need_x else empty_vec(x)
    elif need_x or need_scale or need_shift:
        gu = relu_grad(acc(da), acc(x) * _per_channel(in_scale) + _per_channel(in_shift))
        dx = like_layout((gu * _per_channel(in_scale)).to(x.dtype), x) if need_x else empty_vec(x)
        dscale = (gu * acc(x)).sum(_CHANNEL_DIMS) if need_scale else empty_vec(x)
        dshift = gu.sum(_CHANNEL_DIMS) if need_shift else empty_vec(x)
    return dx, (dw.contiguous() if need_w else empty_vec(x)), dbias, dscale, dshift, dres


def batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    return _stats(x)


def batch_stats_backward(dmean: Tensor, dvar: Tensor, x: Tensor, mean: Tensor) -> Tensor:
    """mean = sum(x)/M, var = sum((x - mean)^2)/M  =>  dx = (dmean + 2 dvar (x - mean)) / M."""
    m = x.numel() // x.shape[1]
    dx = (_per_channel(dmean) + 2.0 * _per_channel(dvar) * (acc(x) - _per_channel(mean))) / m
    return like_layout(dx.to(x.dtype), x)


def bn_finalize(
    mean: Tensor, var: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    invstd = torch.rsqrt(var + eps)
    scale = invstd * acc(weight) if weight is not None else invstd.clone()
    shift = -mean * scale
    if bias is not None:
        shift = shift + acc(bias)
    return scale, shift, invstd


def bn_finalize_backward(
    dscale: Tensor, dshift: Tensor, dinvstd: Optional[Tensor], mean: Tensor, weight: Optional[Tensor],
    scale: Tensor, invstd: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``bn_finalize`` w.r.t. (mean, var, weight); dweight is empty without a weight.

    r = (var+eps)^-1/2, scale = gamma*r (or r), shift = beta - mean*scale:
      d scale_total = dscale - dshift*mean
      dgamma = d scale_total * r;  dr = d scale_total * gamma (or d scale_total) + dinvstd
      dmean = -dshift*scale;  dvar = dr * (-1/2) r^3;  (dbeta = dshift)
    """
    dst = dscale - dshift * mean
    dr = dst * acc(weight) if weight is not None else dst
    if dinvstd is not None:
        dr = dr + dinvstd
    dweight = dst * invstd if weight is not None else empty_vec(mean)
    return -dshift * scale, dr * (-0.5) * invstd**3, dweight


def bn_update_running(
    mean: Tensor, var: Tensor, count: int, running_mean: Tensor, running_var: Tensor,
    num_batches_tracked: Optional[Tensor], momentum: Optional[float],
) -> None:
    # nn.BatchNorm2d: num_batches_tracked += 1; factor = momentum, or 1/num_batches_tracked
    # (a cumulative average) when momentum is None, or 0 when it keeps no count either;
    # running_var takes the unbiased variance.
    if num_batches_tracked is not None:
        num_batches_tracked.add_(1)
    if momentum is not None:
        factor = torch.tensor(momentum, dtype=torch.float64)
    elif num_batches_tracked is not None:
        factor = 1.0 / num_batches_tracked.to(torch.float64)
    else:
        factor = torch.tensor(0.0, dtype=torch.float64)
    unbiased = var * (count / (count - 1))
    running_mean.copy_((running_mean * (1 - factor) + mean * factor).to(running_mean.dtype))
    running_var.copy_((running_var * (1 - factor) + unbiased * factor).to(running_var.dtype))


def bn_act(
    y: Tensor, scale: Tensor, shift: Tensor, residual: Optional[Tensor],
    res_scale: Optional[Tensor], res_shift: Optional[Tensor], relu: bool,
) -> Tensor:
    z = acc(y) * _per_channel(scale) + _per_channel(shift)
    if residual is not None:
        r = acc(residual)
        if res_scale is not None:
            r = r * _per_channel(res_scale) + _per_channel(res_shift)
        z = z + r
    if relu:
        z = torch.relu(z)
    return like_layout(z.to(y.dtype), y)


def bn_act_backward(
    dout: Tensor, out: Tensor, y: Tensor, scale: Tensor, residual: Optional[Tensor],
    res_scale: Optional[Tensor], relu: bool, output_mask: Sequence[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``bn_act`` w.r.t. (y, scale, shift, residual, res_scale, res_shift).

    out = relu(z), z = y*scale + shift + r, r = residual*res_scale + res_shift:
      g = dout * (out > 0);  dy = g*scale, dscale = sum(g*y), dshift = sum(g),
      dresidual = g*res_scale (or g), dres_scale = sum(g*residual), dres_shift = sum(g).
    """
    g = acc(dout)
    if relu:
        g = relu_grad(g, out)
    need_y, need_scale, need_shift, need_res, need_rscale, need_rshift = output_mask
    dy = like_layout((g * _per_channel(scale)).to(y.dtype), y) if need_y else empty_vec(y)
    dscale = (g * acc(y)).sum(_CHANNEL_DIMS) if need_scale else empty_vec(y)
    gsum = g.sum(_CHANNEL_DIMS) if (need_shift or need_rshift) else empty_vec(y)
    dres, drscale = empty_vec(y), empty_vec(y)
    if need_res:
        gr = g * _per_channel(res_scale) if res_scale is not None else g
        dres = like_layout(gr.to(residual.dtype, copy=True), residual)
    if need_rscale:
        drscale = (g * acc(residual)).sum(_CHANNEL_DIMS)
    return (
        dy, dscale, gsum.clone() if need_shift else empty_vec(y), dres, drscale,
        gsum.clone() if need_rshift else empty_vec(y),
    )
