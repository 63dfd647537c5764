"""The cuda backend: the compiled ``fused_resnet._C`` kernels.

It runs the memory-bound BatchNorm pieces (batch statistics and their backward,
finalize and its backward, the running-statistics update, BN + residual + ReLU and
its backward)
with the CUDA kernels of ``csrc/``, registered as ``torch.ops.fused_resnet_cuda.<name>``.

Convolutions run on CUTLASS implicit GEMMs where they fuse something
(``fused_resnet_cuda::conv``): a BatchNorm-apply + ReLU prologue, applied in the
mainloop as the operand is loaded (the normalised activation is never stored;
``conv_wgrad`` recomputes it the same way for the weight gradient); bias, ReLU
and residual in the epilogue (eval-mode blocks, BN folded); the batch statistics
of the output in the epilogue (training), merged in a fixed order, so they are
deterministic. The unit-stride data gradient of a prologue convolution applies
the prologue's ReLU mask and scale in its epilogue (``conv_dgrad``). What those
kernels cannot take (``_C.conv_reason`` says why: fp32, groups, channel counts not
multiples of 8, NCHW tensors, nothing to fuse, ...) runs on cuDNN between bn_act
passes (``_cudnn_conv``), statistics from the batch-statistics kernel.
``conv_backward`` takes a few passes the same way.

Where a CUTLASS kernel can take a convolution, it is also timed against that
unfused path (cuDNN and the separate passes, the same contract) on the problem's
first call, and the faster runs from then on (``choice.py``; ``choice.choices()``
lists what was taken): a fused kernel never makes a step slower than the unfused
path it replaces. Which implementation served each problem, and why, is recorded
(``routing.py``: ``fused_resnet.backends.routes()``).

The mainloop applies the prologue with fp32 scale and shift in fp32 arithmetic,
rounded once, as eager PyTorch's BatchNorm does (csrc/cutlass/scale_bias_fp32.cuh).
CUTLASS's stock fusion reads them in the activation's 16-bit type, a per-channel
rounding that does not average out: on an H100 (2026-11-23) it put bf16
ResNet-50 and CIFAR ResNet-56 training outside the parity rule (running means
2.8x plain PyTorch's error after three steps, a BN-bias gradient 2.1x in fp16).

``_C`` is loaded lazily, at the first kernel call (``import fused_resnet`` never
loads it), and the fake (meta) implementations of its ops, those of the op list,
are registered then (``ops``).
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _ext, op_list, reference
from .._layout import acc, acc_dtype, empty_vec, output_format
from . import choice, routing
from .base import FLOAT_DTYPES, Backend

LIB = "fused_resnet_cuda"
# The ops of fused_resnet_cuda that mirror a fused_resnet:: op (same name and schema, minus
# backend), then the pieces of conv_backward that this backend composes itself.
OP_NAMES = tuple(name for name, op in op_list.OPS.items() if op.cuda)
EXTRA_OP_NAMES = tuple(op_list.CUDA_PIECES)

_ops_ns = None


def ops():
    """``torch.ops.fused_resnet_cuda``, loading ``fused_resnet._C`` and registering the fakes of
    its ops on first use.

    Raises ImportError with the reason when the extension is not built.
    """
    global _ops_ns
    if _ops_ns is None:
        _ext.load()
        for op in op_list.CUDA_OPS.values():
            torch.library.register_fake(f"{LIB}::{op.name}")(op.fake)
        _ops_ns = getattr(torch.ops, LIB)
    return _ops_ns


def conv_reason(x, weight, bias, in_scale, residual, stride, padding, dilation, groups, relu, stats) -> str:
    """Why ``fused_resnet_cuda::conv`` cannot take these inputs ('' when it can)."""
    return _ext.load().conv_reason(
        x, weight, bias, in_scale, residual, list(stride), list(padding), list(dilation), int(groups), bool(relu),
        bool(stats),
    )


def conv_dgrad_reason(x, weight, stride, padding, dilation, groups) -> str:
    """Why ``fused_resnet_cuda::conv_dgrad`` cannot take these inputs ('' when it can)."""
    return _ext.load().conv_dgrad_reason(x, weight, list(stride), list(padding), list(dilation), int(groups))


def _mainloop_reason(x, weight, in_scale, stride, padding, dilation, groups) -> str:
    """Why the CUTLASS mainloop cannot apply this prologue (conv_reason; the residual, bias and
    ReLU of the forward do not change the answer for a prologue convolution)."""
    if in_scale is None:
        return "no prologue"
    return conv_reason(x, weight, None, in_scale, None, stride, padding, dilation, groups, False, False)


def _conv_backward_reason(dy, x, relu, stats) -> str:
    """Why conv_backward runs the reference rather than composing the gradients ('' when it composes them)."""
    if relu and stats:
        return "ReLU and batch statistics together: the output gradient pass takes one or the other"
    if dy.dtype != x.dtype:
        return f"dy is {dy.dtype} where x is {x.dtype}: the passes take one dtype"
    return ""


def _activation(x, in_scale, in_shift):
    """The prologue's activation relu(x*s + t) as one bn_act pass, for cuDNN to read."""
    return ops().bn_act(x, in_scale, in_shift, None, None, None, True)


