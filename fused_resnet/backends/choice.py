"""Per-shape choice between a fused kernel and the unfused passes that honour the same contract.

A fused convolution is only worth running where it is faster than cuDNN's convolution
plus the separate memory-bound pass(es) it replaces, and that depends on the shape
and the GPU. Like ``torch.backends.cudnn.benchmark``, the backend times the
candidates once per problem (``key``: the op, the shapes, dtype, flags and device) on
its first call, takes the fastest and remembers it for the process; every later call
with that key runs the remembered candidate without timing. ``choices()`` lists what
was taken and the times it was taken on; ``fused_resnet`` logs each new choice at
DEBUG level. With ``FUSED_RESNET_CHOICE_CACHE=1`` the choices also persist across
processes, in one JSON file per GPU name, torch and cuDNN version in the tuning cache
directory (``triton.tuning.cache_dir()``); a file that cannot be read or written costs
one warning, and the problem is timed.

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
import json
import logging
import os
import re
import statistics
import warnings
from pathlib import Path
from typing import Callable, Hashable, Optional

import torch

from .._files import atomic_write
from .triton.tuning import cache_dir

log = logging.getLogger("fused_resnet")

# Timed runs per candidate after one warm-up run; the median is taken.
REPEATS = 5


@dataclasses.dataclass(frozen=True)
class Choice:
    taken: str
    times_ms: dict
    reason: str  # why it was taken, in words


_CHOICES: dict[Hashable, Choice] = {}

UNTIMED = "not timed (CPU tensors, CUDA graph capture, deterministic algorithms or FUSED_RESNET_CHOOSE=0)"


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
    path = _disk_path(device)
    stored = _read(path).get(_disk_key(key)) if path else None
    if stored in candidates:
        _CHOICES[key] = Choice(stored, {}, f"read from {path}")
        return stored
    times = _time_candidates(candidates)
    taken = min(times, key=times.get)
    timed = ", ".join(f"{n} {t:.3f} ms" for n, t in times.items())
    _CHOICES[key] = Choice(taken, times, f"the faster when timed: {timed}")
    if path:
        _write(path, {_disk_key(key): taken})
    log.debug("fused_resnet: %s -> %s (%s)", key, taken, timed)
    return taken


def why(key: Hashable) -> str:
    """Why ``choose`` took what it took for ``key``: the times, the choices file, or ``UNTIMED``."""
    hit = _CHOICES.get(key)
    return hit.reason if hit is not None else UNTIMED


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


# ---------------------------------------------------------------- on disk (FUSED_RESNET_CHOICE_CACHE=1)

_FILES: dict[Path, dict[str, str]] = {}  # file -> {disk key: candidate}, as last read or written
_WARNED: set[Path] = set()


def _disk_path(device: torch.device) -> Optional[Path]:
    """The choices file of this GPU and torch/cuDNN versions, or None when not asked for."""
    if os.environ.get("FUSED_RESNET_CHOICE_CACHE", "0") != "1":
        return None
    name = (f"choices__{torch.cuda.get_device_name(device)}__torch-{torch.__version__}"
            f"__cudnn-{torch.backends.cudnn.version()}")
    return cache_dir() / (re.sub(r"[^A-Za-z0-9._-]+", "_", name) + ".json")


def _disk_key(key: Hashable) -> str:
    """``key`` in words, without device indices (the file names the GPU)."""
    def word(a):
        if isinstance(a, torch.device):
            return a.type
        return tuple(map(word, a)) if isinstance(a, tuple) and not isinstance(a, torch.Size) else a
    return repr(word(key))


def _read(path: Path) -> dict[str, str]:
    if path not in _FILES:
        try:
            _FILES[path] = _load(path)
        except (OSError, ValueError) as e:
            _warn(path, f"cannot be read ({e}); its problems are timed again")
            _FILES[path] = {}
    return _FILES[path]


def _load(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError("expected a JSON object of problem -> candidate name")
    return data


def _write(path: Path, new: dict[str, str]) -> None:
    """Merge ``new`` into the file (read again first: another process may have added to it),
    written atomically; a failure costs one warning."""
    try:
        merged = {**_load(path), **new}
    except (OSError, ValueError):
        merged = dict(new)
    _FILES[path] = merged
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(merged, indent=1, sort_keys=True)))
    except OSError as e:
        _warn(path, f"cannot be written ({e}); choices are not remembered across processes")


def _warn(path: Path, what: str) -> None:
    if path not in _WARNED:
        _WARNED.add(path)
        warnings.warn(f"fused_resnet: the cuda backend's choices file {path} {what}", RuntimeWarning, stacklevel=3)


def choices() -> dict:
    """Every choice made in this process: key -> (candidate taken, {candidate: median ms})."""
    return {key: (c.taken, dict(c.times_ms)) for key, c in _CHOICES.items()}


def clear() -> None:
    """Forget every choice and every choices file read (as a new process would)."""
    _CHOICES.clear()
    _FILES.clear()
    _WARNED.clear()


def choices_table() -> list[dict]:
    """``choices()`` as JSON-ready rows: the key in words, the candidate taken, the times."""
    return [{"problem": " ".join(map(str, key)), "taken": taken, "ms": ms} for key, (taken, ms) in choices().items()]
