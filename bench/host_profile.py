#!/usr/bin/env python
"""Where the host time of a block step goes, on the machine that runs it: cProfile of real steps.

bench/host_overhead.py counts launches and times the Python with the kernels taken out,
on any machine; this runs the benchmark blocks' real steps (bench_blocks.build_step,
GPU size) under cProfile after warm-up, so what it lists is the host side as the GPU
machine's CPU pays it: the Python of blocks.py, the ops and the backends, and each call
into PyTorch or _C (the time spent inside a C++ call, kernel launches included, is that
call's own time). The device is synchronised once, after the profiled steps.

    python bench/host_profile.py --blocks layer3 --variants eager,fused[cuda] --out host_profile.txt
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import bench_blocks  # noqa: E402
from fused_resnet.tools.env import gpu_name, resolve_device, synchronize  # noqa: E402


def profile_variant(key: str, mode: str, variant: str, *, batch: int, device, steps: int, top: int) -> str:
    """The report of one variant: host ms per step (unprofiled), then cProfile's top functions."""
    _, step, _ = bench_blocks.build_step(key, mode, variant, batch=batch, dtype=torch.bfloat16, device=device,
                                         seed=0, compile_mode=None)
    for _ in range(5):
        step()
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    host_ms = (time.perf_counter() - t0) / steps * 1e3  # the launches may run ahead of the GPU
    synchronize(device)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        step()
    prof.disable()
    synchronize(device)
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return (f"\n== {key} {mode} {variant}: {host_ms:.3f} ms of host time per step (unprofiled, "
            f"{steps} steps, no synchronisation between them); cProfile over {steps} steps:\n" + text.getvalue())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", default="layer3")
    p.add_argument("--modes", default="train")
    p.add_argument("--variants", default="eager,fused[cuda]")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--out", default=None, help="also write the report here")
    args = p.parse_args(argv)
    device = resolve_device("auto")
    reports = []
    for key in args.blocks.split(","):
        for mode in args.modes.split(","):
            for variant in args.variants.split(","):
                reports.append(profile_variant(key, mode, variant, batch=args.batch, device=device,
                                               steps=args.steps, top=args.top))
                print(reports[-1].split("\n")[1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"host_profile.py: {gpu_name(device) if device.type == 'cuda' else 'CPU'}, "
                    f"torch {torch.__version__}\n" + "".join(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