# (reason function, problem key) -> why no CUTLASS kernel serves the problem ('' when one does).
# Each reason function is asked once per problem: its answer depends only on what the key holds.
_REFUSALS: dict = {}


def _refusal(key: tuple, why) -> str:
    """Why no CUTLASS kernel serves problem ``key``: ``why`` = (reason function, *arguments),
    asked once per problem."""
    slot = (why[0], key)
    reason = _REFUSALS.get(slot)
    if reason is None:
        reason = _REFUSALS[slot] = why[0](*why[1:])
    return reason


# Each timed op's implementations, as routes() names them: the fused kernel, then the
# unfused path with the same contract.
_IMPLEMENTATIONS = {
    "conv": ("CUTLASS conv", "cuDNN conv + bn_act passes"),
    "conv_dgrad": ("CUTLASS dgrad, BN+ReLU gradient in its epilogue", "cuDNN dgrad + bn_act_backward"),
    "conv_wgrad": ("CUTLASS wgrad, BN+ReLU in its mainloop", "bn_act + cuDNN wgrad"),
}


def _takes_fused(key: tuple, device: torch.device, why, fused, unfused) -> bool:
    """Whether the fused kernel runs problem ``key``: one a CUTLASS kernel serves (``_refusal``)
    that beat its unfused twin when the problem was first timed (choice.py); the fused kernel
    where nothing is timed. The route taken is recorded."""
    fused_name, unfused_name = _IMPLEMENTATIONS[key[0]]
    refusal = _refusal(key, why)
    if refusal:
        routing.record("cuda", key, unfused_name, refusal)
        return False
    taken = choice.choose(key, {"fused": fused, "unfused": unfused}, "fused", device)
    routing.record("cuda", key, fused_name if taken == "fused" else unfused_name, choice.why(key))
    return taken == "fused"


