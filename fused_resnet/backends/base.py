"""The backend interface.

A backend provides implementations of the ops in ``fused_resnet.ops`` with the
same signatures (minus the trailing ``backend`` name). The base class runs the
reference implementation for every op, so a backend overrides only what it
accelerates and inherits the rest.
"""
from __future__ import annotations

import torch

from .. import reference


class Backend:
    name = "base"

    def available(self) -> tuple[bool, str]:
        """Whether this backend can run at all on this machine, and if not, why."""
        return True, ""

    def supports(self, device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
        """Whether this backend can run a block whose input is on ``device`` in ``dtype``."""
        return True, ""

    def auto_reason(self, device: torch.device) -> str:
        """Why backend="auto" should pass over this backend on ``device`` even if it supports it ('' if not)."""
        return ""

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
