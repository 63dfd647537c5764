"""Train a CIFAR ResNet of ``fused_resnet.models`` end to end, fused or eager.

The default recipe is that of He et al. (2016), section 4.2: SGD with learning rate
0.1, momentum 0.9, weight decay 1e-4, batch 128, the learning rate divided by 10 at
50% and 75% of the run (the paper's 32k and 48k of 64k iterations), random flips
and 4-pixel pad-and-crop. ``backend="eager"`` trains the unconverted model; any
other name trains ``fused_resnet.convert(model, backend)``.

An output directory gets ``log.csv`` (a row per evaluation), ``summary.json``,
``curves.png`` and ``checkpoint.pt`` (written at every row, so ``resume=True``
continues from the last row with the batches the uninterrupted run would have had).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import platform
import re
import sys
import time
from typing import Optional

import torch
from torch import Tensor, nn

from . import data as D
from ._files import atomic_write
from .models import VARIANTS, cifar_resnet
from .tools.models import cifar_kwargs

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PAPER_STEPS = 64000
EVAL_BATCH = 500
CHECKPOINT = "checkpoint.pt"
LOG_FIELDS = ("step", "epoch", "lr", "train_loss", "train_error_pct", "test_error_pct", "images_per_s", "wall_s")
MODEL_FORMS = ("cifar_resnet<depth>, cifar_plain<depth> or cifar_preact_resnet<depth>, depth 6n+2 "
               "(8, 14, 20, 32, 44, 56, 110, ...), optionally followed by _v1/_v2 (version) and _A/_B/_C (shortcut)")
# Fields that may differ between a run and its resumption: they change how the same
# arithmetic is computed, not what is computed.
_RESUMABLE_CHANGES = ("backend", "dtype", "channels_last", "compile", "device")


class OptionError(ValueError):
    """A training option that cannot be served, naming the option, the value and what is allowed."""


@dataclasses.dataclass
class TrainConfig:
    """What to train and how; ``epochs`` and ``steps`` are exclusive (neither: the paper's 64k steps)."""
    model: str = "cifar_resnet20"
    variant: Optional[str] = None
    dataset: str = "cifar10"
    data: Optional[str] = None
    download: bool = False
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    epochs: Optional[int] = None
    steps: Optional[int] = None
    batch: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    eval_every: Optional[int] = None
    backend: str = "auto"
    dtype: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    device: str = "auto"
    seed: int = 0


# ---------------------------------------------------------------- options


def model_kwargs(name: str, variant: Optional[str] = None) -> dict:
    """The keyword arguments of ``cifar_resnet`` that model ``name`` (and ``variant``) stand for."""
    kwargs = cifar_kwargs(name)
    if kwargs is None:
        raise OptionError(f"--model {name!r} is not a model of fused_resnet.models: expected {MODEL_FORMS}")
    depth = kwargs["depth"]
    if depth < 8 or (depth - 2) % 6:
        raise OptionError(f"--model {name!r}: depth {depth} is not 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...)")
    if variant is not None:
        if variant not in VARIANTS:
            raise OptionError(f"--variant {variant!r} is not one of: {', '.join(VARIANTS)}")
        if kwargs["plain"] or kwargs["version"] != 1:
            raise OptionError(f"--variant {variant!r} varies the units of a version-1 residual network; "
                              f"--model {name!r} is not one (use cifar_resnet<depth>)")
        kwargs["variant"] = variant
    return kwargs


def build_model(name: str, variant: Optional[str] = None, seed: int = 0) -> nn.Module:
    """The unconverted model, its weights drawn from ``seed``."""
    kwargs = model_kwargs(name, variant)
    torch.manual_seed(seed)
    return cifar_resnet(**kwargs)


def resolve_device(name: str) -> torch.device:
    """``name`` ("auto", "cpu", "cuda", "cuda:N") as a device of this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise OptionError(f"--device {name!r} is not one of: auto, cpu, cuda, cuda:N")
    device = torch.device(name)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda" and (device.index or 0) >= count:
        raise OptionError(f"--device {name!r}: this machine has {count} visible CUDA GPU(s)")
    return device


def backend_names() -> list[str]:
    from .backends import BACKENDS

    return ["eager", "auto", *BACKENDS]


def _positive(config: TrainConfig, field: str, minimum: float = 1) -> None:
    value = getattr(config, field)
    if value is not None and not value >= minimum:
        raise OptionError(f"--{field.replace('_', '-')} {value!r}: expected a number >= {minimum}")


def check_config(config: TrainConfig) -> torch.device:
    """Every option of ``config`` checked before any work starts; returns the device."""
    model_kwargs(config.model, config.variant)
    for field in ("train_size", "test_size", "epochs", "steps", "eval_every"):
        _positive(config, field)
    _positive(config, "batch", 2)  # batch statistics need two images
    for field in ("lr", "momentum", "weight_decay"):
        _positive(config, field, 0)
    if config.epochs is not None and config.steps is not None:
        raise OptionError(f"--epochs {config.epochs} and --steps {config.steps}: give one of them, not both")
    if config.backend not in backend_names():
        raise OptionError(f"--backend {config.backend!r} is not one of: {', '.join(backend_names())}")
    if config.dtype not in DTYPES:
        raise OptionError(f"--dtype {config.dtype!r} is not one of: {', '.join(DTYPES)}")
    device = resolve_device(config.device)
    if config.dtype != "fp32" and device.type != "cuda":
        raise OptionError(f"--dtype {config.dtype}: autocast runs on CUDA devices; on {device} train in fp32")
    try:
        D.check_source(config.dataset, config.data, config.download)
    except D.DataError as e:
        raise OptionError(str(e)) from None
    return device


# ---------------------------------------------------------------- the model as trained


def prepare(model: nn.Module, config: TrainConfig, device: torch.device) -> nn.Module:
    """``model`` converted to the backend (unless eager), moved to ``device`` and laid out."""
    from .convert import convert

    if config.backend != "eager":
        model = convert(model, backend=config.backend, inplace=True)
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    return model.to(device, memory_format=fmt)


def block_backends(model: nn.Module) -> dict[str, int]:
    """How many residual blocks run where: a fused backend's name, or "unfused <type>"."""
    from .blocks import FUSED_BLOCKS

    counts: dict[str, int] = {}
    for stage in (model.layer1, model.layer2, model.layer3):
        for block in stage:
            key = block.backend if isinstance(block, FUSED_BLOCKS) else f"unfused {type(block).__name__}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def _autocast(config: TrainConfig, device: torch.device):
    if config.dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[config.dtype])


