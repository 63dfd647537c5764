#!/usr/bin/env python
"""ResNet training with SyncBatchNorm, fused and eager, on one GPU or several: img/s and scaling.

Four variants, each a DDP training step (autocast forward, cross-entropy, backward,
SGD momentum), same method as bench_models.py (channels_last, CUDA events per step,
warm-up excluded, median): eager and fused with nn.BatchNorm2d, eager and fused with
nn.SyncBatchNorm. The step time of a rank is the slowest rank's (all_reduce MAX).

In a world of one neither nn.SyncBatchNorm nor the fused blocks synchronise; there this
script makes both run their collectives anyway (unless --no-force-sync) (nn.SyncBatchNorm
through its autograd function, the fused blocks through their process-group test), so
the sync variants minus the BatchNorm2d ones are the collectives' cost per step.

    python bench/bench_sync_batch_norm.py --json $OUT/sync-1gpu.json           # one GPU, NCCL
    torchrun --nproc-per-node 8 bench/bench_sync_batch_norm.py --json sync-8gpu.json \\
        --baseline sync-1gpu.json                                              # img/s and scaling
    python bench/bench_sync_batch_norm.py --device cpu --model cifar_resnet8 --batch 4 --no-ddp \\
        --sync-scope blocks --steps 1 --warmup 0                                # gloo dry run
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import tempfile
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

import fused_resnet  # noqa: E402
from fused_resnet import sync_batch_norm  # noqa: E402
from fused_resnet.tools import env, models, report, timing  # noqa: E402

VARIANTS = ("eager", "eager+sync", "fused", "fused+sync")


def _init(device: torch.device) -> None:
    """NCCL (gloo on the CPU) from torchrun's environment, else a world of one."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(minutes=10)
    if "RANK" in os.environ:
        dist.init_process_group(backend, timeout=timeout)
    else:
        store = os.path.join(tempfile.mkdtemp(prefix="bench-sync-"), "store")
        dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1, timeout=timeout)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def _forced_torch_sync(bn: nn.SyncBatchNorm):
    """nn.SyncBatchNorm's training forward with its collectives, even in a world of one."""
    fn = torch.nn.modules._functions.SyncBatchNorm

    def forward(x):
        bn.num_batches_tracked.add_(1)
        return fn.apply(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps, bn.momentum,
                        dist.group.WORLD, dist.get_world_size())
    return forward


def _sync(model: nn.Module, scope: str) -> nn.Module:
    if scope == "all":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if name.startswith("layer"):
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    return model


def _model(args, variant: str, device: torch.device) -> nn.Module:
    model = models.build_model(args.model)
    if variant.endswith("+sync"):
        model = _sync(model, args.sync_scope)
    if variant.startswith("fused"):
        model = fused_resnet.convert(model, args.backend)
    elif variant == "eager+sync" and args.force_sync and dist.get_world_size() == 1:
        for m in model.modules():
            if isinstance(m, nn.SyncBatchNorm):
                m.forward = _forced_torch_sync(m)
    model = timing.prepare(model, mode="train", dtype=args.dtype, device=device)
    return DistributedDataParallel(model) if args.ddp else model


def _time_variant(args, variant: str, device: torch.device) -> dict:
    spec = models.model_spec(args.model)
    size = args.image_size or spec.image_size
    x, y = models.make_input(args.batch, size, num_classes=spec.num_classes, seed=dist.get_rank(), device=device)
    step = timing.make_train_step(_model(args, variant, device), x, y, args.dtype)
    force = args.force_sync and dist.get_world_size() == 1 and variant == "fused+sync"
    patch = mock.patch.object(sync_batch_norm, "process_group",
                              lambda bn: dist.group.WORLD if isinstance(bn, nn.SyncBatchNorm) and bn.training else None)
    with patch if force else contextlib.nullcontext():
        t = timing.time_fn(step, device=device, warmup=args.warmup, steps=args.steps, label=variant,
                           show=dist.get_rank() == 0)
    slowest = torch.tensor(t.median_ms, dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    ms = slowest.item()
    return {"variant": variant, "ms": ms, "img_s_per_rank": args.batch / ms * 1e3,
            "img_s": args.batch * dist.get_world_size() / ms * 1e3, "rank0": t.as_dict()}


def _run(args, variant: str, device: torch.device) -> dict:
    try:
        return _time_variant(args, variant, device)
    except Exception as e:  # one variant's failure (e.g. nn.SyncBatchNorm on a CPU) is reported, not fatal
        return {"variant": variant, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}


def _scaling(rows: list[dict], baseline: str, world: int) -> None:
    """img/s over (world x the one-GPU img/s) of the same variant, from a world-of-one run's JSON."""
    with open(baseline) as f:
        one = {r["variant"]: r for r in json.load(f)["rows"] if "img_s" in r}
    for r in rows:
        if "img_s" in r and r["variant"] in one:
            r["scaling"] = r["img_s"] / (world * one[r["variant"]]["img_s"])


def _table(rows: list[dict]) -> str:
    return report.format_table(
        ["variant", "ms/step", "img/s per rank", "img/s", "scaling", "error"],
        [[r["variant"], r.get("ms"), r.get("img_s_per_rank"), r.get("img_s"), r.get("scaling"), r.get("error", "")]
         for r in rows])


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default="bench-sync-batch-norm.json")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=int, default=256, help="images per rank")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="GPU bf16, CPU fp32")
    p.add_argument("--backend", default="auto", help="backend of the fused variants")
    p.add_argument("--device", default=None)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-force-sync", dest="force_sync", action="store_false",
                   help="in a world of one, let SyncBatchNorm skip its collectives as it does by default")
    p.add_argument("--sync-scope", default="all", choices=["all", "blocks"],
                   help="which BatchNorms become SyncBatchNorm: all, or the residual stages' (layer1..) only "
                        "(on the CPU: nn.SyncBatchNorm outside the fused blocks refuses CPU tensors)")
    p.add_argument("--no-ddp", dest="ddp", action="store_false",
                   help="no DistributedDataParallel (DDP refuses SyncBatchNorm in CPU modules)")
    p.add_argument("--baseline", default=None, help="a world-of-one run's JSON: adds the scaling column")
    args = p.parse_args(argv)
    args.device = env.resolve_device(args.device)
    args.dtype = env.parse_dtype(args.dtype or ("bf16" if args.device.type == "cuda" else "fp32"))
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        p.error(f"--variants: unknown {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    return args


def main(argv=None) -> int:
    args = _parse(argv)
    device = args.device
    _init(device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    try:
        rows = [_run(args, v, device) for v in args.variants.split(",")]
        if args.baseline:
            _scaling(rows, args.baseline, dist.get_world_size())
        if dist.get_rank() == 0:
            result = {"env": env.env_info(), "world": dist.get_world_size(), "model": args.model,
                      "batch_per_rank": args.batch, "dtype": env.dtype_name(args.dtype), "ddp": args.ddp,
                      "force_sync": args.force_sync, "command": " ".join(sys.argv), "rows": rows}
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
            print(_table(rows))
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
