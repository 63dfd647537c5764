"""Charts of training runs and experiments (``fused-resnet train`` and ``experiment``).

matplotlib is imported here only, when a chart is drawn; without it the caller
gets an ImportError that says how to install it. Figures are drawn without pyplot,
so no window opens and no display is needed.
"""
from __future__ import annotations

from typing import Optional, Sequence

MISSING = "it needs the matplotlib package, which is not installed here: pip install matplotlib"


def _figure(**kwargs):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(MISSING) from None
    return Figure(**kwargs)


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
