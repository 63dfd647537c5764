#!/usr/bin/env python
"""Wall time of the first steps of a converted model in a fresh process: what a user waits for.

The triton backend compiles its kernels and times tile configurations on the first call
of each problem shape (bounded, remembered on disk: fused_resnet/backends/triton/tuning.py);
run this twice with the same FUSED_RESNET_CACHE_DIR to see a cold and a warm cache
(Triton's own compile cache, TRITON_CACHE_DIR, decides how much compiling the second
process redoes). Each step is synchronised, so its time includes everything it waited for.
Appends one JSON line per run to --json.

    FUSED_RESNET_CACHE_DIR=/tmp/c python bench/first_step.py --label cold --json first.jsonl
    FUSED_RESNET_CACHE_DIR=/tmp/c python bench/first_step.py --label warm --json first.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from fused_resnet.tools.env import env_info  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--backend", default="triton")
    p.add_argument("--mode", default="train", choices=["train", "infer"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--label", default="")
    p.add_argument("--json", required=True, help="JSON-lines file the result is appended to")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU (the first step's cost is compiling and timing GPU kernels)")
    t0 = time.perf_counter()
    import fused_resnet
    import torchvision

    device = torch.device("cuda")
    model = getattr(torchvision.models, args.model)(weights=None)
    model = fused_resnet.convert(model, backend=args.backend).to(device, memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 1000, (args.batch,), device=device)
    step = _train_step(model, x, target) if args.mode == "train" else _infer_step(model, x)
    setup_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    row = {"label": args.label, "model": args.model, "backend": args.backend, "mode": args.mode,
           "batch": args.batch, "setup_s": setup_s, "step_s": times, "env": env_info(),
           "cache_dir": os.environ.get("FUSED_RESNET_CACHE_DIR"),
           "autotune": os.environ.get("FUSED_RESNET_TRITON_AUTOTUNE", "1")}
    with open(args.json, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")
    print(f"first_step.py {args.label}: {args.model} {args.mode} {args.backend} batch {args.batch}: "
          + ", ".join(f"step {i + 1} {t:.2f} s" for i, t in enumerate(times)))
    return 0


def _train_step(model, x, target):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()

    def step():
        with torch.autocast("cuda", torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def _infer_step(model, x):
    model = model.eval().to(torch.bfloat16)
    xb = x.to(torch.bfloat16)

    @torch.inference_mode()
    def step():
        model(xb)
    return step


if __name__ == "__main__":
    sys.exit(main())
