"""The op vocabulary: torch.library custom ops in the ``fused_resnet`` namespace.

Every fused kernel of every backend is reached through one of these ops, so
torch.compile and CUDA graphs see opaque, well-described nodes. Each op takes
the backend name as its last argument and runs that backend's implementation;
its schema and fake implementation (shapes, dtypes, strides only) are those of
``op_list.py``, and the differentiable ones have an autograd formula that is
itself made of ops. The gradient ops (``*_backward``) are differentiated again
(a second derivative) on the reference backend, and raise, naming the op, on
the others.

Dtype contract: activations, weights and residuals share the activation dtype;
bias, scale, shift and statistics are fp32 per-channel vectors. Outputs a
caller did not ask for come back as empty fp32 tensors.

  conv(x, W, bias, in_scale, in_shift, residual, ...) -> (y, mean, var)
      a = relu(x*in_scale + in_shift) (if in_scale), zero-padded after the transform
      y = [relu](conv2d(a, W) + bias + residual); mean/var: per-channel batch
      statistics of y (biased variance) when ``stats``.
  conv_backward(...)       -> gradients of conv w.r.t. (x, W, bias, in_scale, in_shift, residual)
  conv_shortcut(x, W, bias, in_scale, in_shift, sc_x, sc_W, sc_in_scale, sc_in_shift, sc_stride, ...) -> y
      y = [relu](conv2d(a, W) + bias + S): the block's last conv with its shortcut in the
      same kernel, S a strided 1x1 projection of (pre-activated) sc_x, or, without sc_W,
      option A (sc_x subsampled, channels zero-padded); S never round-trips through memory
  batch_stats(x)           -> (mean, var) per channel, biased variance
  batch_stats_backward(dmean, dvar, x, mean) -> dx
  bn_finalize(mean, var, gamma, beta, eps) -> (scale, shift, invstd), scale = gamma/sqrt(var+eps)
  bn_finalize_backward(...) -> (dmean, dvar, dgamma): bn_finalize's gradients
  bn_update_running(mean, var, count, running_mean, running_var, num_batches_tracked, momentum)
      updates the running statistics in place exactly like nn.BatchNorm2d (unbiased running_var)
  bn_act(y, scale, shift, residual, res_scale, res_shift, relu) -> out
      out = [relu](y*scale + shift + residual*res_scale + res_shift)
  bn_act_backward(...)     -> gradients of bn_act
"""
from __future__ import annotations

import inspect

import torch
from torch import Tensor

from . import backends, op_list, reference
from ._layout import acc, empty_vec, output_format
from .op_list import OpDef

_NS = "fused_resnet"
_LIB = torch.library.Library(_NS, "DEF")


