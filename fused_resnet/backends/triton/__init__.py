"""The triton backend: fused implicit-GEMM convolutions from the repository's ``kernels/``.

Each module here launches the kernels of the ``kernels/`` module of the same name (the
``fused_resnet::`` op it serves): ``conv`` (conv, conv_shortcut), ``conv_backward``,
``batch_stats``, ``bn_finalize`` (with bn_update_running) and ``bn_act``; ``_common`` holds
the checks and layout helpers they share, ``tuning`` the choice of tile configuration.
The kernels never allocate or validate; the launchers do: they check every tensor
(device, dtype, shape) and name the offending one, bring activations to dense NHWC,
allocate outputs in the memory format ``_layout.output_format`` prescribes, pick a tile
configuration (on a GPU, autotuned once per problem key and remembered on disk; one small
fixed one under TRITON_INTERPRET=1) and launch. A launcher imports its kernel module, and
triton with it, on its first call: the backend imports where triton is not installed, and
then says why it cannot run.

fp32 convolutions use TF32 tensor cores exactly when
``torch.backends.cudnn.allow_tf32`` is set (the flag PyTorch consults for its
own convolutions, default True), full IEEE fp32 otherwise and always under the
interpreter. fp16/bf16 run on tensor cores with fp32 accumulation. Every per-channel
reduction goes through a partials buffer and an ordered reduction (no atomics: bitwise
repeatable).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..base import FLOAT_DTYPES, Backend
from . import _common
from .batch_stats import batch_stats, batch_stats_backward
from .bn_act import bn_act, bn_act_backward
from .bn_finalize import bn_finalize, bn_finalize_backward, bn_update_running
from .conv import conv, conv_shortcut
from .conv_backward import conv_backward


def _machine_reasons() -> list[str]:
    """Why no block can run here: triton missing, or nothing to run it on."""
    reasons = []
    try:
        import triton  # noqa: F401
    except ImportError as e:
        reasons.append(f"triton is not importable ({e})")
    if not _common.interpreting() and not torch.cuda.is_available():
        reasons.append("no CUDA GPU is visible and TRITON_INTERPRET=1 is not set")
    return reasons


def _input_reasons(device: torch.device, dtype: torch.dtype) -> list[str]:
    """Why a block on ``device`` in ``dtype`` cannot run, whatever the machine."""
    reasons = []
    if dtype not in FLOAT_DTYPES:
        reasons.append(f"dtype {dtype} is not one of fp32/fp16/bf16")
    if dtype == torch.bfloat16 and _common.interpreting():
        reasons.append(f"bfloat16 is a dtype {_common.INTERPRETER_BF16}")
    if device.type == "cpu" and not _common.interpreting():
        reasons.append("CPU tensors run only under TRITON_INTERPRET=1")
    if device.type not in ("cpu", "cuda"):
        reasons.append(f"device type {device.type!r} is not CUDA")
    return reasons


class TritonBackend(Backend):
    name = "triton"

    def not_supported_reasons(self, device: Optional[torch.device] = None,
                              dtype: Optional[torch.dtype] = None) -> list[str]:
        """Every reason this backend cannot run a block on ``device`` in ``dtype`` ([] if it can),
        this machine's included; without ``device`` and ``dtype``, this machine's only."""
        reasons = _machine_reasons()
        if device is not None and dtype is not None:
            reasons += _input_reasons(device, dtype)
        return reasons

    def auto_skip_reasons(self, device: torch.device) -> list[str]:
        # The interpreter is a testing tool: backend="auto" never picks it for CPU tensors.
        return [] if device.type == "cuda" else ["the Triton interpreter runs only when asked for by name"]

    conv = staticmethod(conv)
    conv_shortcut = staticmethod(conv_shortcut)
    batch_stats = staticmethod(batch_stats)
    batch_stats_backward = staticmethod(batch_stats_backward)
    bn_finalize = staticmethod(bn_finalize)
    bn_finalize_backward = staticmethod(bn_finalize_backward)
    bn_update_running = staticmethod(bn_update_running)
    bn_act = staticmethod(bn_act)
    conv_backward = staticmethod(conv_backward)
    bn_act_backward = staticmethod(bn_act_backward)
