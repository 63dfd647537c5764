#!/usr/bin/env python
"""Bytes a block step moves, operator by operator: eager torchvision against the fused dataflow.

Runs bench_blocks.py's blocks at their GPU size (N=128, bf16) on the meta device,
where no data exists and nothing is computed, and counts for every operator that
would launch a kernel the bytes of its tensor inputs and outputs (each read once,
each written once: tools.traffic.op_traffic). A fused_resnet op counts as one
operator, so the fused column is the traffic of the fused dataflow; what a backend
launches for an op (a statistics merge, a cuDNN fallback) comes on top on a GPU.

Divided by a device's copy bandwidth this gives each variant's time floor, and the
measured time over it says how far that variant's kernels are from streaming.
Differences from the GPU protocol of bench_blocks.py: the training step runs the
block in bf16 itself rather than fp32 parameters under autocast (no per-step weight
casts, a few MB), and eager's BatchNorm counts as one pass over its input, where
the training kernel reads it twice.

    python bench/traffic.py
    python bench/traffic.py --json traffic.json --blocks layer1 --batch 256
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import bench_blocks  # noqa: E402
from fused_resnet import convert  # noqa: E402
from fused_resnet.tools.env import dtype_name, env_info, parse_dtype, utc_now  # noqa: E402
from fused_resnet.tools.report import format_table  # noqa: E402
from fused_resnet.tools.traffic import op_traffic  # noqa: E402

VARIANTS = ("eager", "fused")


def meta_step(key: str, mode: str, variant: str, *, batch: int, dtype: torch.dtype):
    """One block step on the meta device (bench_blocks.py's step, in ``dtype`` throughout)."""
    label, kind, inplanes, planes, hw = bench_blocks.BLOCKS[key]
    block = bench_blocks.make_block(kind, inplanes, planes, seed=0)
    if variant == "fused":
        block = convert(nn.Sequential(block), "reference")
    block = block.to(device="meta", dtype=dtype, memory_format=torch.channels_last).train(mode == "train")
    x = torch.empty(batch, inplanes, hw, hw, device="meta", dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    if mode == "infer":
        def step():
            with torch.inference_mode():
                block(x)
        return step
    x.requires_grad_(True)
    gout = torch.empty_like(x)

    def step():
        block(x).backward(gout)
        block.zero_grad(set_to_none=True)
        x.grad = None
    return step


def count(key: str, mode: str, variant: str, *, batch: int, dtype: torch.dtype) -> dict:
    step = meta_step(key, mode, variant, batch=batch, dtype=dtype)
    step()  # a warm-up step, as a timed run takes before it counts
    t = op_traffic(step)
    return {"block": bench_blocks.BLOCKS[key][0], "key": key, "mode": mode, "variant": variant, "N": batch,
            "dtype": dtype_name(dtype), "GB": t["bytes"] / 1e9, "ops": t["ops"],
            "by_op": t["by_op"]}


def table(rows) -> str:
    eager = {(r["key"], r["mode"]): r["GB"] for r in rows if r["variant"] == "eager"}
    body = [[r["key"], r["mode"], r["variant"], r["ops"], r["GB"], r["GB"] / eager[(r["key"], r["mode"])],
             ", ".join(f"{k.split('::')[1]} {b / 1e9:.3f}" for k, (_, b) in list(r["by_op"].items())[:4])]
            for r in rows]
    return format_table(["block", "mode", "variant", "ops", "GB per step", "x eager", "largest (GB)"], body)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", default=",".join(bench_blocks.BLOCKS))
    p.add_argument("--modes", default="infer,train")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dtype", default="bf16", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--json", help="write the rows (every operator's [calls, bytes]) and the environment here")
    args = p.parse_args(argv)
    dtype = parse_dtype(args.dtype)
    rows = [count(k, m, v, batch=args.batch, dtype=dtype)
            for k in args.blocks.split(",") for m in args.modes.split(",") for v in VARIANTS]
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(["traffic.py"] + (argv if argv is not None else sys.argv[1:])),
                       "date": utc_now(), "env": env_info(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