def _define(op: OpDef):
    """Define ``fused_resnet::<name>`` from its entry in the op list: its schema plus ``backend``,
    a kernel on every device that runs the named backend's implementation, and the op list's
    fake; returns the OpOverload.

    Registered directly on the dispatcher rather than through torch.library.custom_op:
    custom_op's generic wrappers (argument re-binding, alias checks, a second
    autograd layer) cost about twice the host time per call, and a fused block
    step makes a dozen op calls.
    """
    name, fake = op.name, op.fake

    def kernel(*args):
        return getattr(backends.get(args[-1]), name)(*args[:-1])
    _LIB.define(op.schema(backend=True))
    _LIB.impl(name, _bumping_versions(kernel, op) if op.mutates_args else kernel, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{_NS}::{name}", lambda *args: fake(*args[:-1]), lib=_LIB)
    return getattr(getattr(torch.ops, _NS), name).default


def _bumping_versions(kernel, op: OpDef):
    """``kernel``, then the version counters of the arguments it writes bumped: a backend's
    kernel writes through raw pointers, which autograd would not see."""
    positions = [i for i, p in enumerate(inspect.signature(op.fake).parameters) if p in op.mutates_args]

    def bumping(*args):
        kernel(*args)
        torch.autograd.graph.increment_version([args[i] for i in positions if args[i] is not None])
    return bumping


def _register_autograd(op, backward, setup_context, materialize_grads: bool = True) -> None:
    """``backward(ctx, *grads)`` and ``setup_context(ctx, inputs, output)`` as op's Autograd kernel.

    The kernel runs op below autograd inside an autograd.Function when a tensor
    argument requires a gradient, and skips the Function otherwise (inference,
    no_grad, frozen parameters). Without ``materialize_grads`` an output nobody
    used gets a None gradient instead of a zero tensor (one kernel fewer).
    """
    def forward(ctx, *args):
        ctx.set_materialize_grads(materialize_grads)
        with torch._C._AutoDispatchBelowAutograd():
            out = op(*args)
        setup_context(ctx, args, out)
        return out

    fn = type(f"{op._opname}_autograd", (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(backward),
    })

    def kernel(*args):
        if torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args):
            return fn.apply(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    _LIB.impl(op._opname, kernel, "Autograd")


def _register_gradient_op(op) -> None:
    """The Autograd kernel of ``op``, an op that computes a gradient: what a second
    derivative (a gradient taken with ``create_graph=True``, then differentiated) meets.

    Where the backend runs the reference implementation, that implementation runs here in
    the op's place, so autograd records its differentiable PyTorch ops. Elsewhere the op
    runs below autograd and its outputs carry a node that raises, naming the op, when a
    second derivative reaches it; first-order gradients under create_graph=True still work.
    """
    name = op._opname
    ref_fn = getattr(reference, name)

    def backward(ctx, *grads):
        raise RuntimeError(
            f"fused_resnet::{name} on the {ctx.backend} backend has no double backward: second derivatives "
            "through fused blocks are computed on the reference backend only; take them on the unconverted "
            "model (fused_resnet.revert(model)) or convert with backend='reference'"
        )

    def forward(ctx, *args):
        ctx.backend = args[-1]
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    fn = type(f"{name}_autograd", (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(backward),
    })

    def kernel(*args):
        if torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args):
            if getattr(backends.get(args[-1]), name) is ref_fn:
                return ref_fn(*args[:-1])
            return fn.apply(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    _LIB.impl(name, kernel, "Autograd")


# ---------------------------------------------------------------- conv


conv = _define(op_list.conv)
conv_backward = _define(op_list.conv_backward)
_register_gradient_op(conv_backward)


def _conv_setup(ctx, inputs, output):
    x, weight, bias, in_scale, in_shift, residual, stride, padding, dilation, groups, relu, stats, backend = inputs
    y, mean, _ = output
    ctx.save_for_backward(x, weight, _saved_output(ctx, y, relu or stats), mean, in_scale, in_shift)
    ctx.args = (stride, padding, dilation, groups, relu, stats, backend)
    ctx.has = (bias is not None, in_scale is not None, residual is not None)


def _saved_output(ctx, y: Tensor, read: bool) -> Tensor | None:
    """``y`` where the backward reads its values (the ReLU mask, the statistics' gradient),
    else None and its layout only: like torch's convolution, an op whose gradient does not
    depend on its output leaves the caller free to modify that output in place (e.g. an
    inplace ReLU after a pre-activation block)."""
    ctx.y_format = output_format(y)
    return y if read else None


def _output_or_grad(ctx, y: Tensor | None, dy: Tensor) -> Tensor:
    # The backward reads only the shape and layout of an unsaved y, which dy has in y's layout.
    return y if y is not None else dy.contiguous(memory_format=ctx.y_format)


def _conv_bwd(ctx, dy, dmean, dvar):
    x, weight, y, mean, in_scale, in_shift = ctx.saved_tensors
    stride, padding, dilation, groups, relu, stats, backend = ctx.args
    # Unused outputs arrive as None: the statistics (empty, and not read, without stats), rarely y.
    if dy is None and y is None:  # no ReLU, no statistics: only y's gradient could flow back
        return (None,) * 13
    dy = dy if dy is not None else torch.zeros_like(y)
    y = _output_or_grad(ctx, y, dy)
    if dmean is None:
        dmean = torch.zeros_like(mean) if stats else mean
    if dvar is None:
        dvar = torch.zeros_like(mean) if stats else mean
    has_bias, has_pro, has_res = ctx.has
    need = ctx.needs_input_grad
    mask = [need[0], need[1], has_bias and need[2], has_pro and need[3], has_pro and need[4], has_res and need[5]]
    grads = conv_backward(
        dy, dmean, dvar, x, weight, y, mean, in_scale, in_shift, stride, padding, dilation,
        groups, relu, stats, mask, backend,
    )
    return tuple(g if m else None for g, m in zip(grads, mask)) + (None,) * 7


_register_autograd(conv, _conv_bwd, _conv_setup, materialize_grads=False)


# ---------------------------------------------------------------- conv + shortcut


conv_shortcut = _define(op_list.conv_shortcut)


def _conv_shortcut_setup(ctx, inputs, output):
    (x, weight, bias, in_scale, in_shift, sc_x, sc_weight, sc_in_scale, sc_in_shift, sc_stride,
     stride, padding, dilation, groups, relu, backend) = inputs
    ctx.save_for_backward(x, weight, in_scale, in_shift, sc_x, sc_weight, sc_in_scale, sc_in_shift,
                          _saved_output(ctx, output, relu))
    ctx.args = (sc_stride, stride, padding, dilation, groups, relu, backend, bias is not None)


def _conv_shortcut_bwd(ctx, dy):
    # y = relu(z), z = conv(a, W) + bias + S. The main branch is conv's backward with
    # S in the place of its residual, which yields g = dz; S's inputs get the
    # gradient of a 1x1 strided conv of g (conv_backward again, without ReLU or
    # statistics, so its y argument is not read), or, for option A, the slice of g
    # that the padded, subsampled channels came from.
    x, weight, in_scale, in_shift, sc_x, sc_weight, sc_in_scale, sc_in_shift, y = ctx.saved_tensors
    sc_stride, stride, padding, dilation, groups, relu, backend, has_bias = ctx.args
    y = _output_or_grad(ctx, y, dy)
    need = ctx.needs_input_grad
    e = empty_vec(x)
    has_pro = in_scale is not None
    dx, dw, dbias, dscale, dshift, g = conv_backward(
        dy, e, e, x, weight, y, e, in_scale, in_shift, stride, padding, dilation, groups, relu, False,
        [need[0], need[1], has_bias and need[2], has_pro and need[3], has_pro and need[4], True], backend,
    )
    sc_grads = _shortcut_grads(ctx, g, sc_x, sc_weight, sc_in_scale, sc_in_shift, sc_stride, backend)
    main = (dx, dw, dbias, dscale, dshift)
    main_mask = (need[0], need[1], has_bias and need[2], has_pro and need[3], has_pro and need[4])
    return tuple(t if m else None for t, m in zip(main, main_mask)) + sc_grads + (None,) * 7


def _shortcut_grads(ctx, g, sc_x, sc_weight, sc_in_scale, sc_in_shift, sc_stride, backend):
    need = ctx.needs_input_grad[5:9]
    if sc_weight is None:
        return _option_a_grads(need, g, sc_x, sc_in_scale, sc_in_shift, sc_stride)
    e = empty_vec(g)
    has_pro = sc_in_scale is not None
    mask = [need[0], need[1], False, has_pro and need[2], has_pro and need[3], False]
    dsc, dscw, _, dss, dst, _ = conv_backward(
        g, e, e, sc_x, sc_weight, g, e, sc_in_scale, sc_in_shift, [sc_stride] * 2, [0, 0], [1, 1], 1,
        False, False, mask, backend,
    )
    return tuple(t if m else None for t, m in zip((dsc, dscw, dss, dst), (mask[0], mask[1], mask[3], mask[4])))


def _option_a_grads(need, g, sc_x, sc_in_scale, sc_in_shift, sc_stride):
    # S = pad(a[:, :, ::s, ::s]), a = relu(u), u = x*scale + shift: only the kept positions
    # get a gradient, gk, the slice of g their channels landed in; there du = relu_grad(gk, u),
    # dx = du*scale, dscale = sum(du*x), dshift = sum(du). The sums skip the other positions:
    # their zero gradient is structural, and 0*x would be NaN at an inf x.
    s = sc_stride
    front = (g.shape[1] - sc_x.shape[1]) // 2
    gk = acc(g[:, front:front + sc_x.shape[1]])
    dx = torch.zeros(sc_x.shape, dtype=gk.dtype, device=g.device) if need[0] else None
    if sc_in_scale is None:
        if need[0]:
            dx[:, :, ::s, ::s] = gk
        return (dx.to(sc_x.dtype) if need[0] else None), None, None, None
    scale, shift = sc_in_scale.view(1, -1, 1, 1), sc_in_shift.view(1, -1, 1, 1)
    xk = acc(sc_x[:, :, ::s, ::s])
    du = reference.relu_grad(gk, xk * scale + shift)
    if need[0]:
        dx[:, :, ::s, ::s] = du * scale
    dims = (0, 2, 3)
    return (
        dx.to(sc_x.dtype) if need[0] else None, None,
        (du * xk).sum(dims) if need[2] else None, du.sum(dims) if need[3] else None,
    )


_register_autograd(conv_shortcut, _conv_shortcut_bwd, _conv_shortcut_setup)


# ---------------------------------------------------------------- batch statistics


batch_stats = _define(op_list.batch_stats)


def _stats_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output[0])
    ctx.backend = inputs[1]


