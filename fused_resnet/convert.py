"""Swap the residual blocks of a model for their fused twins, and back."""
from __future__ import annotations

import copy
import logging
from typing import Callable, Optional

from torch import nn

from . import backends
from .blocks import FUSED_BLOCKS, FUSED_TWIN, unsupported_reason

_log = logging.getLogger("fused_resnet")


def _swap(module: nn.Module, replace: Callable[[nn.Module], Optional[nn.Module]]) -> nn.Module:
    new = replace(module)
    if new is not None:
        return new
    for name, child in module.named_children():
        swapped = _swap(child, replace)
        if swapped is not child:
            setattr(module, name, swapped)
    return module


def _fuse_one(block: nn.Module, backend: str) -> Optional[nn.Module]:
    if isinstance(block, FUSED_BLOCKS):
        block.requested_backend = backend
        block._last_backend = None
        return block
    twin = FUSED_TWIN.get(type(block))
    if twin is None:
        return None
    reason = unsupported_reason(block)
    if not reason:
        return twin.from_block(block, backend)
    if backend != "auto":
        raise ValueError(f"backend {backend!r} cannot fuse this {type(block).__name__}: {reason}")
    _log.warning("convert: leaving a %s unfused: %s", type(block).__name__, reason)
    return block


def _copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that shares its SyncBatchNorm layers' process groups: a
    group is a handle to the processes, which can be neither copied nor pickled."""
    groups = {id(m.process_group): m.process_group for m in model.modules()
              if isinstance(m, nn.SyncBatchNorm) and m.process_group is not None}
    return copy.deepcopy(model, memo=groups)


def convert(model: nn.Module, backend: str = "auto", inplace: bool = False) -> nn.Module:
    """Replace every supported residual block of ``model`` with its fused twin.

    Blocks are matched by exact type (torchvision's BasicBlock/Bottleneck, the
    pre-activation and plain blocks of ``fused_resnet.models``), so user
    subclasses with their own forward are left alone. Their BatchNorms may be
    nn.BatchNorm2d, nn.SyncBatchNorm (before or after
    ``nn.SyncBatchNorm.convert_sync_batchnorm``) or FrozenBatchNorm2d. Parameters and buffers
    are shared with the (copied, unless ``inplace``) model, so state_dict keys
    and values are unchanged. ``backend`` is "auto" or a name of
    ``available_backends()``.
    """
    backends.check_name(backend)
    if not inplace:
        model = _copy(model)
    return _swap(model, lambda m: _fuse_one(m, backend))


def revert(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Replace every fused block of ``model`` with its unfused twin (the inverse of ``convert``)."""
    if not inplace:
        model = _copy(model)
    return _swap(model, lambda m: m.to_block() if isinstance(m, FUSED_BLOCKS) else None)
