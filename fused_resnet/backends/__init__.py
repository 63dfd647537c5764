"""Backends: who computes the fused ops, what each supports, and how one is chosen.

A backend implements the ops of ``fused_resnet.op_list`` (any op it does not
override runs the reference implementation) and declares, for a given input,
every reason it cannot serve it (``not_supported_reasons``). ``resolve`` turns a
requested name ("auto" or an explicit one) into the backend that will run a
block; under "auto" it follows measured block times (``speed_table``) where
there are some. Inside a backend, which implementation served each problem, and
why, is listed by ``routes()``.
"""
from __future__ import annotations

import logging

import torch

from . import speed_table
from .base import Backend
from .cuda import CudaBackend
from .reference import ReferenceBackend
from .routing import Route, routes, routes_table
from .triton import TritonBackend

_log = logging.getLogger("fused_resnet")

BACKENDS: dict[str, Backend] = {
    b.name: b for b in (ReferenceBackend(), TritonBackend(), CudaBackend())
}

# Preference of backend="auto", best first, where no measured table covers a
# block. The Triton kernels fuse the whole block (statistics, shortcut, dgrad);
# the cuda backend fuses the BN prologue and the eval epilogue into CUTLASS
# convolutions and runs the rest around them; the reference runs everywhere.
AUTO_ORDER = ("triton", "cuda", "reference")

_logged_fallbacks: set[tuple[str, str]] = set()


def get(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown backend {name!r}; valid names are 'auto', " + ", ".join(repr(n) for n in BACKENDS)
        ) from None


def check_name(name: str) -> str:
    if name != "auto":
        get(name)
    return name


def available_backends() -> dict[str, tuple[bool, str]]:
    """``{name: (available, reasons)}`` for every backend, on this machine: the reasons it cannot
    run here at all, joined by '; ' ('' when it can)."""
    return {name: (not reasons, "; ".join(reasons))
            for name, reasons in ((name, b.not_supported_reasons()) for name, b in BACKENDS.items())}


def auto_order(device: torch.device, dtype: torch.dtype, block: str = "", mode: str = "", hw: int = 0) -> tuple:
    """The order in which "auto" tries the backends for a block: measured times first, then AUTO_ORDER."""
    measured = None
    if block and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        measured = speed_table.measured_order(name, _DTYPE_NAMES.get(dtype, str(dtype)), mode, block, hw)
    return tuple(dict.fromkeys((measured or ()) + AUTO_ORDER))


_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@torch.compiler.assume_constant_result
def resolve(requested: str, device: torch.device, dtype: torch.dtype, block: str = "", mode: str = "",
            hw: int = 0) -> str:
    """The backend that serves a block whose input lives on ``device`` with ``dtype``.

    An explicit backend that cannot serve raises with every reason; under "auto"
    the first capable backend of ``auto_order`` wins (measured times for this
    block signature, ``mode`` "train"/"infer" and spatial size ``hw``, where a
    speed table has them; else AUTO_ORDER), and skipping a better one on a GPU
    is logged once per reason. The answer depends only on the arguments and
    this machine, so torch.compile evaluates it once while tracing and keeps
    the name as a constant.
    """
    if requested != "auto":
        reasons = get(requested).not_supported_reasons(device, dtype)
        if reasons:
            raise RuntimeError(
                f"backend {requested!r} cannot run a {dtype} input on {device.type}: {'; '.join(reasons)}"
            )
        return requested
    skipped = []
    for name in auto_order(device, dtype, block, mode, hw):
        reasons = BACKENDS[name].auto_skip_reasons(device) + BACKENDS[name].not_supported_reasons(device, dtype)
        if not reasons:
            _log_fallback(skipped, name, device)
            return name
        skipped.append((name, "; ".join(reasons)))
    raise RuntimeError(f"no backend can run a {dtype} input on {device.type}: {skipped}")


def _log_fallback(skipped: list[tuple[str, str]], chosen: str, device: torch.device) -> None:
    if not skipped or torch.compiler.is_compiling():
        return
    key = (chosen, "; ".join(f"{n}: {r}" for n, r in skipped))
    if key in _logged_fallbacks:
        return
    _logged_fallbacks.add(key)
    # On the CPU the reference is the intended path, so it is only worth an info line.
    level = logging.INFO if device.type == "cpu" else logging.WARNING
    _log.log(level, "backend='auto' runs %s on %s (skipped %s)", chosen, device.type, key[1])


__all__ = ["Backend", "BACKENDS", "AUTO_ORDER", "Route", "auto_order", "available_backends", "check_name", "get",
           "resolve", "routes", "routes_table"]
