"""The cuda backend: the compiled ``fused_resnet._C`` kernels."""
from __future__ import annotations

import torch

from .. import _ext
from .base import FLOAT_DTYPES, Backend


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
