#!/usr/bin/env python
"""Per-block times: torchvision eager vs torch.compile vs fused, for each available backend.

Blocks (N=128 on a GPU, as in the peer anchors):
  layer1  bottleneck 256-64-256 at 56x56 (identity shortcut)
  layer3  bottleneck 1024-256-1024 at 14x14 (identity shortcut)
  basic   BasicBlock 64-64 at 56x56 (identity shortcut)

Modes:
  infer   block.eval().to(dtype), channels_last input in dtype, torch.inference_mode
  train   block.train(), fp32 parameters under autocast(dtype), input in dtype requiring grad;
          one step = forward + backward of a fixed random output gradient (no optimizer step)

For inference the memory floor is the bytes of input + output + weights read or
written once; achieved bandwidth = floor bytes / time, also given as a share of
the measured copy bandwidth. For every uncompiled variant, in both modes, one
more step is run with its operators' bytes counted (fused_resnet.tools.traffic.op_traffic: each
operator's tensor inputs and outputs once, a fused op as one operator, the
traffic bench/traffic.py tabulates): "op GB" per step, and "GB/s (op bytes)" =
op GB / time, how close that variant's own kernels come to streaming.
``GBps_per_act`` (input + output only) is the quantity in the peer anchors.
Inputs rotate among 3 buffers so that repeated steps do not run out of L2.

    python bench/bench_blocks.py --json $OUT/blocks.json          # GPU: bf16, N=128
    python bench/bench_blocks.py --quick                           # CPU smoke run (N=2)

``--table PATH`` also writes the fused variants' times as a speed table
(fused_resnet/backends/speed_table.py), which backend="auto" follows when the
file is named in FUSED_RESNET_SPEED_TABLES or committed to fused_resnet/speed_tables/.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from fused_resnet import convert  # noqa: E402
from fused_resnet.backends import choice  # noqa: E402
from fused_resnet.tools.env import dtype_name, env_info, parse_dtype, resolve_device  # noqa: E402
from fused_resnet.tools.models import block_backends, perturb_batchnorm  # noqa: E402
from fused_resnet.tools.report import format_table, progress  # noqa: E402
from fused_resnet.tools.timing import (  # noqa: E402
    CPU_NOTE, autocast, measure_ceilings, peak_memory_gb, prepare, reset_peak_memory, time_fn,
)
from fused_resnet.tools.traffic import conv_flops, op_traffic, weight_bytes  # noqa: E402

BLOCKS = {
    "layer1": ("layer1 bottleneck 256-64-256 56x56", "bottleneck", 256, 64, 56),
    "layer3": ("layer3 bottleneck 1024-256-1024 14x14", "bottleneck", 1024, 256, 14),
    "basic": ("basic 64-64 56x56", "basic", 64, 64, 56),
}
ROTATE = 3


def make_block(kind: str, inplanes: int, planes: int, seed: int) -> nn.Module:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    torch.manual_seed(seed)
    block = Bottleneck(inplanes, planes) if kind == "bottleneck" else BasicBlock(inplanes, planes)
    return perturb_batchnorm(block, seed + 1)


def block_variant(variant: str, kind, inplanes, planes, *, seed, compile_mode):
    """(module, expected backend or None) for one variant name."""
    block = make_block(kind, inplanes, planes, seed)
    if variant == "eager":
        return block, None
    if variant == "compile":
        return block, None  # compiled after it is moved to the device
    if variant.startswith("fused["):
        name = variant[len("fused["):].split("]")[0]
        return convert(nn.Sequential(block), name), name
    raise ValueError(variant)


def build_step(key, mode, variant, *, batch, dtype, device, seed, compile_mode):
    """(module, step, expected backend or None): one block variant on the device and a
    function doing one inference or training step over rotating inputs."""
    label, kind, inplanes, planes, hw = BLOCKS[key]
    module, expect = block_variant(variant, kind, inplanes, planes, seed=seed, compile_mode=compile_mode)
    module = prepare(module, mode=mode, dtype=dtype, device=device)
    run = torch.compile(module, mode=compile_mode) if variant.endswith("compile") else module
    g = torch.Generator().manual_seed(seed + 7)
    shape = (batch, inplanes, hw, hw)
    xs = [torch.randn(shape, generator=g).to(device=device, dtype=dtype)
          .contiguous(memory_format=torch.channels_last) for _ in range(ROTATE)]
    cycle = itertools.cycle(xs)
    if mode == "infer":
        def step():
            with torch.inference_mode():
                return run(next(cycle))
        return module, step, expect
    for x in xs:
        x.requires_grad_(True)
    gout = torch.randn(shape, generator=g).to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)

    def step():
        x = next(cycle)
        with autocast(device, dtype):
            out = run(x)
        out.backward(gout)
        module.zero_grad(set_to_none=True)
        x.grad = None
    return module, step, expect


def run_one(key, mode, variant, *, batch, dtype, device, steps, warmup, seed, compile_mode, show):
    label = BLOCKS[key][0]
    row = {"block": label, "key": key, "mode": mode, "variant": variant, "N": batch, "dtype": dtype_name(dtype),
           "channels_last": True, "compiled": variant.endswith("compile")}
    t0 = time.perf_counter()
    module = step = None
    try:
        reset_peak_memory(device)
        torch._dynamo.reset()
        module, step, expect = build_step(key, mode, variant, batch=batch, dtype=dtype, device=device, seed=seed,
                                          compile_mode=compile_mode)
        timing = time_fn(step, device=device, warmup=warmup, steps=steps, label=f"{key} {mode} {variant}",
                           show=show)
        row.update(timing.as_dict())
        if not row["compiled"]:  # compiled code runs its own kernels, past the dispatcher
            traffic = op_traffic(step)
            row["op_bytes"], row["op_count"] = traffic["bytes"], traffic["ops"]
        row["peak_GB"] = peak_memory_gb(device)
        if expect is not None:
            got = sorted(block_backends(module))
            row["backend"] = "+".join(got)
            if got != [expect]:
                row["warning"] = f"requested {expect}, ran on {got}"
        else:
            row["backend"] = "torch"
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {e}"[:2000]
        progress(f"{key} {mode} {variant}: FAILED: {row['error'].splitlines()[0]}", show)
    finally:
        row["wall_s"] = time.perf_counter() - t0
        del module, step
        torch._dynamo.reset()
        reset_peak_memory(device)
    return row


def fused_key(kind: str, inplanes: int, planes: int) -> str:
    """The speed-table signature of the fused twin of one benchmark block."""
    return convert(nn.Sequential(make_block(kind, inplanes, planes, 0)), "reference")[0].speed_key()


def speed_table(rows, *, device: str, dtype: str, date: str, command: str) -> dict:
    """Per block and mode, the median ms of every fused backend that ran as asked (no fallback, no compile)."""
    entries = {}
    for r in rows:
        ok = r["variant"].startswith("fused[") and not r["compiled"] and r.get("median_ms")
        if not ok or r.get("error") or r.get("warning"):
            continue
        label, kind, inplanes, planes, hw = BLOCKS[r["key"]]
        entry = entries.setdefault((r["key"], r["mode"]), {
            "block": fused_key(kind, inplanes, planes), "hw": hw, "mode": r["mode"], "N": r["N"], "ms": {}})
        entry["ms"][r["variant"][len("fused["):-1]] = r["median_ms"]
    return {"device": device, "dtype": dtype, "date": date, "command": command, "entries": list(entries.values())}


@functools.lru_cache(maxsize=None)
def block_costs(key: str, n: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(activation bytes in + out, floor bytes = activations + weights, forward FLOPs) of one block."""
    label, kind, inplanes, planes, hw = BLOCKS[key]
    block = make_block(kind, inplanes, planes, 0)
    item = torch.empty((), dtype=dtype).element_size()
    act = 2 * n * inplanes * hw * hw * item  # identity blocks: the output has the input's shape
    return act, act + weight_bytes(block, dtype), conv_flops(block, (n, inplanes, hw, hw))


