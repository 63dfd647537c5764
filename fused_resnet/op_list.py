"""The op list: every op's name, schema and fake implementation, in one place.

Two libraries are made from it. ``fused_resnet::`` (``ops.py``) defines every op of
``OPS``, each with the backend's name as a last argument. ``fused_resnet_cuda::``
(``fused_resnet._C``; ``backends/cuda.py`` registers its fakes) has the ops of ``OPS``
marked ``cuda``, with the same schema minus ``backend``, and the pieces of
conv_backward that the cuda backend composes itself (``CUDA_PIECES``).

Each op is written as its fake implementation (shapes, dtypes and strides only,
without ``backend``), whose annotated signature is the op's schema. This module
imports neither the backends nor ``ops.py``: both import it.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from ._layout import acc_dtype, conv_out_hw, empty_like_layout, empty_vec, output_format


@dataclasses.dataclass(frozen=True)
class OpDef:
    name: str
    fake: Callable  # its annotations are the schema, minus backend
    mutates_args: tuple[str, ...] = ()
    cuda: bool = False  # whether fused_resnet._C defines it too (as fused_resnet_cuda::<name>)

    def schema(self, backend: bool) -> str:
        """The schema, ``name(args) -> returns``, with a trailing ``str backend`` argument when ``backend``."""
        return self.name + torch.library.infer_schema(_prototype(self.fake, backend), mutates_args=self.mutates_args)


def _prototype(fake: Callable, backend: bool) -> Callable:
    """A function with ``fake``'s signature, plus ``backend: str`` when asked, for infer_schema
    (which reads string annotations in the prototype's globals: this module's)."""
    sig = inspect.signature(fake)
    if backend:
        extra = inspect.Parameter("backend", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str)
        sig = sig.replace(parameters=[*sig.parameters.values(), extra])

    def prototype(*args):
        raise NotImplementedError
    prototype.__signature__ = sig
    return prototype


OPS: dict[str, OpDef] = {}
CUDA_PIECES: dict[str, OpDef] = {}


def _op(*, cuda: bool, mutates_args: tuple[str, ...] = ()):
    def define(fake):
        OPS[fake.__name__] = OpDef(fake.__name__, fake, mutates_args, cuda)
        return OPS[fake.__name__]
    return define


def _cuda_piece(fake):
    CUDA_PIECES[fake.__name__] = OpDef(fake.__name__, fake, cuda=True)
    return CUDA_PIECES[fake.__name__]


def _vec(n: int, ref: Tensor) -> Tensor:
    return torch.empty(n, dtype=acc_dtype(ref), device=ref.device)


# ---------------------------------------------------------------- batch statistics and BatchNorm


@_op(cuda=True)
def batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    return _vec(x.shape[1], x), _vec(x.shape[1], x)


@_op(cuda=True)
def batch_stats_backward(dmean: Tensor, dvar: Tensor, x: Tensor, mean: Tensor) -> Tensor:
    return empty_like_layout(x, x.shape)


@_op(cuda=True)
def bn_finalize(
    mean: Tensor, var: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(mean), torch.empty_like(mean), torch.empty_like(mean)


@_op(cuda=True)
def bn_finalize_backward(
    dscale: Tensor, dshift: Tensor, dinvstd: Optional[Tensor], mean: Tensor, weight: Optional[Tensor],
    scale: Tensor, invstd: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    return (torch.empty_like(mean), torch.empty_like(mean),
            torch.empty_like(mean) if weight is not None else empty_vec(mean))


@_op(cuda=True, mutates_args=("running_mean", "running_var", "num_batches_tracked"))
def bn_update_running(
    mean: Tensor, var: Tensor, count: int, running_mean: Tensor, running_var: Tensor,
    num_batches_tracked: Optional[Tensor], momentum: Optional[float],
) -> None:
    return None


@_op(cuda=True)
def bn_act(
    y: Tensor, scale: Tensor, shift: Tensor, residual: Optional[Tensor], res_scale: Optional[Tensor],
    res_shift: Optional[Tensor], relu: bool,
) -> Tensor:
    return empty_like_layout(y, y.shape)


@_op(cuda=True)
def bn_act_backward(
    dout: Tensor, out: Tensor, y: Tensor, scale: Tensor, residual: Optional[Tensor],
    res_scale: Optional[Tensor], relu: bool, output_mask: Sequence[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    need_y, need_scale, need_shift, need_res, need_rscale, need_rshift = output_mask
    c = y.shape[1]
    return (
        empty_like_layout(y, y.shape) if need_y else empty_vec(y),
        _vec(c, y) if need_scale else empty_vec(y),
        _vec(c, y) if need_shift else empty_vec(y),
        empty_like_layout(residual, residual.shape) if need_res else empty_vec(y),
        _vec(c, y) if need_rscale else empty_vec(y),
        _vec(c, y) if need_rshift else empty_vec(y),
    )


# ---------------------------------------------------------------- convolutions


@_op(cuda=True)
def conv(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], in_scale: Optional[Tensor],
    in_shift: Optional[Tensor], residual: Optional[Tensor], stride: Sequence[int],
    padding: Sequence[int], dilation: Sequence[int], groups: int, relu: bool, stats: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    ho, wo = conv_out_hw(x.shape[2], x.shape[3], weight.shape[2:], stride, padding, dilation)
    cout = weight.shape[0]
    y = empty_like_layout(x, (x.shape[0], cout, ho, wo))
    if stats:
        return y, _vec(cout, x), _vec(cout, x)
    return y, empty_vec(x), empty_vec(x)


@_op(cuda=False)
def conv_backward(
    dy: Tensor, dmean: Tensor, dvar: Tensor, x: Tensor, weight: Tensor, y: Tensor, mean: Tensor,
    in_scale: Optional[Tensor], in_shift: Optional[Tensor], stride: Sequence[int],
    padding: Sequence[int], dilation: Sequence[int], groups: int, relu: bool, stats: bool,
    output_mask: Sequence[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    need_x, need_w, need_bias, need_scale, need_shift, need_res = output_mask
    cin, cout = x.shape[1], weight.shape[0]
    return (
        empty_like_layout(x, x.shape) if need_x else empty_vec(x),
        torch.empty_like(weight, memory_format=torch.contiguous_format) if need_w else empty_vec(x),
        _vec(cout, x) if need_bias else empty_vec(x),
        _vec(cin, x) if need_scale else empty_vec(x),
        _vec(cin, x) if need_shift else empty_vec(x),
        empty_like_layout(x, y.shape) if need_res else empty_vec(x),
    )


@_op(cuda=False)
def conv_shortcut(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], in_scale: Optional[Tensor],
    in_shift: Optional[Tensor], sc_x: Tensor, sc_weight: Optional[Tensor],
    sc_in_scale: Optional[Tensor], sc_in_shift: Optional[Tensor], sc_stride: int,
    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int, relu: bool,
) -> Tensor:
    ho, wo = conv_out_hw(x.shape[2], x.shape[3], weight.shape[2:], stride, padding, dilation)
    return empty_like_layout(x, (x.shape[0], weight.shape[0], ho, wo))


# ---------------------------------------------------------------- the cuda backend's pieces of conv_backward


@_cuda_piece
def conv_wgrad(
    g: Tensor, x: Tensor, weight: Tensor, in_scale: Tensor, in_shift: Tensor, stride: Sequence[int],
    padding: Sequence[int], dilation: Sequence[int],
) -> Tensor:
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


@_cuda_piece
def conv_dgrad(
    g: Tensor, x: Tensor, weight: Tensor, in_scale: Tensor, in_shift: Tensor, stride: Sequence[int],
    padding: Sequence[int], dilation: Sequence[int],
) -> tuple[Tensor, Tensor, Tensor]:
    vec = x.new_empty((x.shape[1],), dtype=torch.float32)
    return torch.empty_like(x, memory_format=output_format(x)), vec, torch.empty_like(vec)


@_cuda_piece
def conv_output_grad(dy: Tensor, dmean: Tensor, dvar: Tensor, y: Tensor, mean: Tensor) -> Tensor:
    return torch.empty_like(y, memory_format=output_format(y))


# The ops of fused_resnet._C (fused_resnet_cuda::), in the order of its built_with()["ops"].
CUDA_OPS = {**{name: op for name, op in OPS.items() if op.cuda}, **CUDA_PIECES}
