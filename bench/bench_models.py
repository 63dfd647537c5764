#!/usr/bin/env python
"""Whole-model images/s: torchvision eager vs torch.compile vs fused (backend auto), infer and train.

Same method as ``python -m fused_resnet bench`` (fused_resnet/tools/timing.py):
channels_last, bf16 (inference: model cast to bf16 under inference_mode;
training: autocast + cross-entropy + backward + SGD momentum step), CUDA events
per step, warm-up excluded, median; peak memory = torch.cuda.max_memory_allocated.
Batch 256 for ImageNet models at 224x224 and 512 for CIFAR, as in the peer anchors.

    python bench/bench_models.py --json $OUT/models.json                 # eager + fused
    python bench/bench_models.py --compile --json $OUT/models.json       # + torch.compile (slow to build)
    python bench/bench_models.py --quick                                 # resnet50 + cifar_resnet56, fewer steps
    python bench/bench_models.py --graphs                                # + steps replayed from CUDA graphs
    python bench/bench_models.py --backend triton --tuned-table DIR      # + the Triton configurations tuned,
                                                                         #   a table for fused_resnet/tuned/
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from fused_resnet.backends import choice  # noqa: E402
from fused_resnet.tools.env import dtype_name, env_info, parse_dtype, resolve_device  # noqa: E402
from fused_resnet.tools.models import model_spec  # noqa: E402
from fused_resnet.tools.report import progress  # noqa: E402
from fused_resnet.tools.timing import CPU_NOTE, bench_model, results_table  # noqa: E402

DEFAULT_MODELS = "resnet18,resnet50,resnet101,cifar_resnet56"
QUICK_MODELS = "resnet50,cifar_resnet56"
DEFAULT_COMPILE = "resnet50,cifar_resnet56"  # the models the peer anchors have compile numbers for


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default="bench-models.json")
    p.add_argument("--models", default=None, help=f"comma-separated (default {DEFAULT_MODELS})")
    p.add_argument("--modes", default="infer,train")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="GPU bf16, CPU fp32")
    p.add_argument("--batch", type=int, default=None, help="one batch for every model "
                   "(default GPU 256 / CIFAR 512, CPU 2)")
    p.add_argument("--image-size", type=int, default=None, help="ImageNet models (default GPU 224, CPU 64)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (GPU 15, quick 8, CPU 1)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (GPU 3, CPU 1)")
    p.add_argument("--backend", default="auto",
                   help="backend of the fused model; comma-separated to compare several (e.g. triton,cuda)")
    p.add_argument("--compile", action="store_true", help="add torch.compile of eager and fused")
    p.add_argument("--compile-models", default=DEFAULT_COMPILE,
                   help="with --compile, which models to compile ('all' for every one)")
    p.add_argument("--compile-variants", default="eager,fused",
                   help="which of eager, fused --compile compiles (the fused model takes longest to build)")
    p.add_argument("--compile-mode", default=None)
    p.add_argument("--graphs", action="store_true",
                   help="add steps replayed from a CUDA graph, eager and fused, inference and training "
                        "(no host work per step: the gap to the plain variant is host time)")
    p.add_argument("--tuned-table", default=None, metavar="DIR",
                   help="write the Triton configurations this run tuned to DIR/<GPU>__triton-<version>.json "
                        "(a table to ship in fused_resnet/tuned/)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help=f"models {QUICK_MODELS}, fewer steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=None, help="also draw the table (img/s, speed-up over eager, peak memory) here")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv=None) -> int:
    p = _parser()
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    on_cpu = device.type == "cpu"
    dtype = parse_dtype(args.dtype or ("fp32" if on_cpu else "bf16"))
    models = [m.strip() for m in (args.models or (QUICK_MODELS if args.quick else DEFAULT_MODELS)).split(",")
              if m.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    steps = args.steps or (1 if on_cpu else (8 if args.quick else 15))
    warmup = args.warmup if args.warmup is not None else (1 if on_cpu else 3)
    compile_variants = [v.strip() for v in args.compile_variants.split(",") if v.strip()]
    if not set(compile_variants) <= {"eager", "fused"}:
        p.error(f"--compile-variants takes eager and/or fused, got {args.compile_variants!r}")
    compile_set = set(models if args.compile_models == "all" else args.compile_models.split(","))
    show = not args.quiet
    for m in models:
        model_spec(m)  # unknown names fail before anything runs
    if args.tuned_table and device.type != "cuda":
        p.error(f"--tuned-table needs a CUDA device (the Triton configurations are tuned on a GPU), got {device}")
    if on_cpu:
        progress("no CUDA GPU: CPU run with small sizes; CPU numbers say nothing about GPU speed", show)

    rows, t0 = [], time.perf_counter()
    command = " ".join(["python", "bench/bench_models.py"] + [shlex.quote(a) for a in
                                                              (sys.argv[1:] if argv is None else argv)])

    def write(partial: bool) -> dict:
        """The JSON, rewritten after every model and mode so that a run cut short keeps what it measured."""
        env = env_info()
        out = {
            "command": command, "partial": partial,
            "date": env["date"], "device": env["gpu"] if not on_cpu else "cpu", "env": env,
            "config": {"models": models, "modes": modes, "dtype": dtype_name(dtype), "steps": steps,
                       "warmup": warmup, "backend": args.backend, "compile": args.compile,
                       "compile_models": sorted(compile_set) if args.compile else [],
                       "compile_mode": args.compile_mode, "graphs": args.graphs, "channels_last": True,
                       "train_step": "autocast forward + cross-entropy + backward + SGD(momentum=0.9) step",
                       "infer_step": "model.eval().to(dtype) under torch.inference_mode"},
            "note": CPU_NOTE.format(backend="reference") if on_cpu else None,
            "results": rows, "table": results_table(rows), "wall_s": time.perf_counter() - t0,
            "cuda_choices": choice.choices_table(),
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
        return out

    for name in models:
        spec = model_spec(name)
        if spec.kind == "cifar":
            batch = args.batch or (2 if on_cpu else 512)
        else:
            batch = args.batch or (2 if on_cpu else 256)
        image = args.image_size or (64 if on_cpu else 224)
        variants = ["eager", "fused"]
        if args.compile and name in compile_set:
            variants += [f"{v}+compile" for v in compile_variants]
        for mode in modes:
            graphs = ["eager+graphs", "fused+graphs"] if args.graphs else []
            rows += bench_model(name, mode=mode, variants=variants + graphs, batch=batch, image_size=image, dtype=dtype,
                                  device=device, steps=steps, warmup=warmup, backend=args.backend,
                                  compile_mode=args.compile_mode, seed=args.seed, show=show)
            progress(f"{name} {mode} done ({time.perf_counter() - t0:.0f} s so far)", show)
            write(partial=True)

    out = write(partial=False)
    text = out["table"]
    print(f"bench_models: {dtype_name(dtype)} channels_last on {out['device']}, torch {torch.__version__}")
    print(text)
    if on_cpu:
        print("NOTE: " + out["note"])
    print(f"wrote {args.json}")
    if args.plot:
        from fused_resnet import plot

        plot.bench_chart(rows, args.plot, f"{', '.join(models)}: {dtype_name(dtype)} on {out['device']}")
        print(f"wrote {args.plot}")
    if args.tuned_table:
        from fused_resnet.backends.triton import tuning

        print(f"wrote {tuning.dump(args.tuned_table, device)}")
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
