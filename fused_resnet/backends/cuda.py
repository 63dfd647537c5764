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
kernels cannot take (``_C.conv_gap`` says why: fp32, groups, channel counts not
multiples of 8, NCHW tensors, nothing to fuse, ...) runs on cuDNN between bn_act
passes (``_cudnn_conv``), statistics from the batch-statistics kernel.
``conv_backward`` takes a few passes the same way.

Where a CUTLASS kernel can take a convolution, it is also timed against that
unfused path (cuDNN and the separate passes, the same contract) on the problem's
first call, and the faster runs from then on (``choice.py``; ``choice.choices()``
lists what was taken): a fused kernel never makes a step slower than the unfused
path it replaces.

The mainloop applies the prologue with fp32 scale and shift in fp32 arithmetic,
rounded once, as eager PyTorch's BatchNorm does (csrc/cutlass/scale_bias_fp32.cuh).
CUTLASS's stock fusion reads them in the activation's 16-bit type, a per-channel
rounding that does not average out: on an H100 (2026-11-23) it put bf16
ResNet-50 and CIFAR ResNet-56 training outside the parity rule (running means
2.8x plain PyTorch's error after three steps, a BN-bias gradient 2.1x in fp16).

``_C`` is loaded lazily, at the first kernel call (``import fused_resnet`` never
loads it). The fake (meta) implementations of the ``fused_resnet_cuda`` ops are
registered here (``_register_fakes``), the module their C++ library names with
``set_python_module``; ``_C`` calls it when it is imported.
"""
from __future__ import annotations

import torch

from .. import _ext, reference
from .._layout import acc, acc_dtype, empty_vec, output_format
from . import choice
from .base import FLOAT_DTYPES, Backend

LIB = "fused_resnet_cuda"
# The ops that mirror a fused_resnet:: op (same name and schema, minus backend); the
# others are EXTRA_OP_NAMES (below their fakes).
OP_NAMES = ("batch_stats", "batch_stats_backward", "bn_finalize", "bn_finalize_backward", "bn_update_running",
            "bn_act", "bn_act_backward", "conv")

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
    for name, fake in EXTRA_FAKES.items():
        torch.library.register_fake(f"{LIB}::{name}")(fake)


def _conv_wgrad_fake(g, x, weight, in_scale, in_shift, stride, padding, dilation):
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


def _conv_dgrad_fake(g, x, weight, in_scale, in_shift, stride, padding, dilation):
    vec = x.new_empty((x.shape[1],), dtype=torch.float32)
    return torch.empty_like(x, memory_format=output_format(x)), vec, torch.empty_like(vec)


def _conv_output_grad_fake(dy, dmean, dvar, y, mean):
    return torch.empty_like(y, memory_format=output_format(y))


# The ops with no fused_resnet:: twin, pieces of conv_backward the backend composes
# itself, and their fakes.
EXTRA_FAKES = {"conv_wgrad": _conv_wgrad_fake, "conv_dgrad": _conv_dgrad_fake,
               "conv_output_grad": _conv_output_grad_fake}
EXTRA_OP_NAMES = tuple(EXTRA_FAKES)


def conv_gap(x, weight, bias, in_scale, residual, stride, padding, dilation, groups, relu, stats) -> str:
    """Why ``fused_resnet_cuda::conv`` cannot take these inputs ('' when it can)."""
    return _ext.load().conv_gap(
        x, weight, bias, in_scale, residual, list(stride), list(padding), list(dilation), int(groups), bool(relu),
        bool(stats),
    )


def conv_dgrad_gap(x, weight, stride, padding, dilation, groups) -> str:
    """Why ``fused_resnet_cuda::conv_dgrad`` cannot take these inputs ('' when it can)."""
    return _ext.load().conv_dgrad_gap(x, weight, list(stride), list(padding), list(dilation), int(groups))


def _activation(x, in_scale, in_shift):
    """The prologue's activation relu(x*s + t) as one bn_act pass, for cuDNN to read."""
    return ops().bn_act(x, in_scale, in_shift, None, None, None, True)


def _problem_key(op: str, args) -> tuple:
    """A hashable key of a problem: each tensor by shape, dtype, strides, device and whether its
    data is 16-byte aligned (what the kernels' gap functions ask of it), sequences as
    tuples, the rest as given. Cheap: it is built on every call."""
    def part(a):
        if isinstance(a, torch.Tensor):
            return (a.shape, a.dtype, a.stride(), a.device, a.data_ptr() % 16 == 0)
        return tuple(a) if isinstance(a, list) else a
    return (op, *map(part, args))


# (gap function, problem key) -> whether a CUTLASS kernel serves the problem. The gap
# functions are asked once per problem: their answer depends only on what the key holds.
_SERVED: dict = {}


def _served(key: tuple, gap) -> bool:
    """Whether a CUTLASS kernel serves the problem ``key``: ``gap`` = (function, *arguments)
    answers '', asked once per problem."""
    served = _SERVED.get((gap[0], key))
    if served is None:
        served = _SERVED[(gap[0], key)] = not gap[0](*gap[1:])
    return served


def _takes_fused(op: str, args, gap, fused, unfused) -> bool:
    """Whether the fused kernel runs this problem: one the CUTLASS kernels serve (``_served``)
    that beat its unfused twin when the problem was first timed (choice.py); the fused kernel
    where nothing is timed."""
    key = _problem_key(op, args)
    if not _served(key, gap):
        return False
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    return choice.choose(key, {"fused": fused, "unfused": unfused}, "fused", device) == "fused"


def _mainloop_gap(x, weight, in_scale, stride, padding, dilation, groups) -> str:
    """Why the CUTLASS mainloop cannot apply this prologue (conv_gap; the residual, bias and
    ReLU of the forward do not change the answer for a prologue convolution)."""
    if in_scale is None:
        return "no prologue"
    return conv_gap(x, weight, None, in_scale, None, stride, padding, dilation, groups, False, False)


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
        args = (x, weight, bias, in_scale, in_shift, residual, stride, padding, dilation, groups, relu, stats)
        gap = (conv_gap, x, weight, bias, in_scale, residual, stride, padding, dilation, groups, relu, stats)
        if _takes_fused("conv", args, gap, lambda: self._fused_conv(*args), lambda: self._unfused_conv(*args)):
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
        if not _served(_problem_key("conv_shortcut", args), (conv_gap, *args)):
            # The reference's sum, the shortcut added in the accumulation dtype.
            return reference.conv(x, weight, bias, in_scale, in_shift, sc, stride, padding, dilation, groups, relu,
                                  False)[0]
        return ops().conv(x, weight, bias, in_scale, in_shift, res, list(stride), list(padding), list(dilation),
                          int(groups), bool(relu), False)[0]

    def conv_backward(self, dy, dmean, dvar, x, weight, y, mean, in_scale, in_shift, stride, padding,
                      dilation, groups, relu, stats, output_mask):
        """The gradients in a few passes (reference.conv_backward derives them).

        g (the gradient at the convolution's output, BN-statistics terms included)
        is one bn_act pass. Without a prologue, cuDNN takes g to dx and dW; with
        one, ``_prologue_backward``.
        """
        if (relu and stats) or dy.dtype != x.dtype:
            return reference.conv_backward(
                dy, dmean, dvar, x, weight, y, mean, in_scale, in_shift, stride, padding, dilation,
                groups, relu, stats, output_mask,
            )
        need_x, need_w, need_bias, need_scale, need_shift, need_res = output_mask
        g = self._output_grad(dy, dmean, dvar, y, mean, stats, relu, need_res)
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
        stride, conv_dgrad_gap), its epilogue applies the ReLU mask (u = x*s + t > 0
        in fp32, as the reference) and the scale to da in registers and sums the
        gradients of s and t: da is never stored. Elsewhere cuDNN writes da and one
        bn_act_backward pass reads it, the mask taken from a rounded to x's dtype,
        as eager PyTorch's ReLU after a BatchNorm does (the two differ only where
        the rounding flushes a tiny positive to zero).

        Each fused kernel runs only where it beat that unfused twin when the problem
        was first timed (choice.py).
        """
        need_x, need_w, _, need_scale, need_shift, _ = output_mask
        stride, padding, dilation, groups = geometry
        da_mask = (need_x, need_scale, need_shift)
        need_da = any(da_mask)
        problem = (g, x, weight, in_scale, stride, padding, dilation, groups, da_mask)
        fused_da = need_da and _takes_fused(
            "conv_dgrad", problem, (conv_dgrad_gap, x, weight, *geometry),
            lambda: self._fused_dgrad(g, x, weight, in_scale, in_shift, geometry),
            lambda: self._unfused_dgrad(g, _activation(x, in_scale, in_shift), x, weight, in_scale, geometry, da_mask))
        fused_w = need_w and _takes_fused(
            "conv_wgrad", problem, (_mainloop_gap, x, weight, in_scale, *geometry),
            lambda: self._fused_wgrad(g, x, weight, in_scale, in_shift, geometry),
            lambda: self._cudnn_backward(g, _activation(x, in_scale, in_shift), weight, *geometry, False, True))
        cudnn_da, cudnn_w = need_da and not fused_da, need_w and not fused_w
        a = _activation(x, in_scale, in_shift) if cudnn_da or cudnn_w else None
        dw = empty_vec(x)
        if fused_w:
            dw = self._fused_wgrad(g, x, weight, in_scale, in_shift, geometry)
        elif cudnn_w:  # cuDNN's dW reads the activation
            dw = self._cudnn_backward(g, a, weight, *geometry, False, True)[1]
        dx = dscale = dshift = empty_vec(x)
        if fused_da:
            dx, dscale, dshift = self._fused_dgrad(g, x, weight, in_scale, in_shift, geometry)
        elif cudnn_da:
            dx, dscale, dshift = self._unfused_dgrad(g, a, x, weight, in_scale, geometry, da_mask)
        return tuple(t if need else empty_vec(x) for t, need in
                     ((dx, need_x), (dw, need_w), (dscale, need_scale), (dshift, need_shift)))

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

    def _output_grad(self, dy, dmean, dvar, y, mean, stats, relu, returned):
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
