#!/usr/bin/env python
"""Where a whole model's inference batch goes, module by module: eager vs fused (torch.profiler).

The fused blocks beat eager's, yet a whole fused ResNet-50 trails torch.compile: the
rest of the model (stem, head, casts between blocks) and the block shapes the block
benchmark does not time are where to look. Each part of the model is wrapped in a
profiler range by forward hooks: the top-level modules (conv1, bn1, relu, maxpool,
avgpool, fc, ...) and, inside each stage (layer1 ... layer4, or the CIFAR stages), each
block. A part's time is the device time of every kernel launched inside its range
(inclusive); kernels launched outside every part (the input cast, say) are the row
"(outside the parts)". Printed per model: one row per part, each variant's ms per batch
and kernels, then the totals beside the batch's median time (timed without the
profiler). On a CPU (a smoke run) the times are the operators' CPU times.

    python bench/profile_models.py --models resnet50 --backends cuda,triton --json $OUT/profile_models.json
    python bench/profile_models.py --models resnet18 --device cpu --batch 2 --image-size 64 --steps 1
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from fused_resnet import available_backends, convert  # noqa: E402
from fused_resnet.tools.env import (  # noqa: E402
    dtype_name, env_info, gpu_name, parse_dtype, resolve_device, synchronize,
)
from fused_resnet.tools.models import build_model, make_input, model_spec  # noqa: E402
from fused_resnet.tools.report import format_table  # noqa: E402
from fused_resnet.tools.timing import make_infer_step, prepare, time_fn  # noqa: E402

PREFIX = "part:"
OUTSIDE = "(outside the parts)"


def parts(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of each profiled part: every top-level child, and each child of a
    top-level Sequential (a stage's blocks) instead of the stage itself."""
    out = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential) and len(child) > 0:
            out += [(f"{name}.{i}", block) for i, block in child.named_children()]
        else:
            out.append((name, child))
    return out


@contextlib.contextmanager
def part_ranges(model: nn.Module):
    """Forward hooks that open a profiler range named PREFIX + part name around each part."""
    handles, open_ranges = [], {}

    def enter(name):
        def hook(module, args):
            open_ranges[name] = record_function(PREFIX + name)
            open_ranges[name].__enter__()
        return hook

    def leave(name):
        def hook(module, args, output):
            open_ranges.pop(name).__exit__(None, None, None)
        return hook

    for name, module in parts(model):
        handles += [module.register_forward_pre_hook(enter(name)), module.register_forward_hook(leave(name))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _kernels(evt) -> tuple[float, int]:
    """(device µs, kernels) launched inside a CPU-side event and its children."""
    us = sum(k.duration for k in evt.kernels)
    n = len(evt.kernels)
    for child in evt.cpu_children:
        c_us, c_n = _kernels(child)
        us, n = us + c_us, n + c_n
    return us, n


def part_times(step, model: nn.Module, *, steps: int, device: torch.device) -> dict[str, tuple[float, int]]:
    """{part: (ms per batch, kernels per batch)} over ``steps`` profiled batches, with the
    kernels outside every part under OUTSIDE. On a CPU: the parts' CPU time, no kernels."""
    on_gpu = device.type == "cuda"
    with part_ranges(model), profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    totals: dict[str, list] = {}
    tops = [e for e in prof.events() if e.cpu_parent is None]
    for evt in prof.events():
        if not evt.name.startswith(PREFIX):
            continue
        us, n = _kernels(evt) if on_gpu else (evt.cpu_time_total, 0)
        t = totals.setdefault(evt.name[len(PREFIX):], [0.0, 0])
        t[0], t[1] = t[0] + us, t[1] + n
    if on_gpu:
        inside = {id(e) for e in prof.events() if e.name.startswith(PREFIX)}
        out_us = out_n = 0
        for evt in tops:
            if id(evt) not in inside:
                us, n = _kernels(evt)
                out_us, out_n = out_us + us, out_n + n
        totals[OUTSIDE] = [out_us, out_n]
    return {name: (us / steps / 1e3, n / steps) for name, (us, n) in totals.items()}


def profile_model(name: str, variant: str, *, batch: int, image_size, dtype, device, steps: int,
                  warmup: int) -> dict:
    """One variant ("eager" or "fused[backend]") of one model: its parts' times and its median batch time."""
    spec = model_spec(name)
    model = build_model(spec, seed=0)
    if variant != "eager":
        model = convert(model, variant[len("fused["):-1])
    model = prepare(model, mode="infer", dtype=dtype, device=device)
    size = spec.image_size if spec.kind == "cifar" else (image_size or spec.image_size)
    x, _ = make_input(batch, size, num_classes=spec.num_classes, device=device, dtype=dtype)
    step = make_infer_step(model, x)
    timing = time_fn(step, device=device, warmup=warmup, steps=max(steps, 3), show=False)
    return {"model": name, "variant": variant, "batch": batch, "median_ms": timing.median_ms,
            "parts": part_times(step, model, steps=steps, device=device)}


def table(results: list[dict]) -> str:
    """One row per part, each variant's ms and kernels per batch; totals last."""
    variants = [r["variant"] for r in results]
    names = list(dict.fromkeys(n for r in results for n in r["parts"]))
    rows = []
    for n in names:
        row = [n]
        for r in results:
            ms, k = r["parts"].get(n, (0.0, 0))
            row += [f"{ms:.3f}", f"{k:.0f}"]
        rows.append(row)
    rows.append(["sum of the parts"] + [c for r in results for c in
                                        (f"{sum(v[0] for v in r['parts'].values()):.3f}",
                                         f"{sum(v[1] for v in r['parts'].values()):.0f}")])
    rows.append(["batch (median, unprofiled)"] + [c for r in results for c in (f"{r['median_ms']:.3f}", "")])
    headers = ["part"] + [h for v in variants for h in (f"{v} ms", "kernels")]
    return format_table(headers, rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet50")
    p.add_argument("--backends", default=None, help="fused backends (default: every available one but reference)")
    p.add_argument("--batch", type=int, default=None, help="GPU 256 (CIFAR 512), CPU 2")
    p.add_argument("--image-size", type=int, default=None, help="ImageNet models (default GPU 224, CPU 64)")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="GPU bf16, CPU fp32")
    p.add_argument("--steps", type=int, default=3, help="profiled batches")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    on_cpu = device.type == "cpu"
    dtype = parse_dtype(args.dtype or ("fp32" if on_cpu else "bf16"))
    if args.backends is None:
        names = [n for n, (ok, _) in available_backends().items() if ok and (n != "reference" or on_cpu)]
    else:
        names = [n.strip() for n in args.backends.split(",") if n.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        model_spec(m)  # unknown names fail before anything runs
    out = {"env": env_info(), "device": gpu_name(device) if not on_cpu else "cpu", "dtype": dtype_name(dtype),
           "models": {}}
    for m in models:
        batch = args.batch or (2 if on_cpu else (512 if model_spec(m).kind == "cifar" else 256))
        image = args.image_size or (64 if on_cpu else None)
        results = [profile_model(m, v, batch=batch, image_size=image, dtype=dtype, device=device, steps=args.steps,
                                 warmup=args.warmup) for v in ["eager"] + [f"fused[{n}]" for n in names]]
        out["models"][m] = results
        print(f"\n== {m}, inference, batch {batch}, {dtype_name(dtype)}, on {out['device']}"
              f"{' (CPU times: a smoke run)' if on_cpu else ''}\n{table(results)}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
