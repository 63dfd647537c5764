"""The residual-network experiments, each a set of training runs with the same options.

  degradation   plain and residual CIFAR nets at each depth (He et al. 2016, Fig. 1 and 6):
                training error curves, plain dashed
  shortcuts     the shortcut variants of "Identity Mappings" (Table 1, Fig. 2) on one network
  activations   the activation placements of "Identity Mappings" (Table 2, Fig. 4)
  lesion        a residual and a plain net trained, then each block deleted in turn at test
                time (Veit et al. 2016): test error against the deleted block

A run goes to ``OUT/<label>/`` (train's files, resumable); the experiment writes
``OUT/results.csv``, ``OUT/results.md`` and ``OUT/<name>.png``.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import sys
from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn

from . import data as D
from . import train as T
from .models import ACTIVATION_VARIANTS, SHORTCUT_VARIANTS

EXPERIMENTS = ("degradation", "shortcuts", "activations", "lesion")
# The paper's depths: plain/residual 20 and 56 (Fig. 1), variants and lesions on ResNet-110.
DEFAULT_DEPTHS = {"degradation": (20, 56), "shortcuts": (110,), "activations": (110,), "lesion": (110,)}


class Run(NamedTuple):
    label: str
    model: str
    variant: Optional[str] = None


def plan(name: str, depths: Sequence[int]) -> list[Run]:
    """The runs of experiment ``name`` at ``depths``."""
    for d in depths:
        if d < 8 or (d - 2) % 6:
            raise T.OptionError(f"--depth {d} is not 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...)")
    if name in ("degradation", "lesion"):
        return [Run(f"{kind}-{d}", f"cifar_{kind}{d}") for d in depths for kind in ("plain", "resnet")]
    if name in ("shortcuts", "activations"):
        variants = SHORTCUT_VARIANTS if name == "shortcuts" else ACTIVATION_VARIANTS
        return [Run(f"{v}-{d}", f"cifar_resnet{d}", v) for d in depths for v in variants]
    raise T.OptionError(f"experiment {name!r} is not one of: {', '.join(EXPERIMENTS)}")


def run_experiment(name: str, config: T.TrainConfig, out: str, depths: Optional[Sequence[int]] = None,
                   resume: bool = False, quiet: bool = False) -> list[dict]:
    """Trains every run of experiment ``name`` with ``config``'s options into ``out``; returns the table rows."""
    runs = plan(name, depths or DEFAULT_DEPTHS[name])
    configs = {r.label: dataclasses.replace(config, model=r.model, variant=r.variant) for r in runs}
    for c in configs.values():
        T.check_config(c)
    data = D.load(config.dataset, config.data, config.download, config.train_size, config.test_size)
    summaries = {r.label: T.train(configs[r.label], os.path.join(out, r.label), resume, quiet, data, r.label)
                 for r in runs}
    if name == "lesion":
        rows = _lesion(runs, configs, out, data)
    else:
        rows = [_result_row(r, summaries[r.label]) for r in runs]
        _plot_curves(name, runs, out, config.dataset)
    _write_table(out, rows, _note(config.dataset))
    return rows


def _result_row(run: Run, s: dict) -> dict:
    return {
        "run": run.label, "model": run.model, "variant": run.variant or "",
        "blocks": ", ".join(f"{n} {k}" for k, n in s["blocks"].items()), "parameters": s["parameters"],
        "final_train_loss": round(s["final_train_loss"], 4),
        "final_train_error_pct": round(s["final_train_error_pct"], 2),
        "final_test_error_pct": round(s["final_test_error_pct"], 2),
        "seconds_per_epoch": round(s["seconds_per_epoch"], 3),
    }


def _note(dataset: str) -> str:
    if dataset == "synthetic":
        return "Trained on the synthetic task (fused_resnet.data.synthetic), not CIFAR-10: no CIFAR-10 numbers here."
    return "Trained on CIFAR-10."


# ---------------------------------------------------------------- lesion


def deleted(block: nn.Module) -> Optional[nn.Module]:
    """What stands in for ``block`` once deleted: its shortcut (identity or downsampling
    module) in a residual net, the identity in a plain net where the shape allows it, else None."""
    if not _plain(block):
        return block.downsample if block.downsample is not None else nn.Identity()
    keeps_shape = block.conv1.stride == (1, 1) and block.conv1.in_channels == block.conv2.out_channels
    return nn.Identity() if keeps_shape else None


def _plain(block: nn.Module) -> bool:
    from .models import PlainBasicBlock, PlainPreActBasicBlock

    return isinstance(block, (PlainBasicBlock, PlainPreActBasicBlock))


