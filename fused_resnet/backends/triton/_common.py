"""What the triton backend's launchers share: the input checks (each error names the tensor,
what was expected and what it got), the layouts the kernels read and write, and the
choices every launcher makes alike (dot precision, groups per program, the device to launch on).

Launchers call these through the module (``_common.check_activation(...)``), so a tool that
replaces one (bench/launch_audit.py runs the launchers on meta tensors) replaces it for all.
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch
from torch import Tensor

from ..base import FLOAT_DTYPES

INT32_LIMIT = 2**31  # the kernels index with int32

INTERPRETER_BF16 = ("the Triton interpreter (TRITON_INTERPRET=1) computes wrongly (its bf16 products are "
                    "garbage); run bf16 on a GPU without TRITON_INTERPRET, or use float32/float16")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# ----------------------------------------------------------------------------- checks


def check_device(name: str, t: Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"triton conv: {name} is on {t.device}, but x is on {device}")


def check_activation(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"triton backend: {name} must be a tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"triton backend: {name} must be 4-D (N, C, H, W), got shape {list(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"triton backend: {name} has dtype {t.dtype}; supported are float32, float16, bfloat16")
    if t.dtype == torch.bfloat16 and interpreting():
        raise TypeError(f"triton backend: {name} is bfloat16, which {INTERPRETER_BF16}")
    if t.device.type == "cpu" and not interpreting():
        raise RuntimeError(f"triton backend: {name} is on the CPU, which runs only under TRITON_INTERPRET=1")
    if t.device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"triton backend: {name} is on {t.device.type}, not CUDA")
    if t.numel() >= INT32_LIMIT:
        raise ValueError(f"triton backend: {name} has {t.numel()} elements; the kernels index with int32 (< 2**31)")


def check_vec(name: str, t: Optional[Tensor], n: int, device: torch.device) -> Optional[Tensor]:
    """A per-channel fp32 vector of length n (or None), checked and returned as the kernels read
    it: contiguous (autograd hands over expanded, stride-0 gradients, e.g. of a sum)."""
    if t is None:
        return None
    if not isinstance(t, Tensor):
        raise TypeError(f"triton backend: {name} must be a tensor, got {type(t).__name__}")
    check_device(name, t, device)
    if t.dtype != torch.float32:
        raise TypeError(f"triton backend: {name} must be float32 (per-channel vectors are fp32), got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"triton backend: {name} must have shape [{n}], got {list(t.shape)}")
    return t.contiguous()


def check_pair(op: str, names: tuple[str, str], scale: Optional[Tensor], shift: Optional[Tensor],
               n: int, device: torch.device) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """A (scale, shift) pair of per-channel vectors: both or neither, each fp32 of length n;
    returned as check_vec returns them."""
    if (scale is None) != (shift is None):
        raise ValueError(f"triton {op}: {names[0]} and {names[1]} must be given together")
    return check_vec(names[0], scale, n, device), check_vec(names[1], shift, n, device)


def pair(name: str, v) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    v = tuple(int(e) for e in v)
    if len(v) == 1:
        return v[0], v[0]
    if len(v) != 2:
        raise ValueError(f"triton conv: {name} must have 1 or 2 entries, got {v}")
    return v


# ----------------------------------------------------------------------------- layouts


def nhwc(t: Tensor) -> Tensor:
    """A dense NHWC buffer holding ``t`` (no copy when it already is one)."""
    return t.contiguous(memory_format=torch.channels_last)


def permuted_weight(weight: Tensor, dims: tuple[int, int, int, int]) -> Tensor:
    """``weight.permute(dims)`` made dense, at every call: no cache could tell a weight
    written through ``.data`` (no version bump) from an unchanged one."""
    return weight.detach().permute(*dims).contiguous()


def in_format(y: Tensor, fmt: torch.memory_format) -> Tensor:
    """The dense NHWC ``y`` with exactly the strides a fresh tensor of format ``fmt`` has
    (what the op's fake implementation promises, size-1 dimensions included)."""
    if fmt == torch.channels_last:
        return y
    if y.is_contiguous():  # same memory order (size-1 dims only): relabel the strides, no copy
        return y.as_strided(y.shape, _contiguous_strides(y.shape))
    return y.contiguous(memory_format=fmt)


def _contiguous_strides(shape) -> tuple[int, ...]:
    strides, acc = [], 1
    for size in reversed(shape):
        strides.append(acc)
        acc *= max(int(size), 1)
    return tuple(reversed(strides))


# ----------------------------------------------------------------------------- launch choices


def on_device(device: torch.device):
    """The context a launch on ``device`` runs in: that CUDA device current, or nothing (CPU)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def dot_precision(dtype: torch.dtype) -> str:
    if interpreting():
        return "ieee"
    if dtype == torch.float32:
        return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    return "tf32"  # ignored for fp16/bf16 operands


def groups_per_program(groups: int, cin_g: int, cout_g: int, width: int = 16) -> int:
    """How many consecutive groups one conv, dgrad or wgrad program packs (block-diagonally): the
    most, a power of two dividing ``groups``, whose channels still fit a ``width``-wide
    tensor-core tile. ResNeXt-50 32x4d: 4 in layer1 (4 channels a group), 2 in layer2."""
    gp = 1
    while groups % (2 * gp) == 0 and 2 * gp * max(cin_g, cout_g) <= width:
        gp *= 2
    return gp


def elementwise_plan(y: Tensor, fmt: torch.memory_format) -> tuple:
    """(channel_on_cols, R, L, grid, BLOCK_R, BLOCK_L) of a per-channel elementwise kernel over y
    viewed as [R, L] row-major: NHWC [N*H*W, C] (channel = column) or NCHW [N*C, H*W]."""
    import triton

    n, c, h, w = y.shape
    on_cols = fmt == torch.channels_last
    r_, l_ = (n * h * w, c) if on_cols else (n * c, h * w)
    if interpreting():
        bl = min(triton.next_power_of_2(l_), 64)
        br = max(1, 256 // bl)
    else:
        bl = min(triton.next_power_of_2(l_), 256)
        br = max(1, 4096 // bl)
    return on_cols, r_, l_, (triton.cdiv(r_, br), triton.cdiv(l_, bl)), br, bl
