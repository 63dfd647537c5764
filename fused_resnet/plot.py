"""Charts of a benchmark table and of a parity report, for ``fused-resnet bench --plot``
and ``fused-resnet check --plot``.

matplotlib is imported here only, when a chart is asked for; it is not a dependency
of the package (``pip install matplotlib``). Figures are drawn without pyplot, so no
window opens and no display is needed.
"""
from __future__ import annotations

import math
from typing import Sequence

MISSING = "charts need the matplotlib package, which is not installed here: pip install matplotlib"
# err / tol below this is drawn at it: a log axis cannot show 0.
RATIO_FLOOR = 1e-4


def _figure(**kwargs):
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"{MISSING} ({e})") from None
    return Figure(**kwargs)


def file_formats() -> dict[str, str]:
    """{file extension: description} of the formats matplotlib can write."""
    return _figure().canvas.get_supported_filetypes()


# ---------------------------------------------------------------- bench


def _run_label(row: dict) -> str:
    label = row["variant"]
    if row.get("requested_backend"):
        label += f"\n[{row['requested_backend']}]"
    return label + ("\n(failed)" if row.get("error") else "")


def _bars(ax, labels: Sequence[str], values: Sequence, title: str, fmt: str) -> None:
    xs = range(len(labels))
    heights = [v if v is not None else 0.0 for v in values]
    bars = ax.bar(xs, heights, color="tab:blue")
    ax.bar_label(bars, labels=[format(v, fmt) if v is not None else "-" for v in values], fontsize=8)
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_title(title, fontsize=10)


def bench_chart(rows: Sequence[dict], path: str, title: str) -> None:
    """Three panels, one bar per run: img/s, speed-up over eager, peak GPU memory."""
    fig = _figure(figsize=(13, 4.2), layout="constrained")
    img, speed, mem = fig.subplots(1, 3)
    labels = [_run_label(r) for r in rows]
    _bars(img, labels, [r.get("img_per_s") for r in rows], "images/s (median step)", ".1f")
    _bars(speed, labels, [r.get("speedup_vs_eager") for r in rows], "speed-up over eager", ".2f")
    speed.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    peaks = [r.get("peak_GB") for r in rows]
    _bars(mem, labels, peaks, "peak memory (GB)", ".2f")
    if all(p is None for p in peaks):
        mem.text(0.5, 0.5, "not measured on the CPU", ha="center", va="center", transform=mem.transAxes)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path)


def blocks_chart(rows: Sequence[dict], path: str, title: str) -> None:
    """bench/bench_blocks.py's table: one panel per block and mode, the median step (ms) of
    each variant."""
    groups = list(dict.fromkeys((r["key"], r["mode"]) for r in rows))
    fig = _figure(figsize=(4.4 * len(groups), 4.2), layout="constrained")
    for ax, (key, mode) in zip(fig.subplots(1, len(groups), squeeze=False)[0], groups):
        runs = [r for r in rows if (r["key"], r["mode"]) == (key, mode)]
        _bars(ax, [_run_label(r) for r in runs], [r.get("median_ms") for r in runs], f"{key} {mode}: ms per step",
              ".3f")
    fig.suptitle(title, fontsize=11)
    fig.savefig(path)


# ---------------------------------------------------------------- check


def _ratio(item) -> float:
    """err / tol, at least RATIO_FLOOR; inf when the error is not finite or there is no tolerance."""
    if not math.isfinite(item.err):
        return math.inf
    if item.tol <= 0:
        return RATIO_FLOOR if item.err == 0 else math.inf
    return max(item.err / item.tol, RATIO_FLOOR)


def check_chart(report, path: str, title: str) -> None:
    """Every compared tensor in report order, coloured by kind: its error and plain PyTorch's
    (top; zero errors are not drawn), and its error over its tolerance (bottom: a red cross
    above the line at 1 fails; non-finite errors are drawn at the top)."""
    fig = _figure(figsize=(13, 6.5), layout="constrained")
    errs, ratios = fig.subplots(2, 1, sharex=True)
    items = report.items
    r = [_ratio(i) for i in items]
    top = 10 * max([v for v in r if math.isfinite(v)] + [10.0])
    r = [v if math.isfinite(v) else top for v in r]
    for n, group in enumerate(dict.fromkeys(i.group for i in items)):
        idx = [k for k, i in enumerate(items) if i.group == group]
        shown = [k for k in idx if 0 < items[k].err < math.inf]
        errs.scatter(shown, [items[k].err for k in shown], s=8, color=f"C{n % 10}", label=group)
        ratios.scatter(idx, [r[k] for k in idx], s=8, color=f"C{n % 10}")
    plain = [k for k, i in enumerate(items) if i.plain_err]
    errs.scatter(plain, [items[k].plain_err for k in plain], s=10, marker="_", color="grey")
    failed = [k for k, i in enumerate(items) if not i.ok]
    ratios.scatter(failed, [r[k] for k in failed], s=30, marker="x", color="red")
    errs.set_yscale("log")
    errs.set_ylabel("error (grey: plain PyTorch's)")
    errs.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ratios.set_yscale("log")
    ratios.axhline(1.0, color="red", linestyle="--", linewidth=1)
    ratios.set_ylabel(f"error / tolerance (>= {RATIO_FLOOR:g})")
    ratios.set_xlabel("compared tensor (in the report's order)")
    fig.suptitle(title, fontsize=11)
    fig.savefig(path)