def _stats_bwd(ctx, dmean, dvar):
    x, mean = ctx.saved_tensors
    return batch_stats_backward(dmean, dvar, x, mean, ctx.backend), None


_register_autograd(batch_stats, _stats_bwd, _stats_setup)


batch_stats_backward = _define(op_list.batch_stats_backward)
_register_gradient_op(batch_stats_backward)


# ---------------------------------------------------------------- BatchNorm finalize


bn_finalize = _define(op_list.bn_finalize)


def _finalize_setup(ctx, inputs, output):
    mean, _, weight, bias, _, backend = inputs
    scale, _, invstd = output
    ctx.save_for_backward(mean, weight, scale, invstd)
    ctx.bias_dtype = bias.dtype if bias is not None else None
    ctx.backend = backend


def _finalize_bwd(ctx, dscale, dshift, dinvstd):
    # Gradients that no consumer produced arrive as None (invstd usually has none).
    mean, weight, scale, invstd = ctx.saved_tensors
    dscale = dscale if dscale is not None else torch.zeros_like(scale)
    dshift = dshift if dshift is not None else torch.zeros_like(scale)
    dmean, dvar, dweight = bn_finalize_backward(dscale, dshift, dinvstd, mean, weight, scale, invstd, ctx.backend)
    dweight = dweight.to(weight.dtype) if weight is not None else None
    dbias = dshift.to(ctx.bias_dtype) if ctx.bias_dtype is not None else None
    return dmean, dvar, dweight, dbias, None, None