class CudaBackend(Backend):
    name = "cuda"

    def not_supported_reasons(self, device: Optional[torch.device] = None,
                              dtype: Optional[torch.dtype] = None) -> list[str]:
        ok, reason = _ext.status()
        reasons = [] if ok else [reason]
        if not torch.cuda.is_available():
            reasons.append("no CUDA GPU is visible")
        if device is not None and device.type != "cuda":
            reasons.append(f"tensors are on {device.type}, not CUDA")
        if dtype is not None and dtype not in FLOAT_DTYPES:
            reasons.append(f"dtype {dtype} is not one of fp32/fp16/bf16")
        return reasons

    def conv(self, x, weight, bias, in_scale, in_shift, residual, stride, padding, dilation, groups, relu, stats):
        args = (x, weight, bias, in_scale, in_shift, residual, stride, padding, dilation, groups, relu, stats)
        why = (conv_reason, x, weight, bias, in_scale, residual, stride, padding, dilation, groups, relu, stats)
        key = routing.problem_key("conv", args)
        if _takes_fused(key, x.device, why, lambda: self._fused_conv(*args), lambda: self._unfused_conv(*args)):
            return self._fused_conv(*args)
        return self._unfused_conv(*args)

    @staticmethod
    def _fused_conv(x, weight, bias, in_scale, in_shift, residual, stride, padding, dilation, groups, relu, stats):
        return tuple(ops().conv(
            x, weight, bias, in_scale, in_shift, residual, list(stride), list(padding), list(dilation),
            int(groups), bool(relu), bool(stats),
        ))

    def _unfused_conv(self, x, weight, bias, in_scale, in_shift, residual, stride, padding, dilation, groups, relu,
                      stats):
        y = self._cudnn_conv(x, weight, bias, in_scale, in_shift, residual, stride, padding, dilation, groups, relu)
        return (y, *self.batch_stats(y)) if stats else (y, empty_vec(x), empty_vec(x))

    def _cudnn_conv(self, x, weight, bias, in_scale, in_shift, residual, stride, padding, dilation, groups, relu):
        """What the CUTLASS kernels do not take: the prologue as one bn_act pass, cuDNN's
        convolution, then bias + residual + ReLU as one bn_act pass. The convolution's
        output is rounded to x's dtype before the epilogue adds to it (the reference
        adds in fp32 first), as eager PyTorch's convolution followed by BatchNorm does."""
        if in_scale is not None:
            x = ops().bn_act(x, in_scale, in_shift, None, None, None, True)
        z = torch.nn.functional.conv2d(x, weight, None, stride, padding, dilation, groups)
        if bias is not None or residual is not None or relu:
            c = z.shape[1]
            ones = torch.ones(c, dtype=acc_dtype(z), device=z.device)
            shift = bias.to(ones.dtype) if bias is not None else torch.zeros_like(ones)
            z = ops().bn_act(z, ones, shift, residual, None, None, relu)
        return z.contiguous(memory_format=output_format(x))

    def conv_shortcut(self, x, weight, bias, in_scale, in_shift, sc_x, sc_weight, sc_in_scale, sc_in_shift,
                      sc_stride, stride, padding, dilation, groups, relu):
        # The shortcut branch (a 1x1 convolution on cuDNN, or option A) is stored once,
        # channels_last in x's dtype, and read as the residual of the fused epilogue.
        sc = reference.shortcut(sc_x, sc_weight, sc_in_scale, sc_in_shift, sc_stride, weight.shape[0])
        res = sc.to(x.dtype).contiguous(memory_format=torch.channels_last)
        args = (x, weight, bias, in_scale, res, stride, padding, dilation, groups, relu, False)
        key = routing.problem_key("conv_shortcut", args)
        refusal = _refusal(key, (conv_reason, *args))
        if refusal:
            routing.record("cuda", key, "reference conv, the shortcut added in fp32", refusal)
            return reference.conv(x, weight, bias, in_scale, in_shift, sc, stride, padding, dilation, groups, relu,
                                  False)[0]
        routing.record("cuda", key, "CUTLASS conv, the shortcut as its residual")
        return ops().conv(x, weight, bias, in_scale, in_shift, res, list(stride), list(padding), list(dilation),
                          int(groups), bool(relu), False)[0]

    def conv_backward(self, dy, dmean, dvar, x, weight, y, mean, in_scale, in_shift, stride, padding,
                      dilation, groups, relu, stats, output_mask):
        """The gradients in a few passes (reference.conv_backward derives them).

        g (the gradient at the convolution's output, BN-statistics terms included)
        is one bn_act pass. Without a prologue, cuDNN takes g to dx and dW; with
        one, ``_prologue_backward``.
        """
        refusal = _conv_backward_reason(dy, x, relu, stats)
        if refusal:
            key = routing.problem_key("conv_backward", (dy, x, weight, in_scale, stride, padding, dilation, groups,
                                                       relu, stats))
            routing.record("cuda", key, "reference conv_backward", refusal)
            return reference.conv_backward(
                dy, dmean, dvar, x, weight, y, mean, in_scale, in_shift, stride, padding, dilation,
                groups, relu, stats, output_mask,
            )
        need_x, need_w, need_bias, need_scale, need_shift, need_res = output_mask
        g = self._conv_output_grad(dy, dmean, dvar, y, mean, stats, relu, need_res)
        dbias = acc(g).sum((0, 2, 3)) if need_bias else empty_vec(x)
        dres = g if need_res else empty_vec(x)
        if in_scale is None:
            dx, dw = self._cudnn_backward(g, x, weight, stride, padding, dilation, groups, need_x, need_w)
            return dx, dw, dbias, empty_vec(x), empty_vec(x), dres
        geometry = (stride, padding, dilation, groups)
        dx, dw, dscale, dshift = self._prologue_backward(g, x, weight, in_scale, in_shift, geometry, output_mask)
        return dx, dw, dbias, dscale, dshift, dres

    def _prologue_backward(self, g, x, weight, in_scale, in_shift, geometry, output_mask):
        """dx, dW, dscale, dshift of conv(a, W), a = relu(x*s + t), for the output gradient g.

        dW: the activation is recomputed as the forward made it: in the CUTLASS
        mainloop when the forward ran there (the wgrad kernel), else as one bn_act
        pass that cuDNN reads (both in fp32, rounded once).

        dx, dscale, dshift: where the CUTLASS dgrad takes the convolution (unit
        stride, conv_dgrad_reason), its epilogue applies the ReLU mask (u = x*s + t > 0
        in fp32, as the reference) and the scale to da in registers and sums the
        gradients of s and t: da is never stored. Elsewhere cuDNN writes da and one
        bn_act_backward pass reads it, the mask taken from a rounded to x's dtype,
        as eager PyTorch's ReLU after a BatchNorm does (the two differ only where
        the rounding flushes a tiny positive to zero).

        Each fused kernel runs only where it beat that unfused twin when the problem
        was first timed (choice.py).
        """
        need_x, need_w, _, need_scale, need_shift, _ = output_mask
        da_mask = (need_x, need_scale, need_shift)
        need_da = any(da_mask)
        fused_da, fused_w = self._fused_gradients(g, x, weight, in_scale, in_shift, geometry, da_mask, need_w)
        # cuDNN's gradients read the activation
        a = _activation(x, in_scale, in_shift) if (need_da and not fused_da) or (need_w and not fused_w) else None
        dw = dx = dscale = dshift = empty_vec(x)
        if need_w:
            dw = (self._fused_wgrad(g, x, weight, in_scale, in_shift, geometry) if fused_w
                  else self._cudnn_backward(g, a, weight, *geometry, False, True)[1])
        if need_da:
            dx, dscale, dshift = (self._fused_dgrad(g, x, weight, in_scale, in_shift, geometry) if fused_da
                                  else self._unfused_dgrad(g, a, x, weight, in_scale, geometry, da_mask))
        return tuple(t if need else empty_vec(x) for t, need in
                     ((dx, need_x), (dw, need_w), (dscale, need_scale), (dshift, need_shift)))

    def _fused_gradients(self, g, x, weight, in_scale, in_shift, geometry, da_mask, need_w) -> tuple[bool, bool]:
        """Whether the CUTLASS dgrad takes the data gradients (``da_mask``: dx, dscale, dshift) and the
        CUTLASS wgrad the weight gradient of a prologue convolution, each only where asked for."""
        dgrad_key = routing.problem_key("conv_dgrad", (g, x, weight, in_scale, *geometry, da_mask))
        fused_da = any(da_mask) and _takes_fused(
            dgrad_key, x.device, (conv_dgrad_reason, x, weight, *geometry),
            lambda: self._fused_dgrad(g, x, weight, in_scale, in_shift, geometry),
            lambda: self._unfused_dgrad(g, _activation(x, in_scale, in_shift), x, weight, in_scale, geometry, da_mask))
        fused_w = need_w and _takes_fused(
            ("conv_wgrad", *dgrad_key[1:]), x.device, (_mainloop_reason, x, weight, in_scale, *geometry),
            lambda: self._fused_wgrad(g, x, weight, in_scale, in_shift, geometry),
            lambda: self._cudnn_backward(g, _activation(x, in_scale, in_shift), weight, *geometry, False, True))
        return fused_da, fused_w

    @staticmethod
    def _fused_wgrad(g, x, weight, in_scale, in_shift, geometry):
        stride, padding, dilation, _ = geometry
        return ops().conv_wgrad(g, x, weight, in_scale, in_shift, list(stride), list(padding), list(dilation))

    @staticmethod
    def _fused_dgrad(g, x, weight, in_scale, in_shift, geometry):
        stride, padding, dilation, _ = geometry
        return tuple(ops().conv_dgrad(g, x, weight, in_scale, in_shift, list(stride), list(padding),
                                      list(dilation)))

    def _unfused_dgrad(self, g, a, x, weight, in_scale, geometry, da_mask):
        """dx, dscale, dshift through cuDNN's data gradient da (which reads only the shape of the
        activation a) and one bn_act_backward pass, which takes the ReLU mask from a."""
        da = self._cudnn_backward(g, a, weight, *geometry, True, False)[0]
        return tuple(ops().bn_act_backward(da, a, x, in_scale, None, None, True, [*da_mask, False, False, False])[:3])

    @staticmethod
    def _cudnn_backward(g, x, weight, stride, padding, dilation, groups, need_dx, need_w):
        """cuDNN's data and weight gradients of conv(x, W) for the output gradient g, in one call."""
        if not (need_dx or need_w):
            return empty_vec(x), empty_vec(x)
        dx, dw, _ = torch.ops.aten.convolution_backward(
            g, x, weight, None, stride, padding, dilation, False, [0, 0], groups, [need_dx, need_w, False])
        dx = dx.contiguous(memory_format=output_format(x)) if need_dx else empty_vec(x)
        return dx, (dw.contiguous() if need_w else empty_vec(x))

    def _conv_output_grad(self, dy, dmean, dvar, y, mean, stats, relu, returned):
        """g, the gradient at the convolution's sum, in y's dtype and layout (never both stats and relu).

        stats: g = dy + dmean/M + 2 dvar (y - mean)/M (conv_output_grad, one pass). relu
        (y = relu(z), an eval-mode block whose parameters train): g = 0 where y <= 0, else dy (a NaN
        y passes dy, as torch's ReLU gradient does).
        Neither: g is dy, copied only when it is ``returned`` (as dresidual: an op's output
        must not alias its input)."""
        if relu:
            return torch.where(y <= 0, 0, dy).contiguous(memory_format=output_format(y))
        if not stats:
            if returned:
                return dy.clone(memory_format=output_format(y))
            return dy.contiguous(memory_format=output_format(y))
        return ops().conv_output_grad(dy, dmean, dvar, y, mean)

    def batch_stats(self, x):
        mean, var = ops().batch_stats(x)
        return mean, var

    def batch_stats_backward(self, dmean, dvar, x, mean):
        return ops().batch_stats_backward(dmean, dvar, x, mean)

    def bn_finalize(self, mean, var, weight, bias, eps):
        scale, shift, invstd = ops().bn_finalize(mean, var, weight, bias, float(eps))
        return scale, shift, invstd

    def bn_finalize_backward(self, dscale, dshift, dinvstd, mean, weight, scale, invstd):
        return tuple(ops().bn_finalize_backward(dscale, dshift, dinvstd, mean, weight, scale, invstd))

    def bn_update_running(self, mean, var, count, running_mean, running_var, num_batches_tracked, momentum):
        ops().bn_update_running(
            mean, var, int(count), running_mean, running_var, num_batches_tracked,
            None if momentum is None else float(momentum),
        )

    def bn_act(self, y, scale, shift, residual, res_scale, res_shift, relu):
        return ops().bn_act(y, scale, shift, residual, res_scale, res_shift, bool(relu))

    def bn_act_backward(self, dout, out, y, scale, residual, res_scale, relu, output_mask):
        return tuple(
            ops().bn_act_backward(dout, out, y, scale, residual, res_scale, bool(relu), [bool(m) for m in output_mask])
        )
