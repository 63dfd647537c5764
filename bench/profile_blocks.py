#!/usr/bin/env python
"""Where a block step's GPU time goes: its kernels, per variant (torch.profiler).

For each block, mode and variant (eager torchvision and each fused backend), after
warm-up steps (which include Triton's autotuning), the profiler records ``--steps``
steps of bench_blocks.py's step (same blocks, batch, dtype and rotating inputs).
Printed per variant: kernel launches and summed kernel time per step beside the
step's median time (timed without the profiler, as bench_blocks.py does), then the
kernels with the most time, per step. Kernel time well under the step time means
launch gaps (host work: Python, dispatch), not slow kernels.

    python bench/profile_blocks.py                              # layer1, infer + train, every backend
    python bench/profile_blocks.py --blocks layer1,layer3 --modes train --backends triton --top 20
    python bench/profile_blocks.py --device cpu --batch 2 --steps 1   # CPU smoke run (reference backend)
"""
from __future__ import annotations

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import bench_blocks  # noqa: E402
from fused_resnet import available_backends  # noqa: E402
from fused_resnet.tools.env import gpu_name, parse_dtype, resolve_device, synchronize  # noqa: E402
from fused_resnet.tools.report import format_table  # noqa: E402
from fused_resnet.tools.timing import time_fn  # noqa: E402


def kernel_times(step, *, steps: int, device: torch.device) -> list[tuple[str, int, float]]:
    """(kernel name, launches, total microseconds) over ``steps`` steps, longest first. On
    the CPU (a smoke run) the "kernels" are the operators, by self time."""
    on_gpu = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    rows = []
    for e in prof.key_averages():
        us = e.self_device_time_total if on_gpu else e.self_cpu_time_total
        if us > 0:
            rows.append((e.key, e.count, us))
    return sorted(rows, key=lambda r: -r[2])


_CUTLASS_MAINLOOP = re.compile(r"threadblock\d+(ImplicitGemm\w*?(?:Multistage|Pipelined))")
_CUTLASS_TILE = re.compile(r"GemmShapeILi(\d+)ELi(\d+)ELi(\d+)E")
_CUTLASS_OPERATOR = re.compile(r"Conv2d(Fprop|Dgrad|Wgrad)")


def short_name(name: str, width: int = 110) -> str:
    """A kernel's name cut to ``width``, except that a CUTLASS convolution's mangled name
    (whose first 90 characters are the same for every mainloop) becomes its operator,
    mainloop and threadblock tile, e.g. ``cutlass wgrad ImplicitGemmWgradFusionMultistage
    128x128x32``."""
    loop = _CUTLASS_MAINLOOP.search(name)
    if name.startswith("_ZN7cutlass") and loop:
        parts = ["cutlass"]
        if operator := _CUTLASS_OPERATOR.search(name):
            parts.append(operator.group(1).lower())
        parts.append(loop.group(1))
        if tile := _CUTLASS_TILE.search(name):
            parts.append("x".join(tile.groups()))
        return " ".join(parts)
    return name[:width]


def report(label: str, rows, *, steps: int, top: int, step_ms: float) -> str:
    launches = sum(r[1] for r in rows) / steps
    total_ms = sum(r[2] for r in rows) / steps / 1e3
    lines = [f"\n== {label}: {launches:.0f} kernels, {total_ms:.3f} ms of kernel time per step "
             f"in a step of {step_ms:.3f} ms (median, unprofiled)"]
    body = [[short_name(name), count / steps, us / steps / 1e3, 100 * us / steps / 1e3 / total_ms]
            for name, count, us in rows[:top]]
    lines.append(format_table(["kernel", "launches/step", "ms/step", "% of kernel time"], body))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", default="layer1")
    p.add_argument("--modes", default="infer,train")
    p.add_argument("--backends", default=None, help="fused backends (default: every available one but reference)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dtype", default="bf16", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--device", default=None, help="default: cuda when available (a CPU run only smoke-tests)")
    args = p.parse_args(argv)
    device, dtype = resolve_device(args.device), parse_dtype(args.dtype)
    if args.backends is None:
        names = [n for n, (ok, _) in available_backends().items() if ok and (n != "reference" or device.type == "cpu")]
    else:
        names = [n.strip() for n in args.backends.split(",") if n.strip()]
    variants = ["eager"] + [f"fused[{n}]" for n in names]
    print(f"profile_blocks.py: {gpu_name(device) if device.type == 'cuda' else 'CPU'}, torch {torch.__version__}, {args.dtype}, N={args.batch}, "
          f"{args.steps} profiled steps after {args.warmup} warm-up steps")
    for key in args.blocks.split(","):
        for mode in args.modes.split(","):
            for variant in variants:
                module, step, _ = bench_blocks.build_step(key, mode, variant, batch=args.batch, dtype=dtype,
                                                          device=device, seed=0, compile_mode=None)
                timing = time_fn(step, device=device, warmup=args.warmup, steps=args.steps, show=False)
                rows = kernel_times(step, steps=args.steps, device=device)
                print(report(f"{key} {mode} {variant}", rows, steps=args.steps, top=args.top,
                             step_ms=timing.median_ms), flush=True)
                del module, step
    return 0


if __name__ == "__main__":
    sys.exit(main())
