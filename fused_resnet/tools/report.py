"""What the tools print: progress lines on stderr, result tables on stdout."""
from __future__ import annotations

import math
import sys
from typing import Any, Iterable, Sequence


def progress(msg: str, enabled: bool = True) -> None:
    """Progress lines go to stderr so that stdout holds only the result table."""
    if enabled:
        print(f"[fused-resnet] {msg}", file=sys.stderr, flush=True)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table; the first column left-aligned, the others right-aligned. The
    numbers of a column share one format (``column_format``)."""
    rows = [list(r) for r in rows]
    formats = [column_format([r[i] for r in rows if i < len(r)]) for i in range(len(headers))]
    body = [[_cell(v, f) for v, f in zip(row, formats)] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in body]
    return "\n".join(out)


def column_format(values: Sequence[Any]) -> str:
    """One format for every float of a table column: ``.2e`` when one of them is below 1e-2
    or from 1e5 up, else ``.1f`` when one is from 100 up, else ``.2f``."""
    mags = [abs(v) for v in values if isinstance(v, float) and math.isfinite(v) and v != 0]
    if any(m < 1e-2 or m >= 1e5 for m in mags):
        return ".2e"
    return ".1f" if any(m >= 100 for m in mags) else ".2f"


def _cell(v: Any, fmt: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "ok" if v else "FAIL"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else format(v, fmt)
    return str(v)