def _inputs(images: Tensor, norm: D.Normalizer, config: TrainConfig) -> Tensor:
    x = norm(images)
    return x.contiguous(memory_format=torch.channels_last) if config.channels_last else x


@torch.no_grad()
def evaluate(model: nn.Module, test: D.ImageSet, norm: D.Normalizer, config: TrainConfig,
             device: torch.device) -> float:
    """Test error of ``model`` in percent (eval mode: BatchNorm's running statistics)."""
    was_training = model.training
    model.eval()
    wrong = torch.zeros((), dtype=torch.int64, device=device)
    for i in range(0, len(test), EVAL_BATCH):
        images, labels = test.images[i:i + EVAL_BATCH].to(device), test.labels[i:i + EVAL_BATCH].to(device)
        with _autocast(config, device):
            wrong += (model(_inputs(images, norm, config)).argmax(1) != labels).sum()
    model.train(was_training)
    return 100.0 * wrong.item() / max(len(test), 1)


# ---------------------------------------------------------------- the run


def total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    if config.steps is not None:
        return config.steps
    return config.epochs * steps_per_epoch if config.epochs is not None else PAPER_STEPS


def lr_at(config: TrainConfig, step: int, total: int) -> float:
    """The learning rate of ``step``: divided by 10 at 50% and again at 75% of the run."""
    drops = (step >= total // 2) + (step >= (3 * total) // 4)
    return config.lr * 0.1 ** drops


def _default_eval_every(steps_per_epoch: int, total: int) -> int:
    # Once an epoch, but at least ten rows in a run shorter than ten epochs.
    return max(1, min(steps_per_epoch, total // 10))


class _Trainer:
    """One training run's state: model, optimizer, batches, log rows and clocks."""

    def __init__(self, config: TrainConfig, device: torch.device, train: D.ImageSet, test: D.ImageSet) -> None:
        self.config, self.device, self.test = config, device, test
        self.batches = D.Batches(train, config.batch, config.seed, device)
        self.norm = D.Normalizer(train, device)
        self.total = total_steps(config, self.batches.steps_per_epoch)
        self.eval_every = config.eval_every or _default_eval_every(self.batches.steps_per_epoch, self.total)
        self.model = prepare(build_model(config.model, config.variant, config.seed), config, device)
        self.step_model = torch.compile(self.model) if config.compile else self.model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.dtype == "fp16")
        self.step, self.rows, self.train_seconds, self.wall_before = 0, [], 0.0, 0.0
        torch.manual_seed(config.seed)  # dropout draws from the global generator

    def state(self) -> dict:
        return {
            "config": dataclasses.asdict(self.config), "step": self.step, "rows": self.rows,
            "train_seconds": self.train_seconds, "wall_s": self.wall(), "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }

    def restore(self, state: dict) -> None:
        _check_same_run(self.config, state["config"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.rows = state["step"], state["rows"]
        self.train_seconds, self.wall_before = state["train_seconds"], state["wall_s"]
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self._started

    def run(self, out: str, progress) -> None:
        """Train from ``self.step`` to the end, writing a row (and the checkpoint) every ``eval_every`` steps."""
        self._started = time.perf_counter()
        self.model.train()
        while self.step < self.total:
            n = min(self.eval_every - self.step % self.eval_every, self.total - self.step)
            loss, wrong, seconds = self._train_steps(n)
            self.train_seconds += seconds
            self._add_row(n, loss, wrong, seconds)
            progress.set_postfix(loss=f"{self.rows[-1]['train_loss']:.3f}",
                                 test_err=f"{self.rows[-1]['test_error_pct']:.1f}%", refresh=False)
            progress.update(n)
            save_checkpoint(out, self.state())
            write_log(out, self.rows)

    def _train_steps(self, n: int) -> tuple[float, int, float]:
        """``n`` steps; the summed loss and errors stay on the device until the end (no sync per step)."""
        loss_sum = torch.zeros((), device=self.device)
        wrong = torch.zeros((), dtype=torch.int64, device=self.device)
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(n):
            images, labels = self.batches(self.step)
            lr = lr_at(self.config, self.step, self.total)
            loss, logits = self._step(_inputs(images, self.norm, self.config), labels, lr)
            loss_sum += loss.detach().float() * len(labels)
            wrong += (logits.detach().argmax(1) != labels).sum()
            self.step += 1
        loss_value, wrong_value = loss_sum.item(), wrong.item()
        return loss_value, wrong_value, time.perf_counter() - start

    def _step(self, x: Tensor, labels: Tensor, lr: float) -> tuple[Tensor, Tensor]:
        """One SGD step at learning rate ``lr``; returns (loss, logits)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with _autocast(self.config, self.device):
            logits = self.step_model(x)
            loss = nn.functional.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss, logits

    def _add_row(self, n: int, loss: float, wrong: int, seconds: float) -> None:
        images = n * self.config.batch
        self.rows.append({
            "step": self.step, "epoch": round(self.step / self.batches.steps_per_epoch, 4),
            "lr": lr_at(self.config, self.step - 1, self.total),
            "train_loss": loss / images, "train_error_pct": 100.0 * wrong / images,
            "test_error_pct": evaluate(self.model, self.test, self.norm, self.config, self.device),
            "images_per_s": images / seconds if seconds > 0 else math.inf, "wall_s": self.wall(),
        })


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_same_run(config: TrainConfig, saved: dict) -> None:
    now = dataclasses.asdict(config)
    differ = [k for k in now if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k]]
    if differ:
        said = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)!r} (now {now[k]!r})" for k in differ)
        raise OptionError(f"--resume: the checkpoint is of another run: it was trained with {said}; "
                          "resume with those options, or drop --resume (or use another --out) to start afresh")


# ---------------------------------------------------------------- files


def save_checkpoint(out: str, state: dict) -> None:
    atomic_write(os.path.join(out, CHECKPOINT), lambda p: torch.save(state, p))


def load_checkpoint(out: str, device: torch.device = torch.device("cpu")) -> Optional[dict]:
    """The checkpoint in ``out``, or None when there is none."""
    path = os.path.join(out, CHECKPOINT)
    if not os.path.isfile(path):
        return None
    return torch.load(path, map_location=device, weights_only=True)


def write_log(out: str, rows: list[dict]) -> None:
    def write(path: str) -> None:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            w.writeheader()
            w.writerows(rows)

    atomic_write(os.path.join(out, "log.csv"), write)


def write_json(path: str, obj: dict) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, default=str)
            f.write("\n")

    atomic_write(path, write)


def versions() -> dict:
    import torchvision

    from . import __version__

    return {"fused_resnet": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "cuda": torch.version.cuda}


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device}: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _summary(trainer: _Trainer) -> dict:
    last = trainer.rows[-1]
    epochs = trainer.total / trainer.batches.steps_per_epoch
    return {
        "config": dataclasses.asdict(trainer.config), "versions": versions(),
        "device": describe_device(trainer.device), "blocks": block_backends(trainer.model),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "steps": trainer.total, "epochs": round(epochs, 4), "steps_per_epoch": trainer.batches.steps_per_epoch,
        "final_train_loss": last["train_loss"], "final_train_error_pct": last["train_error_pct"],
        "final_test_error_pct": last["test_error_pct"],
        "train_seconds": trainer.train_seconds, "seconds_per_epoch": trainer.train_seconds / epochs,
        "total_seconds": last["wall_s"],
    }


# ---------------------------------------------------------------- entry points


def train(config: TrainConfig, out: str, resume: bool = False, quiet: bool = False,
          data: Optional[tuple[D.ImageSet, D.ImageSet]] = None, label: Optional[str] = None) -> dict:
    """Train ``config`` into the directory ``out``; returns the summary (also in ``out/summary.json``).

    ``resume`` continues from ``out/checkpoint.pt`` when there is one; ``data`` is a loaded
    (train, test) pair to use instead of loading ``config.dataset``; ``label`` names the
    progress bar.
    """
    device = check_config(config)
    os.makedirs(out, exist_ok=True)
    train_set, test_set = data or D.load(config.dataset, config.data, config.download,
                                         config.train_size, config.test_size)
    trainer = _Trainer(config, device, train_set, test_set)
    state = load_checkpoint(out, device) if resume else None
    if state is not None:
        trainer.restore(state)
    elif resume and not quiet:
        print(f"--resume: no {CHECKPOINT} in {out}; starting at step 0", file=sys.stderr)
    from tqdm import tqdm

    with tqdm(total=trainer.total, initial=trainer.step, desc=label or config.model, unit="step",
              disable=quiet, file=sys.stderr, dynamic_ncols=True) as progress:
        trainer.run(out, progress)
    summary = _summary(trainer)
    write_json(os.path.join(out, "summary.json"), summary)
    write_log(out, trainer.rows)
    draw_curves(out, trainer.rows, label or config.model)
    return summary


def draw_curves(out: str, rows: list[dict], title: str) -> None:
    """``out/curves.png``; without matplotlib, a line on stderr instead."""
    from . import plot

    try:
        plot.curves(rows, os.path.join(out, "curves.png"), title)
    except ImportError as e:
        print(f"curves.png not drawn: {e}", file=sys.stderr)


def compare(config: TrainConfig, out: str, against: str = "eager", resume: bool = False,
            quiet: bool = False) -> dict:
    """``config`` trained into ``out`` and, from the same seed, with backend ``against`` into
    ``out/<against>``; the summary of the first gains "compare", and ``out/compare.md`` has both."""
    if against not in backend_names():
        raise OptionError(f"--compare {against!r} is not one of: {', '.join(backend_names())}")
    if against == config.backend:
        raise OptionError(f"--compare {against!r}: the run itself uses --backend {config.backend!r}; "
                          "compare against another backend")
    check_config(config)
    data = D.load(config.dataset, config.data, config.download, config.train_size, config.test_size)
    main = train(config, out, resume, quiet, data, label=f"{config.model} [{config.backend}]")
    other = train(dataclasses.replace(config, backend=against), os.path.join(out, against), resume, quiet, data,
                  label=f"{config.model} [{against}]")
    main["compare"] = {against: {k: other[k] for k in _COMPARED}}
    write_json(os.path.join(out, "summary.json"), main)
    with open(os.path.join(out, "compare.md"), "w") as f:
        f.write(compare_table({config.backend: main, against: other}))
    return main


_COMPARED = ("seconds_per_epoch", "final_train_error_pct", "final_test_error_pct", "final_train_loss",
             "train_seconds", "blocks")


def compare_table(runs: dict[str, dict]) -> str:
    """A markdown table of the runs side by side: seconds per epoch and final errors."""
    lines = ["| backend | s/epoch | final train loss | final train error % | final test error % | blocks |",
             "|---|---|---|---|---|---|"]
    for name, s in runs.items():
        blocks = ", ".join(f"{n} {k}" for k, n in s["blocks"].items())
        lines.append(f"| {name} | {s['seconds_per_epoch']:.3f} | {s['final_train_loss']:.4f} | "
                     f"{s['final_train_error_pct']:.2f} | {s['final_test_error_pct']:.2f} | {blocks} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- command line


def add_options(p) -> None:
    """The options ``fused-resnet train`` and ``experiment`` share (checked by ``check_config``)."""
    d = TrainConfig()
    p.add_argument("--dataset", default=d.dataset, choices=D.DATASETS,
                   help="cifar10 (torchvision's, from --data) or synthetic (made in-process, no files); "
                        f"default {d.dataset}")
    p.add_argument("--data", metavar="DIR", help="the directory holding cifar-10-batches-py/")
    p.add_argument("--download", action="store_true", help="fetch CIFAR-10 into --data if it is not there")
    p.add_argument("--train-size", type=int, metavar="N", help="train on the first N images only")
    p.add_argument("--test-size", type=int, metavar="N", help="evaluate on the first N test images only")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=int, metavar="N", help="train N epochs")
    g.add_argument("--steps", type=int, metavar="N", help=f"train N steps (default: the paper's {PAPER_STEPS})")
    p.add_argument("--batch", type=int, default=d.batch, metavar="N", help=f"images per step (default {d.batch})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"initial learning rate (default {d.lr}; divided by 10 "
                   "at 50%% and 75%% of the run)")
    p.add_argument("--momentum", type=float, default=d.momentum, help=f"default {d.momentum}")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"default {d.weight_decay}")
    p.add_argument("--eval-every", type=int, metavar="N",
                   help="steps between log rows (default: an epoch, or a tenth of a shorter run)")
    p.add_argument("--backend", default=d.backend, metavar="NAME",
                   help="eager (the unconverted model) or a fused backend: auto, reference, triton, cuda "
                        f"(default {d.backend})")
    p.add_argument("--dtype", default=d.dtype, choices=list(DTYPES), help="autocast dtype on CUDA (default fp32)")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and inputs")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default=d.device, help="auto (cuda if visible), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=d.seed, help="weights, batch order and augmentation (default 0)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in the output directory")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def add_arguments(p) -> None:
    """The arguments of ``fused-resnet train``."""
    p.add_argument("--model", default=TrainConfig.model, metavar="NAME",
                   help=f"{MODEL_FORMS}; default {TrainConfig.model}")
    p.add_argument("--variant", metavar="NAME", help=f"a residual-unit variant: {', '.join(VARIANTS)}")
    add_options(p)
    p.add_argument("--out", metavar="DIR", help="output directory (default runs/<model>)")
    p.add_argument("--compare", metavar="BACKEND",
                   help="also train the same seed with BACKEND (e.g. eager) into OUT/BACKEND, side by side")


def config_from_args(args) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                          if hasattr(args, f.name)})


def command(args) -> int:
    """``fused-resnet train``: trains, then prints the final errors and the files written."""
    config = config_from_args(args)
    out = args.out or os.path.join("runs", config.model + (f"-{config.variant}" if config.variant else ""))
    if args.compare:
        summary = compare(config, out, args.compare, args.resume, args.quiet)
        with open(os.path.join(out, "compare.md")) as f:
            print(f.read(), end="")
    else:
        summary = train(config, out, args.resume, args.quiet)
    print(describe(summary))
    written = [n for n in ("log.csv", "summary.json", "curves.png", "compare.md", CHECKPOINT)
               if os.path.isfile(os.path.join(out, n))]
    print(f"wrote {', '.join(os.path.join(out, n) for n in written)}")
    return 0


def describe(summary: dict) -> str:
    """One line: what was trained where, its final errors and time per epoch."""
    c = summary["config"]
    blocks = ", ".join(f"{n} {k}" for k, n in summary["blocks"].items())
    return (f"{c['model']}{' ' + c['variant'] if c['variant'] else ''} on {c['dataset']}, {summary['steps']} steps "
            f"({summary['epochs']:g} epochs), blocks: {blocks}: final train loss {summary['final_train_loss']:.4f}, "
            f"train error {summary['final_train_error_pct']:.2f}%, test error {summary['final_test_error_pct']:.2f}%, "
            f"{summary['seconds_per_epoch']:.2f} s/epoch ({summary['device']})")
