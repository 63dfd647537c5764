"""Whole-model parity: a torchvision (or CIFAR) model against its converted twin on one
seeded batch, every tensor judged by fused_resnet.tolerance's rule (``fused-resnet check``)."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..convert import convert
from ..tolerance import FP32_ATOL, FP32_RTOL, LOWP_ATOL, WHOLE_MODEL_GRAD_ATOL, bound_2x, max_err, rel_err, \
    within
from .env import default_device, dtype_name, gpu_name
from .models import ModelSpec, block_backends, build_model, calibrate_batchnorm, fused_blocks, make_input, \
    model_spec, perturb_batchnorm
from .report import format_table, progress


@dataclasses.dataclass
class Item:
    group: str      # "block", "logits", "running_mean", ..., "replay.out", "replay.dx", "replay.grad",
                    # "input.grad", "param.grad"
    name: str
    err: float      # max |fused - reference| (or, metric "rel", ||fused - ref|| / ||ref||)
    scale: float    # max |reference| (1 for metric "rel")
    tol: float
    plain_err: Optional[float] = None  # the same measure for plain PyTorch in the same dtype
    note: str = ""
    metric: str = "max"

    @property
    def ok(self) -> bool:
        return within(self.err, self.tol)


@dataclasses.dataclass
class ParityReport:
    header: dict
    items: list[Item]
    problems: list[str]
    backends: dict[str, int]

    @property
    def failures(self) -> list[Item]:
        return [i for i in self.items if not i.ok]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.problems


# ---------------------------------------------------------------- the rule


@dataclasses.dataclass(frozen=True)
class Rule:
    """How each tensor is judged: the 2x rule of fused_resnet.tolerance (``atol_2x`` None:
    the atol of the tensor's dtype, as in the tests), plus ``rtol`` times the tensor's scale
    and ``atol`` times its group's; ``direct`` (fp32 only) compares with plain fp32 within
    those two terms alone. Whole-model gradients: the 2x rule on relative error, with
    ``grad_slack`` as its atol."""
    direct: bool = False
    rtol: float = 0.0
    atol: float = 0.0
    atol_2x: Optional[float] = None
    grad_slack: float = WHOLE_MODEL_GRAD_ATOL

    def judge_max(self, group: str, name: str, fused, plain, ref, scale: float, group_scale: float) -> Item:
        slack = self.rtol * scale + self.atol * group_scale
        if self.direct:
            return Item(group, name, max_err(fused, plain), scale, slack)
        pe = max_err(plain, ref)
        atol = LOWP_ATOL[fused.dtype] if self.atol_2x is None else self.atol_2x
        return Item(group, name, max_err(fused, ref), scale, bound_2x(pe, atol) + slack, plain_err=pe)

    def judge_rel(self, group: str, name: str, fused, plain, ref) -> Item:
        if self.direct:
            return Item(group, name, rel_err(fused, plain), 1.0, self.grad_slack, metric="rel")
        pe = rel_err(plain, ref)
        return Item(group, name, rel_err(fused, ref), 1.0, bound_2x(pe, self.grad_slack), plain_err=pe,
                    metric="rel")

    def describe(self) -> str:
        scaled = f"{self.rtol:g}*scale + {self.atol:g}*group_scale"
        if self.direct:
            return (f"max: |fused - plain| <= {scaled} (TF32 off); rel (whole-model gradients): "
                    f"rel <= {self.grad_slack:g}")
        atol = ("atol(dtype) (" + ", ".join(f"{dtype_name(d)} {a:g}" for d, a in LOWP_ATOL.items()) + ")"
                if self.atol_2x is None else f"{self.atol_2x:g}")
        added = f" + {scaled}" if self.rtol or self.atol else ""
        return (f"max: |fused - fp64| <= 2*|plain - fp64| + {atol}{added}; rel (whole-model gradients): "
                f"rel <= 2*plain_rel + {self.grad_slack:g}")


def check_rule(dtype: torch.dtype, *, direct: bool = False, rtol: Optional[float] = None,
               atol: Optional[float] = None, lowp_atol: Optional[float] = None,
               grad_slack: float = WHOLE_MODEL_GRAD_ATOL) -> Rule:
    """The rule ``run_parity`` judges by, its options' defaults filled in: the tests' rule
    (nothing added to it), or with ``direct`` the tight fp32 tolerances of fused_resnet.tolerance."""
    direct = direct and dtype == torch.float32
    if direct:
        rtol, atol = (FP32_RTOL if rtol is None else rtol), (FP32_ATOL if atol is None else atol)
    return Rule(direct=direct, rtol=rtol or 0.0, atol=atol or 0.0,
                atol_2x=lowp_atol if dtype != torch.float32 else None, grad_slack=grad_slack)


def _max_abs(t: torch.Tensor) -> float:
    return t.detach().double().abs().max().item() if t.numel() else 0.0


def _owner(name: str, block_names: Sequence[str]) -> str:
    for b in block_names:
        if name.startswith(b + "."):
            return b
    return name.split(".")[0]


class _Run:
    """One forward + backward of a model; records block outputs, block inputs and the
    gradients arriving at block outputs (for the per-block replay), logits and gradients."""

    def __init__(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, block_names: Sequence[str],
                 amp_dtype: Optional[torch.dtype], capture: bool = False):
        self.blocks: dict[str, torch.Tensor] = {}
        self.block_in: dict[str, torch.Tensor] = {}
        self.block_gout: dict[str, torch.Tensor] = {}
        handles = []
        for name in block_names:
            mod = model.get_submodule(name)
            handles.append(mod.register_forward_hook(self._hook(name, capture)))
            if capture:
                handles.append(mod.register_forward_pre_hook(self._pre_hook(name)))
        x = x.detach().clone().requires_grad_(True)
        try:
            with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), target)
            loss.backward()
        finally:
            for h in handles:
                h.remove()
        self.logits = logits.detach()
        self.xgrad = x.grad
        self.grads = {n: p.grad for n, p in model.named_parameters()}
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()
                        if n.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}

    def _pre_hook(self, name):
        def hook(module, inputs):
            self.block_in[name] = inputs[0].detach().clone()

        return hook

    def _hook(self, name, capture):
        def hook(module, inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            self.blocks[name] = out.detach().clone()
            if capture and out.requires_grad:
                out.register_hook(lambda g: self.block_gout.__setitem__(name, g.detach().clone()))

        return hook


def _replay_block(block: nn.Module, x: torch.Tensor, gout: torch.Tensor, amp_dtype: Optional[torch.dtype]):
    """Forward + backward of a copy of one block on a given input and output gradient."""
    block = copy.deepcopy(block)
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        y = block(x)
    y.backward(gout.to(y.dtype))
    return y.detach(), x.grad, {n: p.grad for n, p in block.named_parameters()}


# ---------------------------------------------------------------- the models and their runs


@dataclasses.dataclass
class _Pair:
    """The plain model, its converted twin and (unless the check is direct) an fp64 copy of
    the plain one, with untouched copies of the three for the per-block replay (the
    whole-model runs update running statistics), the batch and the fused blocks' names."""
    plain: nn.Module
    fused: nn.Module
    ref: Optional[nn.Module]
    replay: dict
    x: torch.Tensor
    target: torch.Tensor
    block_names: list[str]
    amp: Optional[torch.dtype]


def _build_pair(spec: ModelSpec, *, dtype: torch.dtype, batch: int, size: int, train: bool, backend: str,
                device: torch.device, seed: int, channels_last: bool, direct: bool) -> _Pair:
    """BN affine parameters drawn away from (1, 0), running statistics calibrated on another
    seeded batch: eval-mode BN is then neither the identity nor badly scaled. Low precision
    inference casts the models and the batch to ``dtype``; training runs fp32 weights under
    autocast."""
    lowp = dtype != torch.float32
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    plain = perturb_batchnorm(build_model(spec, seed=seed), seed=seed + 1)
    plain = plain.to(device=device, memory_format=fmt)
    calib, _ = make_input(batch, size, num_classes=spec.num_classes, seed=seed + 3, device=device,
                          channels_last=channels_last)
    calibrate_batchnorm(plain, calib)
    del calib
    fused = convert(plain, backend)
    block_names = [n for n, _ in fused_blocks(fused)]
    plain, fused = plain.train(train), fused.train(train)
    x, target = make_input(batch, size, num_classes=spec.num_classes, seed=seed + 2, device=device,
                           channels_last=channels_last)
    if lowp and not train:
        plain, fused, x = plain.to(dtype), fused.to(dtype), x.to(dtype)
    ref = None if direct else copy.deepcopy(plain).double()  # low precision eval: the rounded weights, upcast
    replay = {"plain": copy.deepcopy(plain), "fused": copy.deepcopy(fused),
              "ref": copy.deepcopy(ref) if ref is not None else None}
    return _Pair(plain, fused, ref, replay, x, target, block_names, dtype if lowp and train else None)


@dataclasses.dataclass
class _Runs:
    plain: "_Run"
    fused: "_Run"
    ref: Optional["_Run"]

    def source(self) -> "_Run":
        """The run the replay takes each block's input and output gradient from."""
        return self.ref if self.ref is not None else self.plain


def _run_models(pair: _Pair, name: str, backend: str, show: bool) -> _Runs:
    """Forward + backward of the plain model, its twin and the fp64 copy on the same batch."""
    progress(f"check {name}: plain PyTorch forward+backward", show)
    r_plain = _Run(pair.plain, pair.x, pair.target, pair.block_names, pair.amp, capture=pair.ref is None)
    progress(f"check {name}: fused forward+backward (backend {backend})", show)
    r_fused = _Run(pair.fused, pair.x, pair.target, pair.block_names, pair.amp)
    r_ref = None
    if pair.ref is not None:
        progress(f"check {name}: fp64 reference forward+backward", show)
        r_ref = _Run(pair.ref, pair.x.double(), pair.target, pair.block_names, None, capture=True)
    return _Runs(r_plain, r_fused, r_ref)


# ---------------------------------------------------------------- what is compared


def _replay_items(pair: _Pair, runs: _Runs, rule: Rule, items: list, problems: list) -> None:
    """Every block on its own: the input and output gradient the reference run saw, fed to
    copies of the plain, the fused and the fp64 block; outputs and gradients compared."""
    source = runs.source()
    for b in pair.block_names:
        if b not in source.block_in or b not in source.block_gout:
            problems.append(f"block {b}: no input or output gradient captured for the replay")
            continue
        xin, gout = source.block_in[b], source.block_gout[b]
        outs = {}
        for key, m in pair.replay.items():
            if m is None:
                continue
            dt = torch.float64 if key == "ref" else pair.x.dtype
            outs[key] = _replay_block(m.get_submodule(b), xin.to(dt), gout.to(dt),
                                      None if key == "ref" else pair.amp)
        _compare_replay(items, b, outs, rule)


def _ref_of(d: Optional[dict], k):
    return None if d is None else d.get(k)


def _model_items(pair: _Pair, runs: _Runs, rule: Rule, train: bool, items: list, problems: list) -> None:
    """The whole model: block outputs, logits, BN statistics (training), input and parameter gradients."""
    f, p, r = runs.fused, runs.plain, runs.ref
    _compare(items, "block", [(n, f.blocks.get(n), p.blocks.get(n), _ref_of(r and r.blocks, n))
                              for n in pair.block_names], rule, shared_scale=False)
    _compare(items, "logits", [("logits", f.logits, p.logits, r.logits if r else None)], rule, shared_scale=False)
    if train:
        _buffer_items(runs, rule, items, problems)
    _compare(items, "input.grad", [("input", f.xgrad, p.xgrad, r.xgrad if r else None)], rule, shared_scale=False,
             metric="rel")
    pnames, fnames = list(p.grads), set(f.grads)
    unmatched = [n for n in pnames if n not in fnames] + [n for n in f.grads if n not in set(pnames)]
    if unmatched:
        problems.append(
            f"{len(unmatched)} parameter names differ between the plain and the converted model "
            f"(gradients not compared): {', '.join(unmatched[:6])}{' ...' if len(unmatched) > 6 else ''}"
        )
    _compare(items, "param.grad", [(n, f.grads[n], p.grads[n], _ref_of(r and r.grads, n))
                                   for n in pnames if n in fnames], rule, shared_scale=True, metric="rel")


def _buffer_items(runs: _Runs, rule: Rule, items: list, problems: list) -> None:
    """BN running statistics after the training step; num_batches_tracked exactly."""
    f, p, r = runs.fused, runs.plain, runs.ref
    bnames = list(p.buffers)
    missing = [n for n in bnames if n not in f.buffers]
    if missing:
        problems.append(f"{len(missing)} BatchNorm buffers missing in the converted model: "
                        f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
    for kind in ("running_mean", "running_var"):
        names = [n for n in bnames if n.endswith(kind) and n in f.buffers]
        _compare(items, kind, [(n, f.buffers[n], p.buffers[n], _ref_of(r and r.buffers, n)) for n in names],
                 rule, shared_scale=True)
    for n in bnames:
        if n.endswith("num_batches_tracked") and n in f.buffers:
            same = torch.equal(f.buffers[n].cpu(), p.buffers[n].cpu())
            items.append(Item("num_batches", n, 0.0 if same else float("inf"), 0.0, 0.0,
                              note="" if same else f"{f.buffers[n].item()} != {p.buffers[n].item()}"))


def _compare(items: list, group: str, entries, rule: Rule, *, shared_scale: bool, metric: str = "max") -> None:
    """entries: (name, fused, plain, fp64 reference or None); scale is a tensor's max |reference|,
    group_scale the largest among the entries."""
    scales = {}
    for n, f, p, r in entries:
        base = r if r is not None else p
        scales[n] = _max_abs(base) if base is not None else 0.0
    gscale = max(scales.values(), default=0.0)
    for n, f, p, r in entries:
        needed = {"fused": f, "plain": p} if rule.direct else {"fused": f, "plain": p, "fp64": r}
        if all(t is None for t in needed.values()):
            continue  # none has it (e.g. a frozen parameter)
        missing = [w for w, t in needed.items() if t is None]
        if missing:
            items.append(Item(group, n, float("inf"), scales[n], 0.0, note="missing in " + ", ".join(missing)))
        elif metric == "rel":
            items.append(rule.judge_rel(group, n, f, p, r))
        else:
            items.append(rule.judge_max(group, n, f, p, r, scales[n], gscale if shared_scale else scales[n]))


def _compare_replay(items: list, block: str, outs: dict, rule: Rule) -> None:
    f, p, r = outs["fused"], outs["plain"], outs.get("ref")
    _compare(items, "replay.out", [(block, f[0], p[0], r[0] if r else None)], rule, shared_scale=False)
    _compare(items, "replay.dx", [(block, f[1], p[1], r[1] if r else None)], rule, shared_scale=False)
    _compare(items, "replay.grad", [(f"{block}.{n}", f[2].get(n), p[2][n], r[2].get(n) if r else None)
                                    for n in p[2]], rule, shared_scale=True)


# ---------------------------------------------------------------- the check


def run_parity(name: str, *, dtype: torch.dtype = torch.float32, batch: int = 2, image_size: Optional[int] = None,
               train: bool = False, backend: str = "auto", device: Optional[torch.device] = None, seed: int = 0,
               rtol: Optional[float] = None, atol: Optional[float] = None, lowp_atol: Optional[float] = None,
               grad_slack: float = WHOLE_MODEL_GRAD_ATOL, channels_last: bool = True, direct: bool = False,
               show: bool = True) -> ParityReport:
    """torchvision (or plain CIFAR) model vs its converted twin on one seeded batch.

    Reference: an fp64 copy of the plain model (``direct=True``, fp32 only: plain
    fp32 itself). Each tensor's error against it sits next to plain PyTorch's own
    error in the same dtype (``plain_err``). Judged by ``check_rule``: by default
    the tests' rule (fused_resnet.tolerance), max abs error
    ``err <= 2*plain_err + atol(dtype)`` (fp32 with TF32 off; fp16/bf16 inference:
    models cast to the dtype, --train: fp32 weights under autocast):
      * whole model, forward: every block's output, the logits, and with --train
        the BN running statistics (num_batches_tracked exactly);
      * every block on its own ("replay"): the block input and the gradient
        arriving at its output, both taken from the reference run, are fed to a
        copy of the plain block, of the fused block and of the fp64 block; their
        outputs, input gradients and parameter gradients are compared.
    Judged by relative norm, ``rel <= 2*plain_rel + grad_slack``: the whole
    model's input and parameter gradients (tolerance.WHOLE_MODEL_GRAD_ATOL says
    why the slack); the per-block replay is the tight test of the backward, and
    this one catches gross errors (a missing or doubled term, wrong wiring).
    """
    device = device or default_device()
    spec = model_spec(name)
    size = spec.image_size if spec.kind == "cifar" else (image_size or spec.image_size)
    rule = check_rule(dtype, direct=direct, rtol=rtol, atol=atol, lowp_atol=lowp_atol, grad_slack=grad_slack)
    pair = _build_pair(spec, dtype=dtype, batch=batch, size=size, train=train, backend=backend, device=device,
                       seed=seed, channels_last=channels_last, direct=rule.direct)
    problems = [] if pair.block_names else ["convert() produced no fused blocks"]
    header = {
        "model": name, "dtype": dtype_name(dtype), "batch": batch, "image_size": size,
        "mode": "train" if train else "eval", "device": device.type, "gpu": gpu_name(device),
        "requested_backend": backend, "blocks": len(pair.block_names), "seed": seed,
        "channels_last": channels_last,
        "reference": "plain fp32" if rule.direct else "fp64 copy of the plain model",
        "rule": rule.describe(),
    }
    items: list[Item] = []
    with _no_tf32(dtype == torch.float32):
        runs = _run_models(pair, name, backend, show)
        progress(f"check {name}: per-block replay", show)
        _replay_items(pair, runs, rule, items, problems)
    counts = block_backends(pair.fused)
    wrong = {b: n for b, n in counts.items() if b != backend}
    if backend != "auto" and wrong:
        problems.append(f"backend {backend!r} was requested but blocks ran on {wrong}")
    _model_items(pair, runs, rule, train, items, problems)
    return ParityReport(header, items, problems, counts)


@contextlib.contextmanager
def _no_tf32(enabled: bool):
    """fp32 compared tightly: no TF32 in cuDNN or matmuls while ``enabled``."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    if enabled:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def parity_table(report: ParityReport, *, verbose: bool = False) -> str:
    """One row per block output, the logits, the input gradient, and the parameter
    gradients and BN statistics gathered per block (every tensor with ``verbose``)."""
    block_names = [i.name for i in report.items if i.group == "block"]
    vs_ref = report.header.get("reference") != "plain fp32"  # errors against fp64, next to plain's
    rows: list[list] = []
    grouped: dict[tuple[str, str], list[Item]] = {}
    order: list[tuple[str, str]] = []
    for it in report.items:
        if verbose or it.group in ("block", "logits", "input.grad", "replay.out", "replay.dx"):
            key = (it.group, it.name)
        elif it.group == "num_batches":
            key = (it.group, "all")
        else:
            key = (it.group, _owner(it.name, block_names))
        if key not in grouped:
            grouped[key] = []
            order.append(key)
        grouped[key].append(it)
    rank = ["block", "logits", "running_mean", "running_var", "num_batches", "replay.out", "replay.dx",
            "replay.grad", "input.grad", "param.grad"]
    order.sort(key=lambda k: rank.index(k[0]) if k[0] in rank else len(rank))  # stable within a group
    for key in order:
        its = grouped[key]
        worst = max(its, key=lambda i: (not i.ok, i.err / i.tol if i.tol > 0 else (0 if i.err == 0 else math.inf)))
        name = key[1] if len(its) == 1 else f"{key[1]} ({len(its)})"
        row = [key[0], name, worst.metric, worst.err]
        if vs_ref:
            row.append(worst.plain_err)
        row += [worst.scale if worst.metric == "max" else None, worst.tol, all(i.ok for i in its)]
        if worst.note:
            row[-1] = f"FAIL ({worst.note})"
        rows.append(row)
    err_head = "fused err (vs fp64)" if vs_ref else "fused err (vs plain)"
    headers = ["what", "name", "metric", err_head] + (["plain err"] if vs_ref else []) + ["scale", "tol", "ok"]
    return format_table(headers, rows)
