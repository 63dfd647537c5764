"""Writing a file whole or not at all."""
from __future__ import annotations

import os
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path`` (same folder, same extension, so tools
    that read the format off the name still do), then rename it over ``path``: a reader or a
    crash sees the old file or the new one whole, never half of one. The folder must exist."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
