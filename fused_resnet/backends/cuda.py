"""The cuda backend: the compiled ``fused_resnet._C`` kernels.

It runs the memory-bound BatchNorm pieces (batch statistics, finalize, the
running-statistics update, BN + residual + ReLU and its backward) with the CUDA
kernels of ``csrc/``, registered as ``torch.ops.fused_resnet_cuda.<name>``.

Convolutions run on CUTLASS implicit GEMMs where they fuse something
(``fused_resnet_cuda::conv``): with a BatchNorm-apply + ReLU prologue, applied
in the mainloop as the operand is loaded (the normalised activation is never
stored; ``conv_wgrad`` recomputes it the same way for the weight gradient);
without one, bias + residual + ReLU in the epilogue (eval-mode blocks, BN
folded). What those kernels cannot take (``_C.conv_gap`` says why: fp32,
groups, channel counts not multiples of 8, NCHW tensors, nothing to fuse, ...)
runs on cuDNN with the reference's composition and the batch-statistics kernel.

``_C`` is loaded lazily, at the first kernel call (``import fused_resnet`` never
loads it). The fake (meta) implementations of the ``fused_resnet_cuda`` ops are
registered here (``_register_fakes``), the module their C++ library names with
``set_python_module``; ``_C`` calls it when it is imported.
"""
from __future__ import annotations

import torch

from .. import _ext, reference
from .._layout import empty_vec
from .base import FLOAT_DTYPES, Backend

LIB = "fused_resnet_cuda"
# The ops that mirror a fused_resnet:: op (same name and schema, minus backend) ...
OP_NAMES = ("batch_stats", "bn_finalize", "bn_update_running", "bn_act", "bn_act_backward", "conv")
# ... and the one piece of conv_backward that the backend composes itself.
EXTRA_OP_NAMES = ("conv_wgrad",)

_ops_ns = None
_fakes_registered = False


def ops():
    """``torch.ops.fused_resnet_cuda``, loading ``fused_resnet._C`` on first use.

    Raises ImportError with the reason when the extension is not built.
    """
    global _ops_ns
    if _ops_ns is None:
        _ext.load()
        _register_fakes()
        _ops_ns = getattr(torch.ops, LIB)
    return _ops_ns


def _without_backend(fake):
    return lambda *args: fake(*args, None)


def _register_fakes() -> None:
    """Fake implementations (shapes, dtypes, strides) of the ops; idempotent.

    Each op's schema is its ``fused_resnet::`` twin's minus ``backend``, so the
    fake is that twin's fake.
    """
    global _fakes_registered
    if _fakes_registered:
        return
    _fakes_registered = True
    from ..ops import FAKES

    for name in OP_NAMES:
        torch.library.register_fake(f"{LIB}::{name}")(_without_backend(FAKES[name]))
    torch.library.register_fake(f"{LIB}::conv_wgrad")(_conv_wgrad_fake)


def _conv_wgrad_fake(g, x, weight, in_scale, in_shift, stride, padding, dilation):
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


def conv_gap(x, weight, bias, in_scale, residual, stride, padding, dilation, groups, relu) -> str:
    """Why ``fused_resnet_cuda::conv`` cannot take these inputs ('' when it can)."""
    return _ext.load().conv_gap(
        x, weight, bias, in_scale, residual, list(stride), list(padding), list(dilation), int(groups), bool(relu)
    )


class CudaBackend(Backend):
    name = "cuda"

    def available(self) -> tuple[bool, str]:
        ok, reason = _ext.status()
        if not ok:
            return False, reason
        if not torch.cuda.is_available():
            return False, "no CUDA GPU is visible"
        return True, ""

    def supports(self, device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
        if device.type != "cuda":
            return False, f"tensors are on {device.type}, not CUDA"
        if dtype not in FLOAT_DTYPES:
            return False, f"dtype {dtype} is not one of fp32/fp16/bf16"
        return True, ""

    def conv(self, x, weight, bias, in_scale, in_shift, residual, stride, padding, dilation, groups, relu, stats):
        if conv_gap(x, weight, bias, in_scale, residual, stride, padding, dilation, groups, relu):
            y, _, _ = reference.conv(
                x, weight, bias, in_scale, in_shift, residual, stride, padding, dilation, groups, relu, False
            )
            return (y, *self.batch_stats(y)) if stats else (y, empty_vec(x), empty_vec(x))
        return tuple(ops().conv(
            x, weight, bias, in_scale, in_shift, residual, list(stride), list(padding), list(dilation),
            int(groups), bool(relu), bool(stats),
        ))

    def conv_shortcut(self, x, weight, bias, in_scale, in_shift, sc_x, sc_weight, sc_in_scale, sc_in_shift,
                      sc_stride, stride, padding, dilation, groups, relu):
        if conv_gap(x, weight, bias, in_scale, None, stride, padding, dilation, groups, relu):
            return reference.conv_shortcut(x, weight, bias, in_scale, in_shift, sc_x, sc_weight, sc_in_scale,
                                           sc_in_shift, sc_stride, stride, padding, dilation, groups, relu)
        # The shortcut branch (a 1x1 convolution on cuDNN, or option A) is stored once,
        # channels_last in x's dtype, and read as the residual of the fused epilogue.
        sc = reference.shortcut(sc_x, sc_weight, sc_in_scale, sc_in_shift, sc_stride, weight.shape[0])
        res = sc.to(x.dtype).contiguous(memory_format=torch.channels_last)
        return ops().conv(x, weight, bias, in_scale, in_shift, res, list(stride), list(padding), list(dilation),
                          int(groups), bool(relu), False)[0]

    def conv_backward(self, dy, dmean, dvar, x, weight, y, mean, in_scale, in_shift, stride, padding,
                      dilation, groups, relu, stats, output_mask):
        if (not output_mask[1] or in_scale is None
                or conv_gap(x, weight, None, in_scale, None, stride, padding, dilation, groups, False)):
            return reference.conv_backward(
                dy, dmean, dvar, x, weight, y, mean, in_scale, in_shift, stride, padding, dilation,
                groups, relu, stats, output_mask,
            )
        g = reference.conv_output_grad(dy, dmean, dvar, y, mean, relu, stats)
        mask = list(output_mask)
        mask[1] = False
        dx, _, dbias, dscale, dshift, dres = reference.conv_backward_from_output_grad(
            g, x, weight, in_scale, in_shift, stride, padding, dilation, groups, mask
        )
        dw = ops().conv_wgrad(
            g.to(x.dtype).contiguous(memory_format=torch.channels_last), x, weight, in_scale, in_shift,
            list(stride), list(padding), list(dilation),
        )
        return dx, dw, dbias, dscale, dshift, dres

    def batch_stats(self, x):
        mean, var = ops().batch_stats(x)
        return mean, var

    def bn_finalize(self, mean, var, weight, bias, eps):
        scale, shift, invstd = ops().bn_finalize(mean, var, weight, bias, float(eps))
        return scale, shift, invstd

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