def add_floors(rows, *, dtype, ceilings):
    for r in rows:
        act, r["floor_bytes"], r["flops_fwd"] = block_costs(r["key"], r["N"], dtype)
        r["act_bytes"] = act
        ms = r.get("median_ms")
        if not ms:
            continue
        r["TFLOPs"] = (r["flops_fwd"] * (1 if r["mode"] == "infer" else 3)) / (ms * 1e-3) / 1e12
        if r.get("op_bytes"):
            r["GBps_ops"] = r["op_bytes"] / (ms * 1e-3) / 1e9
        if r["mode"] == "infer":
            r["GBps"] = r["floor_bytes"] / (ms * 1e-3) / 1e9
            r["GBps_per_act"] = act / (ms * 1e-3) / 1e9
            if ceilings.get("copy_GBps"):
                r["pct_copy_BW"] = 100 * r["GBps"] / ceilings["copy_GBps"]
                floor_ms = r["floor_bytes"] / (ceilings["copy_GBps"] * 1e9) * 1e3
                if ceilings.get("bf16_TFLOPs"):
                    floor_ms = max(floor_ms, r["flops_fwd"] / (ceilings["bf16_TFLOPs"] * 1e12) * 1e3)
                r["floor_ms"] = floor_ms


def table(rows) -> str:
    eager = {(r["key"], r["mode"]): r.get("median_ms") for r in rows if r["variant"] == "eager"}
    body = []
    for r in rows:
        if r.get("error"):
            body.append([r["key"], r["mode"], r["variant"], "FAILED", r["error"].splitlines()[0][:50],
                         None, None, None, None, None, None])
            continue
        e = eager.get((r["key"], r["mode"]))
        op_gb = r["op_bytes"] / 1e9 if r.get("op_bytes") else None
        body.append([r["key"], r["mode"], r["variant"], r.get("median_ms"),
                     e / r["median_ms"] if e and r.get("median_ms") else None,
                     r.get("GBps"), r.get("pct_copy_BW"), r.get("floor_ms"), r.get("TFLOPs"), op_gb,
                     r.get("GBps_ops")])
    return format_table(["block", "mode", "variant", "median ms", "x eager", "GB/s (floor bytes)",
                           "% copy BW", "floor ms", "TFLOP/s", "op GB", "GB/s (op bytes)"], body)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default="bench-blocks.json", help="output JSON path")
    p.add_argument("--table", default=None, help="also write the fused times as a speed table for backend='auto'")
    p.add_argument("--blocks", default="layer1,layer3,basic")
    p.add_argument("--modes", default="infer,train")
    p.add_argument("--batch", type=int, default=None, help="N (GPU 128, CPU 2)")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="GPU bf16, CPU fp32")
    p.add_argument("--steps", type=int, default=None, help="timed steps (GPU 30, CPU 2)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (GPU 5, CPU 1)")
    p.add_argument("--backends", default=None,
                   help="fused backends to time (default: every available one; on the CPU only reference)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the eager block")
    p.add_argument("--compile-fused", action="store_true", help="also torch.compile the fused blocks")
    p.add_argument("--compile-mode", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="fewer steps, no compile")
    p.add_argument("--plot", default=None, help="also draw each block's median step per variant here")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv=None) -> int:
    p = _parser()
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    on_cpu = device.type == "cpu"
    dtype = parse_dtype(args.dtype or ("fp32" if on_cpu else "bf16"))
    batch = args.batch or (2 if on_cpu else 128)
    steps = args.steps or (2 if on_cpu else (10 if args.quick else 30))
    warmup = args.warmup if args.warmup is not None else (1 if on_cpu else (3 if args.quick else 5))
    show = not args.quiet
    keys = [k.strip() for k in args.blocks.split(",") if k.strip()]
    for k in keys:
        if k not in BLOCKS:
            p.error(f"unknown block {k!r}; choose from {', '.join(BLOCKS)}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]

    from fused_resnet import backends as BK

    if args.backends:
        names = [b.strip() for b in args.backends.split(",") if b.strip()]
    else:
        names = [n for n in BK.BACKENDS if not (on_cpu and n == "triton")]
    fused_variants, skipped = [], {}
    for n in names:
        reasons = BK.get(n).not_supported_reasons(device, dtype)
        if not reasons:
            fused_variants.append(f"fused[{n}]")
        else:
            skipped[n] = "; ".join(reasons)
    variants = ["eager"] + ([] if (args.no_compile or args.quick) else ["compile"]) + fused_variants
    if args.compile_fused and not args.quick:
        variants += [v + "+compile" for v in fused_variants]
    for n, why in skipped.items():
        progress(f"backend {n} skipped: {why}", show)
    if on_cpu:
        progress(f"no CUDA GPU: CPU run with N={batch}; CPU numbers say nothing about GPU speed", show)

    ceilings = measure_ceilings(device, show=show)
    command = " ".join(["python", "bench/bench_blocks.py"] + [shlex.quote(a) for a in
                                                              (sys.argv[1:] if argv is None else argv)])
    rows = []

    def write(partial: bool) -> dict:
        """The JSON, rewritten after every block and mode so that a run cut short keeps what it measured."""
        add_floors(rows, dtype=dtype, ceilings=ceilings)
        env = env_info()
        out = {
            "command": command, "partial": partial,
            "date": env["date"], "device": env["gpu"] if not on_cpu else "cpu", "env": env, "ceilings": ceilings,
            "config": {"blocks": keys, "modes": modes, "N": batch, "dtype": dtype_name(dtype), "steps": steps,
                       "warmup": warmup, "variants": variants, "skipped_backends": skipped,
                       "compile_mode": args.compile_mode, "rotating_inputs": ROTATE,
                       "floor": "input + output + weights (conv weights in dtype, fp32 folded bias), once",
                       "op_bytes": "each operator's tensor inputs and outputs once (fused_resnet.tools.traffic.op_traffic)",
                       "train_step": "forward under autocast + backward of a fixed random dout, no optimizer"},
            "note": CPU_NOTE.format(backend="reference") if on_cpu else None,
            "results": rows, "table": table(rows),
            "cuda_choices": choice.choices_table(),
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
        if args.table and not partial:
            table_out = speed_table(rows, device=out["device"], dtype=dtype_name(dtype), date=env["date"],
                                    command=command)
            with open(args.table, "w") as f:
                json.dump(table_out, f, indent=1)
        return out

    for key in keys:
        for mode in modes:
            for v in variants:
                rows.append(run_one(key, mode, v, batch=batch, dtype=dtype, device=device, steps=steps,
                                    warmup=warmup, seed=args.seed, compile_mode=args.compile_mode, show=show))
            write(partial=True)
    out = write(partial=False)
    text = out["table"]
    dev = out["device"]
    print(f"bench_blocks: N={batch} {dtype_name(dtype)} channels_last on {dev}, torch {torch.__version__}"
          + (f"; copy {ceilings['copy_GBps']:.0f} GB/s, bf16 GEMM {ceilings['bf16_TFLOPs']:.0f} TFLOP/s"
             if ceilings else ""))
    print(text)
    if on_cpu:
        print("NOTE: " + out["note"])
    print(f"wrote {args.json}")
    if args.plot:
        from fused_resnet import plot

        plot.blocks_chart(rows, args.plot, f"blocks, N={batch} {dtype_name(dtype)} on {dev}")
        print(f"wrote {args.plot}")
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
