"""The reference backend: pure PyTorch, runs on every device, the numerical oracle."""
from __future__ import annotations

import torch

from .base import FLOAT_DTYPES, Backend


class ReferenceBackend(Backend):
    name = "reference"

    def supports(self, device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
        if dtype not in FLOAT_DTYPES and dtype != torch.float64:
            return False, f"dtype {dtype} is not a floating type it computes in"
        return True, ""
