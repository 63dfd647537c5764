"""The reference backend: pure PyTorch, runs on every device, the numerical oracle."""
from __future__ import annotations

from typing import Optional

import torch

from .base import FLOAT_DTYPES, Backend


class ReferenceBackend(Backend):
    name = "reference"

    def not_supported_reasons(self, device: Optional[torch.device] = None,
                              dtype: Optional[torch.dtype] = None) -> list[str]:
        if dtype is not None and dtype not in FLOAT_DTYPES and dtype != torch.float64:
            return [f"dtype {dtype} is not a floating type it computes in"]
        return []
