#!/usr/bin/env python
"""Registers, stack (spills) and shared memory of the Triton kernels, compiled for a GPU target
without a GPU, or of the kernels compiled into fused_resnet._C.

Every specialisation the triton backend can launch (the lists the sm_90 compile check
uses: ``fused_resnet.kernels.all_specializations()``) is compiled to a cubin and
read with the ``cuobjdump`` that ships with Triton. ``--cuda-ext`` reads the built
extension instead: every kernel of every architecture it holds, the CUTLASS
convolutions named by family (fprop_prologue, fprop_stats, fprop_bias_relu,
wgrad_prologue, dgrad_bn_relu), element type and tile. A kernel at the 255-register
cap with a stack frame spills to local memory; one with many registers per thread
fits few programs per SM; the mma column says whether the matrix products compiled to
Hopper's wgmma or to the older mma.sync. All are facts of compilation, not timings: they
point at candidates to look at in a GPU profile.

    python bench/kernel_resources.py --filter conv_bf16,dgrad_bf16,wgrad_bf16 --json res.json
    python bench/kernel_resources.py --arch 80
    python bench/kernel_resources.py --cuda-ext --json cuda.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU target, not the interpreter
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import triton  # noqa: E402

from fused_resnet.kernels import all_specializations, compile_specialization  # noqa: E402

_USAGE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
# The CUTLASS convolution families of csrc/cutlass/, told apart by the types their kernels name
# (mangled), most specific first.
_CUTLASS_FAMILIES = (("DgradBnReluEpilogue", "dgrad_bn_relu"), ("ImplicitGemmWgradFusionMultistage", "wgrad_prologue"),
                     ("ImplicitGemmFpropFusionMultistage", "fprop_prologue"), ("FpropEpilogue", "fprop_stats"),
                     ("LinearCombinationBiasElementwise", "fprop_bias_relu"))
_CUTLASS_ELEMENTS = (("10bfloat16_t", "bf16"), ("6half_t", "f16"))
_TILE = re.compile(r"GemmShapeILi(\d+)ELi(\d+)ELi(\d+)E")


def cuobjdump() -> str:
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(path):
        raise SystemExit(f"cuobjdump not found at {path} (it ships with Triton's NVIDIA backend)")
    return path


def resources(spec, arch: int, tool: str) -> dict:
    """Registers per thread, stack bytes per thread and shared memory bytes of one specialisation."""
    compiled = compile_specialization(spec, arch)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
    try:
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    m = _USAGE.search(out)
    if m is None:
        raise RuntimeError(f"no resource usage in cuobjdump's output for {spec[0]}: {out[-500:]}")
    regs, stack, _, local = (int(v) for v in m.groups())
    return {"name": spec[0], "regs": regs, "stack": stack, "local": local, "shared": compiled.metadata.shared,
            "num_warps": spec[4].get("num_warps"), "mma": mma_kind(compiled.asm.get("ptx", ""))}


def mma_kind(ptx: str) -> str:
    """The matrix instructions a kernel's PTX uses: "wgmma" (Hopper's warpgroup MMA, the fast
    path on sm_90), "mma.sync" (the Ampere-style warp MMA, about half the rate there), or "-"."""
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    return "mma.sync" if "mma.sync" in ptx else "-"


def extension_kernel_name(mangled: str) -> str:
    """A readable name for one kernel of _C: family_dtype_MxNxK for the CUTLASS convolutions,
    the function's own name for the others."""
    for marker, family in _CUTLASS_FAMILIES:
        if marker in mangled:
            dtype = next((d for m, d in _CUTLASS_ELEMENTS if m in mangled), "?")
            tile = _TILE.search(mangled)
            return f"{family}_{dtype}_{'x'.join(tile.groups()) if tile else '?'}"
    demangled = subprocess.run(["c++filt", mangled], capture_output=True, text=True).stdout.strip() or mangled
    name = demangled.replace("(anonymous namespace)::", "").removeprefix("void ")
    args = re.search(r"<([^<>]*)>\(", name)  # the template arguments of a simple template
    base = re.split(r"[<(]", name, maxsplit=1)[0].rsplit("::", 1)[-1]
    return f"{base}<{args.group(1)}>" if args else base


def extension_resources(library: str, tool: str) -> list[dict]:
    """One row per (architecture, kernel) of the extension's fatbinary."""
    out = subprocess.run([tool, "-res-usage", library], capture_output=True, text=True, check=True).stdout
    rows, arch, name = [], None, None
    for line in out.splitlines():
        if line.startswith("arch = sm_"):
            arch = int(line.split("sm_")[1])
        elif line.strip().startswith("Function "):
            name = extension_kernel_name(line.strip()[len("Function "):].rstrip(":"))
        elif name is not None and (m := _USAGE.search(line)):
            regs, stack, shared, local = (int(v) for v in m.groups())
            rows.append({"arch": arch, "name": name, "regs": regs, "stack": stack, "local": local, "shared": shared})
            name = None
    return rows


def print_extension(args, tool: str) -> int:
    import fused_resnet._C as C

    rows = extension_resources(C.__file__, tool)
    print(f"{C.__file__}: {len(rows)} kernels")
    print(f"{'arch':>4} {'kernel':<48} {'regs':>4} {'stack':>5} {'shared':>7}")
    for r in sorted(rows, key=lambda r: (r["arch"], r["name"])):
        flag = "  spills" if r["stack"] or r["local"] else ""
        print(f"{r['arch']:>4} {r['name']:<48} {r['regs']:>4} {r['stack']:>5} {r['shared']:>7}{flag}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(["kernel_resources.py"] + (args.argv or [])), "library": C.__file__,
                       "built_with": C.built_with(), "rows": rows}, f, indent=1)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--filter", default="", help="comma-separated name prefixes (default: every specialisation)")
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--json", help="write the rows and the versions here")
    p.add_argument("--cuda-ext", action="store_true", help="read the kernels compiled into fused_resnet._C")
    args = p.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    if args.cuda_ext:
        return print_extension(args, cuobjdump())
    prefixes = tuple(f for f in args.filter.split(",") if f)
    specs = [s for s in all_specializations() if not prefixes or s[0].startswith(prefixes)]
    tool = cuobjdump()
    rows = []
    print(f"triton {triton.__version__}, sm_{args.arch}, {len(specs)} specialisations")
    print(f"{'specialisation':<72} {'regs':>4} {'stack':>5} {'shared':>7} {'mma':>8}")
    for spec in specs:
        r = resources(spec, args.arch, tool)
        rows.append(r)
        flag = "  spills" if r["stack"] or r["local"] else ""
        print(f"{r['name']:<72} {r['regs']:>4} {r['stack']:>5} {r['shared']:>7} {r['mma']:>8}{flag}", flush=True)
    spilling = [r["name"] for r in rows if r["stack"] or r["local"]]
    print(f"{len(spilling)} of {len(rows)} specialisations use a stack frame (spills)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(["kernel_resources.py"] + (argv if argv is not None else sys.argv[1:])),
                       "triton": triton.__version__, "arch": args.arch, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