def lesion_errors(model: nn.Module, test: D.ImageSet, norm: D.Normalizer, config: T.TrainConfig,
                  device: torch.device) -> dict[str, Optional[float]]:
    """{"none": test error, "layerS.I": test error with that block deleted (None: it cannot be)}."""
    errors = {"none": T.evaluate(model, test, norm, config, device)}
    for stage_name in ("layer1", "layer2", "layer3"):
        stage = getattr(model, stage_name)
        for i, block in enumerate(list(stage)):
            stand_in = deleted(block)
            errors[f"{stage_name}.{i}"] = None
            if stand_in is not None:
                stage[i] = stand_in
                errors[f"{stage_name}.{i}"] = T.evaluate(model, test, norm, config, device)
                stage[i] = block
    return errors


def trained_model(out: str, config: T.TrainConfig, device: torch.device) -> nn.Module:
    """The model trained into ``out`` (from its checkpoint), prepared as ``config`` trains it."""
    state = T.load_checkpoint(out, device)
    model = T.build_model(config.model, config.variant)
    model.load_state_dict(state["model"])
    return T.prepare(model, config, device)


def _lesion(runs: list[Run], configs: dict, out: str, data) -> list[dict]:
    train_set, test_set = data
    per_run = {}
    for r in runs:
        device = T.resolve_device(configs[r.label].device)
        model = trained_model(os.path.join(out, r.label), configs[r.label], device)
        per_run[r.label] = lesion_errors(model, test_set, D.Normalizer(train_set, device), configs[r.label], device)
    blocks = list(next(iter(per_run.values())))
    rows = [{"deleted_block": b, **{f"{label}_test_error_pct": _rounded(e[b]) for label, e in per_run.items()}}
            for b in blocks]
    _draw("lesion", lambda p: _lesion_plot(per_run, blocks, p), out)
    return rows


def _lesion_plot(per_run: dict, blocks: list[str], path: str) -> None:
    from . import plot

    errors = {label: [e[b] for b in blocks[1:]] for label, e in per_run.items()}
    baselines = {label: e["none"] for label, e in per_run.items()}
    plot.lesion(blocks[1:], errors, baselines, path, "test error with one block deleted (dotted: none)")


def _rounded(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(x, 2)


# ---------------------------------------------------------------- outputs


def read_log(out: str) -> list[dict]:
    with open(os.path.join(out, "log.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _plot_curves(name: str, runs: list[Run], out: str, dataset: str) -> None:
    from . import plot

    logs = {r.label: read_log(os.path.join(out, r.label)) for r in runs}
    if name == "degradation":
        title, key = f"degradation ({dataset}): training error, plain dashed", "train_error_pct"
        dashed = [r.label for r in runs if r.label.startswith("plain")]
    else:
        title, key, dashed = f"{name} ({dataset}): test error", "test_error_pct", None
    _draw(name, lambda p: plot.error_curves(logs, p, title, key, dashed), out)


def _draw(name: str, draw, out: str) -> None:
    path = os.path.join(out, f"{name}.png")
    try:
        draw(path)
    except ImportError as e:
        print(f"{name}.png not drawn: {e}", file=sys.stderr)


def _write_table(out: str, rows: list[dict], note: str) -> None:
    fields = list(rows[0])
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    lines = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join("-" if r[k] is None else str(r[k]) for k in fields) + " |" for r in rows]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + f"\n\n{note}\n")


# ---------------------------------------------------------------- command line


def _depths(text: str) -> tuple[int, ...]:
    import argparse

    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected depths as comma-separated integers, got {text!r}") from None


def add_arguments(p) -> None:
    """The arguments of ``fused-resnet experiment``."""
    p.add_argument("name", choices=EXPERIMENTS, metavar="NAME", help=f"one of: {', '.join(EXPERIMENTS)}")
    p.add_argument("--depth", type=_depths, metavar="D[,D...]",
                   help="network depths, 6n+2 (default: degradation 20,56; the others 110)")
    T.add_options(p)
    p.add_argument("--out", metavar="DIR", help="output directory (default runs/<NAME>)")


def command(args) -> int:
    """``fused-resnet experiment``: runs it, prints its table and the files written."""
    out = args.out or os.path.join("runs", args.name)
    run_experiment(args.name, T.config_from_args(args), out, args.depth, args.resume, args.quiet)
    with open(os.path.join(out, "results.md")) as f:
        print(f.read(), end="")
    written = [os.path.join(out, n) for n in ("results.csv", "results.md", f"{args.name}.png")]
    print(f"wrote {', '.join(p for p in written if os.path.isfile(p))} and a directory per run")
    return 0
