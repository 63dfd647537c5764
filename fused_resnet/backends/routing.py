"""Which implementation served each problem of an op inside a backend, and why.

``block.backend`` names the backend a block runs on, not what that backend runs:
the cuda backend takes cuDNN and separate passes where the CUTLASS kernels refuse a
problem or were slower when timed (``choice.py``), and the reference implementation
for a few gradients. A backend records each such decision here, per problem (the op,
its operands' shapes, dtypes, strides, devices and alignment, its flags);
``routes()`` lists them and ``routes_table()`` prints them, and the logger
``fused_resnet`` says each new or changed route at DEBUG level.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import torch

log = logging.getLogger("fused_resnet")


class Route(NamedTuple):
    backend: str
    op: str
    problem: str  # the operands and flags, in words
    implementation: str
    reason: str  # why this implementation ('' where the backend's own kernel serves it, no choice made)


def problem_key(op: str, args) -> tuple:
    """A hashable key of a problem: each tensor by shape, dtype, strides, device and whether its
    data is 16-byte aligned (what the kernels' reason functions ask of it), sequences as
    tuples, the rest as given. Cheap: it is built on every call."""
    def part(a):
        if isinstance(a, torch.Tensor):
            return (a.shape, a.dtype, a.stride(), a.device, a.data_ptr() % 16 == 0)
        return tuple(a) if isinstance(a, list) else a
    return (op, *map(part, args))


# (backend, problem key) -> (implementation, reason), as last recorded
_ROUTES: dict[tuple, tuple[str, str]] = {}


def record(backend: str, key: tuple, implementation: str, reason: str = "") -> None:
    """Note that ``implementation`` served problem ``key`` (``problem_key``) on ``backend``, for
    ``reason``; a dictionary look-up when the route is known."""
    slot = (backend, key)
    if _ROUTES.get(slot) == (implementation, reason):
        return
    _ROUTES[slot] = (implementation, reason)
    log.debug("fused_resnet: %s runs %s on %s%s", backend, _words(key), implementation,
              f" ({reason})" if reason else "")


def routes() -> list[Route]:
    """Every route recorded in this process, one per backend and problem."""
    return [Route(backend, key[0], _words(key[1:]), impl, reason)
            for (backend, key), (impl, reason) in _ROUTES.items()]


def routes_table() -> str:
    """``routes()`` as a table with a header line, one row per route."""
    rows = [Route._fields] + [tuple(r) for r in routes()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(Route._fields) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(row, widths)), row[-1]]).rstrip() for row in rows)


def clear() -> None:
    """Forget every route (as a new process would)."""
    _ROUTES.clear()


_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


def _words(parts: tuple) -> str:
    """A problem key's parts in words: a tensor as dtype[shape], channels_last and
    unaligned data said where they hold, its device once at the end."""
    devices = []

    def word(p) -> str:
        if not (isinstance(p, tuple) and len(p) == 5 and isinstance(p[0], torch.Size)):
            return str(p)
        shape, dtype, stride, device, aligned = p
        devices.append(str(device))
        nhwc = len(shape) == 4 and shape[1] > 1 and stride[1] == 1 and stride[3] == shape[1]
        return (f"{_DTYPES.get(dtype, str(dtype))}[{','.join(map(str, shape))}]"
                + ("cl" if nhwc else "") + ("" if aligned else "(unaligned)"))
    text = " ".join(map(word, parts))
    return text + (f" on {', '.join(dict.fromkeys(devices))}" if devices else "")
