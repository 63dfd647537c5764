"""Per-shape choice between a fused kernel and the unfused passes that honour the same contract.

A fused convolution is only worth running where it is faster than cuDNN's convolution
plus the separate memory-bound pass(es) it replaces, and that depends on the shape
and the GPU. Like ``torch.backends.cudnn.benchmark``, the backend times the
candidates once per problem (``key``: the op, the shapes, dtype, flags and device) on
its first call, takes the fastest and remembers it for the process; every later call
with that key runs the remembered candidate without timing. ``choices()`` lists what
was taken and the times it was taken on; ``fused_resnet`` logs each new choice at
DEBUG level.

No timing, and the ``default`` candidate (the fused kernel), when:
- the tensors are not on a CUDA device, or a CUDA graph is being captured;
- ``torch.use_deterministic_algorithms(True)`` is on: which candidate runs decides how
  the sums are rounded, so a choice that follows the clock would make the bits depend
  on it;
- ``FUSED_RESNET_CHOOSE=0``.
A problem decided without timing is not remembered: the first call that may time it does.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import statistics
from typing import Callable, Hashable

import torch

log = logging.getLogger("fused_resnet")

# Timed runs per candidate after one warm-up run; the median is taken.
REPEATS = 5


@dataclasses.dataclass(frozen=True)
class Choice:
    taken: str
    times_ms: dict


_CHOICES: dict[Hashable, Choice] = {}


def choose(key: Hashable, candidates: dict[str, Callable[[], object]], default: str,
           device: torch.device) -> str:
    """The name of the candidate to run for ``key``: the fastest by measurement (timed on the
    first call that may time), else ``default``. Each candidate is a thunk that runs it in
    full on the real operands (outputs discarded)."""
    hit = _CHOICES.get(key)
    if hit is not None:
        return hit.taken
    if len(candidates) == 1 or not measurable(device):
        return default
    times = _time_candidates(candidates)
    taken = min(times, key=times.get)
    _CHOICES[key] = Choice(taken, times)
    log.debug("fused_resnet: %s -> %s (%s)", key, taken,
              ", ".join(f"{n} {t:.3f} ms" for n, t in times.items()))
    return taken


def measurable(device: torch.device) -> bool:
    """Whether a choice may be timed now (see the module docstring)."""
    if os.environ.get("FUSED_RESNET_CHOOSE", "1") == "0" or torch.are_deterministic_algorithms_enabled():
        return False
    return device.type == "cuda" and not torch.cuda.is_current_stream_capturing()


def _time_candidates(candidates: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Each candidate's median milliseconds, timed one after another."""
    return {name: _time_ms(run) for name, run in candidates.items()}


def _time_ms(run: Callable[[], object]) -> float:
    """Median milliseconds of ``run`` on the current stream, after one warm-up run."""
    run()
    times = []
    for _ in range(REPEATS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def choices() -> dict:
    """Every choice made in this process: key -> (candidate taken, {candidate: median ms})."""
    return {key: (c.taken, dict(c.times_ms)) for key, c in _CHOICES.items()}


def clear() -> None:
    """Forget every choice (the next call of each problem times its candidates again)."""
    _CHOICES.clear()


def choices_table() -> list[dict]:
    """``choices()`` as JSON-ready rows: the key in words, the candidate taken, the times."""
    return [{"problem": " ".join(map(str, key)), "taken": taken, "ms": ms} for key, (taken, ms) in choices().items()]
