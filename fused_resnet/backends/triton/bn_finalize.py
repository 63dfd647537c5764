"""Launchers of ``fused_resnet::bn_finalize``, ``fused_resnet::bn_finalize_backward`` and
``fused_resnet::bn_update_running``, one launch each, on the kernels of ``kernels/bn_finalize.py``."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..._layout import empty_vec
from ..base import FLOAT_DTYPES
from . import _common


def _block() -> int:
    """Channels per program: one program covers a ResNet's widest BatchNorm on a GPU."""
    return 64 if _common.interpreting() else 1024


def _check_channel_vec(op: str, name: str, t: Optional[Tensor], n: int, device: torch.device,
                       writable: bool = False) -> Optional[Tensor]:
    """A per-channel vector of any float dtype (BatchNorm parameters and buffers keep the model's),
    returned contiguous (a writable one must be so already: it is updated in place)."""
    if t is None:
        return None
    if not isinstance(t, Tensor) or t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"triton {op}: {name} must be a vector of shape [{n}], got "
                         f"{list(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    _common.check_device(name, t, device)
    if t.dtype not in FLOAT_DTYPES + (torch.float64,):
        raise TypeError(f"triton {op}: {name} has dtype {t.dtype}, not a floating-point type")
    if writable and not t.is_contiguous():
        raise ValueError(f"triton {op}: {name} must be contiguous (it is updated in place)")
    return t.contiguous()


def _stats_vecs(op: str, mean: Tensor, var: Tensor) -> tuple[int, Tensor, Tensor]:
    """(channels, mean, var) of a statistics op: checked fp32 vectors, as check_vec returns them."""
    if not isinstance(mean, Tensor) or mean.dim() != 1:
        raise ValueError(f"triton {op}: mean must be a 1-D per-channel vector, got "
                         f"{list(mean.shape) if isinstance(mean, Tensor) else type(mean).__name__}")
    c = mean.shape[0]
    return c, _common.check_vec("mean", mean, c, mean.device), _common.check_vec("var", var, c, mean.device)


def bn_finalize(mean: Tensor, var: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(scale, shift, invstd) of a batch-statistics BatchNorm in one launch (contract: reference.bn_finalize)."""
    import triton

    from ...kernels import bn_finalize as kernels

    c, mean, var = _stats_vecs("bn_finalize", mean, var)
    device = mean.device
    weight = _check_channel_vec("bn_finalize", "weight", weight, c, device)
    bias = _check_channel_vec("bn_finalize", "bias", bias, c, device)
    scale, shift, invstd = (torch.empty(c, dtype=torch.float32, device=device) for _ in range(3))
    if c == 0:
        return scale, shift, invstd
    block = _block()
    with _common.on_device(device):
        kernels.bn_finalize_kernel[(triton.cdiv(c, block),)](
            mean, var, weight if weight is not None else mean,
            bias if bias is not None else mean, scale, shift, invstd, c, float(eps),
            HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, BLOCK_C=block, num_warps=4,
        )
    return scale, shift, invstd


def bn_finalize_backward(dscale: Tensor, dshift: Tensor, dinvstd: Optional[Tensor], mean: Tensor,
                         weight: Optional[Tensor], scale: Tensor, invstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``fused_resnet::bn_finalize_backward`` in one launch (contract: reference.bn_finalize_backward)."""
    import triton

    from ...kernels import bn_finalize as kernels

    op = "bn_finalize_backward"
    c, mean, invstd = _stats_vecs(op, mean, invstd)
    device = mean.device
    dscale, dshift, dinvstd, scale = (_common.check_vec(name, t, c, device) for name, t in (
        ("dscale", dscale), ("dshift", dshift), ("dinvstd", dinvstd), ("scale", scale)))
    weight = _check_channel_vec(op, "weight", weight, c, device)
    dmean, dvar = torch.empty_like(mean), torch.empty_like(mean)
    dweight = torch.empty(c, dtype=torch.float32, device=device) if weight is not None else empty_vec(mean)
    if c == 0:
        return dmean, dvar, dweight
    block = _block()
    with _common.on_device(device):
        kernels.bn_finalize_backward_kernel[(triton.cdiv(c, block),)](
            dscale, dshift, dinvstd if dinvstd is not None else mean, mean,
            weight if weight is not None else mean, scale, invstd, dmean, dvar,
            dweight if weight is not None else dmean, c,
            HAS_WEIGHT=weight is not None, HAS_DINVSTD=dinvstd is not None, BLOCK_C=block, num_warps=4,
        )
    return dmean, dvar, dweight


def bn_update_running(mean: Tensor, var: Tensor, count: int, running_mean: Tensor, running_var: Tensor,
                      num_batches_tracked: Optional[Tensor], momentum: Optional[float]) -> None:
    """nn.BatchNorm2d's running-statistics update in one launch (contract: reference.bn_update_running)."""
    from ...kernels import bn_finalize as kernels

    op = "bn_update_running"
    c, mean, var = _stats_vecs(op, mean, var)
    device = mean.device
    if count <= 1:
        raise ValueError(f"triton {op}: count (values per channel in the batch) must be > 1, got {count}")
    _check_channel_vec(op, "running_mean", running_mean, c, device, writable=True)
    _check_channel_vec(op, "running_var", running_var, c, device, writable=True)
    if num_batches_tracked is not None:
        _common.check_device("num_batches_tracked", num_batches_tracked, device)
        if num_batches_tracked.dtype != torch.int64 or num_batches_tracked.numel() != 1:
            raise TypeError(f"triton {op}: num_batches_tracked must be one int64 value, got "
                            f"{num_batches_tracked.dtype} of shape {list(num_batches_tracked.shape)}")
    mode = 0 if momentum is not None else (1 if num_batches_tracked is not None else 2)
    nbt = num_batches_tracked if num_batches_tracked is not None else mean
    with _common.on_device(device):
        kernels.bn_update_running_kernel[(1,)](
            mean, var, running_mean, running_var, nbt, c, count / (count - 1),
            float(momentum) if momentum is not None else 0.0,
            MOMENTUM_MODE=mode, HAS_NBT=num_batches_tracked is not None, BLOCK_C=_block(), num_warps=4,
        )