_register_autograd(bn_finalize, _finalize_bwd, _finalize_setup, materialize_grads=False)


bn_finalize_backward = _define(op_list.bn_finalize_backward)
_register_gradient_op(bn_finalize_backward)
bn_update_running = _define(op_list.bn_update_running)


# ---------------------------------------------------------------- BN-apply + residual + ReLU


bn_act = _define(op_list.bn_act)
bn_act_backward = _define(op_list.bn_act_backward)
_register_gradient_op(bn_act_backward)


def _bn_act_setup(ctx, inputs, output):
    y, scale, _, residual, res_scale, res_shift, relu, backend = inputs
    ctx.save_for_backward(output, y, scale, residual, res_scale)
    ctx.args = (relu, backend, residual is not None, res_scale is not None)


def _bn_act_bwd(ctx, dout):
    out, y, scale, residual, res_scale = ctx.saved_tensors
    relu, backend, has_res, has_rscale = ctx.args
    need = ctx.needs_input_grad
    mask = [need[0], need[1], need[2], has_res and need[3], has_rscale and need[4], has_rscale and need[5]]
    grads = bn_act_backward(dout, out, y, scale, residual, res_scale, relu, mask, backend)
    return tuple(g if m else None for g, m in zip(grads, mask)) + (None, None)


_register_autograd(bn_act, _bn_act_bwd, _bn_act_setup)
