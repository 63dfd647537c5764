#!/usr/bin/env python
"""Host time of a fused block step with the kernels taken out: the Python and dispatch cost.

A fused block that is host-bound runs at the speed of its Python, whatever its
kernels do; small blocks (the CIFAR ResNets, batch 1 inference) and training,
which launches more kernels, are where that shows. This script measures that cost
on any machine, GPU or not, on tiny CPU tensors, for each variant:

  eager        torchvision's block (for scale: its CPU kernels on tiny tensors)
  null         the fused block with every op answered by its fake (shape-only)
               implementation: blocks.py, the custom ops and autograd, nothing else
  triton-host  the triton backend's launchers (checks, weight layouts, partials
               buffers, configuration lookups) with every Triton kernel launch
               replaced by a counter: the launches are counted, not run. Triton's
               own launch cost (argument binding) comes on top, once per launch.
  cuda-host    the cuda backend's Python (the choice between CUTLASS and cuDNN, the
               passes it composes) with every call into fused_resnet._C's ops
               answered by its fake and counted; which convolutions CUTLASS takes is
               _C.conv_reason's answer for bf16 channels_last (meta) copies of the
               operands, the device aside. Each call runs one to three kernels on a GPU (a
               convolution with its statistics merge, say); the C++ side of each call
               comes on top. Needs the extension built.

Printed per block and mode: microseconds per step (median of --repeat runs of
--steps steps) and the kernels one step launches on a GPU: Triton launches
(triton-host), calls into _C (cuda-host) and PyTorch operators that run a kernel
(every aten op of the step except views and allocations, counted by a dispatch mode). On a GPU each
launch costs host time and a few microseconds of GPU time however small it is.

    python bench/host_overhead.py
    python bench/host_overhead.py --json host.json --steps 300
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import statistics
import sys
import time

# The triton backend serves CPU tensors only under the interpreter flag; no kernel runs here.
os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import fused_resnet  # noqa: E402
from fused_resnet import backends, op_list  # noqa: E402
from fused_resnet.backends.base import Backend  # noqa: E402
from fused_resnet.tools.env import env_info, utc_now  # noqa: E402
from fused_resnet.tools.models import perturb_batchnorm  # noqa: E402

import _launches as L  # noqa: E402

# (label, block constructor arguments, input channels, spatial size)
BLOCKS = {
    "bottleneck": ("Bottleneck 64-16-64", ("bottleneck", 64, 16), 64, 4),
    "basic": ("BasicBlock 16-16", ("basic", 16, 16), 16, 4),
    "preact": ("PreActBasicBlock 16-16", ("preact", 16, 16), 16, 4),
}


def null_backend() -> Backend:
    """A backend whose every op is answered by its fake implementation: outputs of the right
    shape, never computed."""
    attrs = {"name": "null", **{name: staticmethod(op.fake) for name, op in op_list.OPS.items()}}
    return type("NullBackend", (Backend,), attrs)()


def make_block(kind: str, cin: int, planes: int) -> nn.Module:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    from fused_resnet.models.preact import PreActBasicBlock

    torch.manual_seed(0)
    cls = {"bottleneck": Bottleneck, "basic": BasicBlock, "preact": PreActBasicBlock}[kind]
    return perturb_batchnorm(cls(cin, planes), 1)


def make_step(module: nn.Module, x: torch.Tensor, gout: torch.Tensor, mode: str, no_grad: bool = False):
    """One step; inference under inference_mode, or no_grad (the kernel count: a dispatch mode
    does not see inside custom ops under inference_mode; the fused path runs the same kernels
    under both)."""
    if mode == "infer":
        def step():
            with torch.no_grad() if no_grad else torch.inference_mode():
                module(x)
        return step

    def step():
        module(x).backward(gout)
        x.grad = None
        module.zero_grad(set_to_none=True)
    return step


def time_step(step, steps: int, repeat: int) -> float:
    """Median over ``repeat`` runs of the mean microseconds per step."""
    for _ in range(10):
        step()
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        runs.append((time.perf_counter() - t0) / steps * 1e6)
    return statistics.median(runs)


def measure(key: str, mode: str, variant: str, *, steps: int, repeat: int, counts: collections.Counter) -> dict:
    label, (kind, cin, planes), c, hw = BLOCKS[key]
    block = make_block(kind, cin, planes)
    if variant != "eager":
        block = fused_resnet.convert(block, backend={"triton-host": "triton"}.get(variant, variant))
    module = nn.Sequential(block).train(mode == "train")
    x = torch.randn(2, c, hw, hw).contiguous(memory_format=torch.channels_last).requires_grad_(mode == "train")
    gout = torch.randn_like(x)
    step = make_step(module, x, gout, mode)
    us = time_step(step, steps, repeat)
    row = {"block": label, "mode": mode, "variant": variant, "us_per_step": round(us, 1)}
    counts.clear()
    aten: collections.Counter = collections.Counter()
    with L.BackendDispatch(lambda func, *_: aten.update([func.overloadpacket.__name__])):
        make_step(module, x, gout, mode, no_grad=True)()
    row["aten_kernels_per_step"] = sum(aten.values())
    row["aten_kernels"] = dict(sorted(aten.items()))
    if variant in ("triton-host", "cuda-host"):
        kind = "triton_launches" if variant == "triton-host" else "cuda_ext_calls"
        row[f"{kind}_per_step"] = sum(counts.values())
        row[kind] = dict(sorted(counts.items()))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", default=",".join(BLOCKS))
    p.add_argument("--modes", default="infer,train")
    p.add_argument("--variants", default="eager,null,triton-host",
                   help="of eager, null, triton-host, cuda-host (needs fused_resnet._C)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", help="write the rows and the environment here")
    args = p.parse_args(argv)

    counts: collections.Counter = collections.Counter()
    variants = args.variants.split(",")
    if "null" in variants:
        backends.BACKENDS.setdefault("null", null_backend())
    torch.set_num_threads(1)
    with contextlib.ExitStack() as stack:
        if "triton-host" in variants:
            stack.enter_context(L.triton_launches(lambda name, *_: counts.update([name])))
        if "cuda-host" in variants:
            stack.enter_context(L.cuda_host_backend(lambda name, *_: counts.update([name])))
        rows = run_all(args, variants, counts)
    if args.json:
        env = env_info()
        env["cpu"] = _cpu_name()
        with open(args.json, "w") as f:
            json.dump({"command": " ".join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:])),
                       "date": utc_now(), "env": env, "rows": rows}, f, indent=1)
    return 0


def run_all(args, variants: list[str], counts: collections.Counter) -> list[dict]:
    """measure() every block, mode and variant asked for, each row printed as it comes."""
    rows = []
    for key in args.blocks.split(","):
        for mode in args.modes.split(","):
            for variant in variants:
                rows.append(measure(key, mode, variant, steps=args.steps, repeat=args.repeat, counts=counts))
                r = rows[-1]
                own = r.get("triton_launches_per_step", r.get("cuda_ext_calls_per_step", 0))
                what = "calls into _C" if variant == "cuda-host" else "Triton kernels"
                print(f"{r['block']:<24} {mode:<6} {variant:<12} {r['us_per_step']:>9.1f} us/step "
                      f"{r['aten_kernels_per_step']:>4} aten + {own:>3} {what}", flush=True)
    return rows


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
