"""Charts: a benchmark table and a parity report (``fused-resnet bench --plot`` and
``fused-resnet check --plot``, bench/'s --plot), training runs and experiments
(``fused-resnet train`` and ``experiment``).

matplotlib is imported here only, when a chart is asked for; it is not a dependency
of the package (``pip install matplotlib``). Figures are drawn without pyplot, so no
window opens and no display is needed.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

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


# ---------------------------------------------------------------- training runs and experiments


def _column(rows: Sequence[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows]


def curves(rows: Sequence[dict], path: str, title: str) -> None:
    """One run: training loss (left) and training and test error (right) against the step."""
    fig = _figure(figsize=(10, 4), layout="constrained")
    loss, err = fig.subplots(1, 2)
    steps = _column(rows, "step")
    loss.plot(steps, _column(rows, "train_loss"), color="tab:blue")
    loss.set_xlabel("step")
    loss.set_ylabel("training loss")
    err.plot(steps, _column(rows, "train_error_pct"), color="tab:blue", linestyle="--", label="train")
    err.plot(steps, _column(rows, "test_error_pct"), color="tab:red", label="test")
    err.set_xlabel("step")
    err.set_ylabel("error (%)")
    err.legend()
    fig.suptitle(title, fontsize=11)
    fig.savefig(path)


def error_curves(runs: dict[str, Sequence[dict]], path: str, title: str, key: str,
                 dashed: Optional[Sequence[str]] = None) -> None:
    """Several runs' ``key`` column against the step, one line each (those in ``dashed`` dashed)."""
    fig = _figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for n, (label, rows) in enumerate(runs.items()):
        style = "--" if dashed and label in dashed else "-"
        ax.plot(_column(rows, "step"), _column(rows, key), linestyle=style, color=f"C{n % 10}", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(key.replace("_pct", " (%)").replace("_", " "))
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path)


def lesion(blocks: Sequence[str], errors: dict[str, Sequence[Optional[float]]], baselines: dict[str, float],
           path: str, title: str) -> None:
    """Test error against the deleted block, one line per network (None: that block cannot be deleted),
    each network's error with no block deleted as a dotted line."""
    fig = _figure(figsize=(max(7.0, 0.35 * len(blocks)), 4.5), layout="constrained")
    ax = fig.subplots()
    xs = range(len(blocks))
    for n, (label, errs) in enumerate(errors.items()):
        shown = [(x, e) for x, e in zip(xs, errs) if e is not None]
        ax.plot([x for x, _ in shown], [e for _, e in shown], marker="o", color=f"C{n}", label=label)
        ax.axhline(baselines[label], color=f"C{n}", linestyle=":", linewidth=1)
    ax.set_xticks(list(xs), blocks, rotation=90, fontsize=7)
    ax.set_xlabel("deleted block")
    ax.set_ylabel("test error (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path)
