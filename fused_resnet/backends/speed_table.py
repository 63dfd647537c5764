"""Measured block times per backend, which ``backend="auto"`` follows where it has them.

A table is a JSON file that ``bench/bench_blocks.py --table PATH`` writes on a GPU:

    {"device": "NVIDIA H100 80GB HBM3", "dtype": "bf16", "date": ..., "command": ...,
     "entries": [{"block": "FusedBottleneck 256-64-64-256 s1 g1 d1", "hw": 56, "mode": "train",
                  "ms": {"triton": 2.91, "cuda": 3.40}}, ...]}

Tables are read from ``fused_resnet/speed_tables/*.json`` (measured tables shipped
with the package) and from the files named in ``FUSED_RESNET_SPEED_TABLES``
(``os.pathsep``-separated), once per process. For a block, ``measured_order``
takes the entries of the same device, dtype, mode and block signature, the one
measured at the spatial size nearest to the input's, and ranks its backends by
time. Without such an entry auto keeps its fixed order.
"""
from __future__ import annotations

import functools
import glob
import json
import math
import os
from typing import Optional, Sequence

ENV_VAR = "FUSED_RESNET_SPEED_TABLES"
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "speed_tables")


def block_key(name: str, channels: Sequence[int], stride: int, groups: int, dilation: int) -> str:
    """A block's signature, independent of batch and spatial size: class, channels through its convs, ..."""
    return f"{name} {'-'.join(str(c) for c in channels)} s{stride} g{groups} d{dilation}"


def table_paths() -> tuple[str, ...]:
    return _table_paths(os.environ.get(ENV_VAR, ""))


@functools.lru_cache(maxsize=None)
def _table_paths(env_value: str) -> tuple[str, ...]:
    # Listed once per value of the variable: measured_order runs at every block's forward.
    extra = [p for p in env_value.split(os.pathsep) if p]
    return tuple(sorted(glob.glob(os.path.join(SHIPPED_DIR, "*.json"))) + extra)


@functools.lru_cache(maxsize=None)
def _load(paths: tuple[str, ...]) -> tuple[dict, ...]:
    tables = []
    for path in paths:
        with open(path) as f:
            table = json.load(f)
        missing = {"device", "dtype", "entries"} - set(table)
        if missing:
            raise ValueError(f"speed table {path} lacks {sorted(missing)}")
        tables.append(table)
    return tuple(tables)


def measured_order(device_name: str, dtype: str, mode: str, key: str, hw: int) -> Optional[tuple[str, ...]]:
    """The backends measured for this block, fastest first; None when no table has the block.

    Asked at every forward of every block: the answer is cached per table set and question.
    """
    return _measured_order(table_paths(), device_name, dtype, mode, key, hw)


@functools.lru_cache(maxsize=4096)
def _measured_order(paths: tuple[str, ...], device_name: str, dtype: str, mode: str, key: str,
                    hw: int) -> Optional[tuple[str, ...]]:
    candidates = [
        e for t in _load(paths) if t["device"] == device_name and t["dtype"] == dtype
        for e in t["entries"] if e["mode"] == mode and e["block"] == key and e.get("ms")
    ]
    if not candidates:
        return None
    nearest = min(candidates, key=lambda e: abs(math.log(max(e["hw"], 1) / max(hw, 1))))
    return tuple(sorted(nearest["ms"], key=nearest["ms"].get))
