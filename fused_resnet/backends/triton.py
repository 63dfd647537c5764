"""The triton backend: fused implicit-GEMM convolutions from ``fused_resnet.kernels``."""
from __future__ import annotations

import os

import torch

from .base import FLOAT_DTYPES, Backend


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class TritonBackend(Backend):
    name = "triton"

    def available(self) -> tuple[bool, str]:
        try:
            import triton  # noqa: F401
        except ImportError as e:
            return False, f"triton is not importable ({e})"
        if not _interpreting() and not torch.cuda.is_available():
            return False, "no CUDA GPU is visible and TRITON_INTERPRET=1 is not set"
        return True, ""

    def supports(self, device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
        if dtype not in FLOAT_DTYPES:
            return False, f"dtype {dtype} is not one of fp32/fp16/bf16"
        if device.type == "cpu" and not _interpreting():
            return False, "CPU tensors run only under TRITON_INTERPRET=1"
        if device.type not in ("cpu", "cuda"):
            return False, f"device type {device.type!r} is not CUDA"
        return True, ""
