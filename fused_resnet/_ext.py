"""Lazy loading of the compiled extension ``fused_resnet._C``.

``import fused_resnet`` never loads it; the first call of ``load()`` or
``status()`` does, and remembers why it failed if it did.
"""
from __future__ import annotations

import functools
import importlib


@functools.lru_cache(maxsize=None)
def _load():
    try:
        return importlib.import_module("fused_resnet._C"), ""
    except ImportError as e:
        return None, f"fused_resnet._C is not built or failed to load ({e})"


def status() -> tuple[bool, str]:
    """(loaded, reason): whether ``_C`` is importable, and if not, why."""
    mod, reason = _load()
    return mod is not None, reason


def load():
    """The ``_C`` module; raises ImportError with the reason when it is not there."""
    mod, reason = _load()
    if mod is None:
        raise ImportError(reason)
    return mod
