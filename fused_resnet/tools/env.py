"""The machine and the names of its settings: versions, GPU, the compiled extension,
devices and dtypes."""
from __future__ import annotations

import datetime
import os
import platform
from typing import Optional

import torch

DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use fp32, fp16 or bf16") from None


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}.get(
        dtype, str(dtype).replace("torch.", "")
    )


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_device(name: Optional[str]) -> torch.device:
    if name in (None, "", "auto"):
        return default_device()
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA GPU is visible")
    return dev


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _dist_version(name: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def gpu_name(device: Optional[torch.device] = None) -> str:
    if not torch.cuda.is_available():
        return "none"
    idx = device.index if device is not None and device.type == "cuda" and device.index is not None else 0
    return torch.cuda.get_device_name(idx)


def _triton_version() -> Optional[str]:
    try:
        import triton

        return triton.__version__
    except Exception:
        return _dist_version("triton")


def env_info() -> dict:
    """Versions and the machine, for the header of every benchmark and check."""
    import torchvision

    import fused_resnet

    info = {
        "date": utc_now(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "triton": _triton_version(),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "fused_resnet": fused_resnet.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu_name(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") == "1",
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(
            gpu_capability=f"{p.major}.{p.minor}",
            gpu_sms=p.multi_processor_count,
            gpu_memory_GB=round(p.total_memory / 1e9, 1),
            gpu_count=torch.cuda.device_count(),
        )
    return info


def ext_status() -> tuple[bool, str]:
    from .. import _ext

    return _ext.status()


def ext_build_info() -> Optional[dict]:
    """``_C.built_with()`` (toolkit, architectures, ops, CUTLASS kernels), or None when _C is not built."""
    from .. import _ext

    ok, _ = _ext.status()
    return dict(_ext.load().built_with()) if ok else None
