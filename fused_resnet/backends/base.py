"""The backend interface.

A backend provides implementations of the ops of ``fused_resnet.op_list`` with
the same signatures (those of ``fused_resnet.ops`` minus the trailing ``backend``
name), and says what it cannot serve: every reason at once, as xformers'
operators do (``not_supported_reasons``). The base class runs the reference
implementation for every op, so a backend overrides only what it accelerates
and inherits the rest.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import reference


class Backend:
    name = "base"

    def not_supported_reasons(self, device: Optional[torch.device] = None,
                              dtype: Optional[torch.dtype] = None) -> list[str]:
        """Every reason this backend cannot run a block whose input is on ``device`` in ``dtype``
        ([] when it can), this machine's (an extension not built, no GPU) included; without
        ``device`` and ``dtype``, this machine's only."""
        return []

    def auto_skip_reasons(self, device: torch.device) -> list[str]:
        """Why backend="auto" passes over this backend on ``device`` even where it can serve ([] if not)."""
        return []

    conv = staticmethod(reference.conv)
    conv_backward = staticmethod(reference.conv_backward)
    conv_shortcut = staticmethod(reference.conv_shortcut)
    batch_stats = staticmethod(reference.batch_stats)
    batch_stats_backward = staticmethod(reference.batch_stats_backward)
    bn_finalize = staticmethod(reference.bn_finalize)
    bn_finalize_backward = staticmethod(reference.bn_finalize_backward)
    bn_update_running = staticmethod(reference.bn_update_running)
    bn_act = staticmethod(reference.bn_act)
    bn_act_backward = staticmethod(reference.bn_act_backward)


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
