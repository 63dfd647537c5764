"""Command line: ``fused-resnet`` / ``python -m fused_resnet`` {info, check, bench}.

  info    versions, GPU, the compiled extension, each backend and what "auto" picks
  check   torchvision model vs its converted twin: block outputs, logits, gradients
  bench   images/s of torchvision eager vs fused (and torch.compile of both)

The work is done in ``fused_resnet.benchmark``; this module only parses and prints.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from typing import Optional, Sequence

MODEL_HELP = ("a torchvision.models builder name (resnet18/34/50/101/152, resnext50_32x4d, wide_resnet50_2, ...) "
              "or cifar_resnet<depth> (cifar_resnet20, cifar_resnet56, cifar_resnet56_v2, cifar_resnet20_B, ...)")


def _command_line(argv: Optional[Sequence[str]]) -> str:
    if argv is None:
        argv = sys.argv[1:]
        prog = sys.argv[0] if sys.argv else "fused-resnet"
        prog = "python -m fused_resnet" if prog.endswith("__main__.py") else os.path.basename(prog)
    else:
        prog = "fused-resnet"
    return " ".join([prog] + [shlex.quote(a) for a in argv])


# ---------------------------------------------------------------- info


def _describe_build(build: dict) -> str:
    kernels = build.get("cutlass_kernels", [])
    return (f"built with CUDA {build['cuda_version']} for sm {'/'.join(build['arch_list'])}; "
            f"{len(kernels)} CUTLASS convolutions ({', '.join(kernels)})")


def cmd_info(args, argv) -> int:
    from . import benchmark as B

    env = B.env_info()
    built, why = B.ext_status()
    build = B.ext_build_info()
    backends = B.available_backends()
    device = B.default_device()
    probes = {}
    dtypes = ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]
    for name in dtypes:
        probes[name] = _probe_auto(device, B.parse_dtype(name))

    if args.json:
        out = dict(env, extension={"built": built, "reason": why, "built_with": build},
                   backends={k: {"available": ok, "reason": r} for k, (ok, r) in backends.items()},
                   auto={k: {"backend": b, "error": e} for k, (b, e) in probes.items()}, device=device.type)
        print(json.dumps(out, indent=1))
        return 0

    rows = [
        ("fused_resnet", env["fused_resnet"]), ("python", env["python"]), ("torch", env["torch"]),
        ("torchvision", env["torchvision"]), ("triton", env["triton"] or "not installed"),
        ("CUDA runtime", env["cuda_runtime"] or "none (CPU build of torch)"),
        ("cuDNN", env["cudnn"] or "none"),
        ("GPU", env["gpu"] + (f" (sm_{env['gpu_capability'].replace('.', '')}, {env['gpu_sms']} SMs, "
                              f"{env['gpu_memory_GB']} GB)" if env["gpu"] != "none" else "")),
        ("TRITON_INTERPRET", "1" if env["triton_interpret"] else "unset"),
        ("_C extension", _describe_build(build) if built else f"not built: {why}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    print("backends:")
    for name, (ok, reason) in backends.items():
        print(f"  {name.ljust(10)} {'available' if ok else 'unavailable'}{'' if ok else ': ' + reason}")
    for name, (backend, err) in probes.items():
        where = f"{device.type}, {name}"
        if err:
            print(f"auto backend ({where}, resnet50 bottleneck): could not be determined: {err}")
        else:
            print(f"auto backend ({where}, resnet50 bottleneck): {backend}")
    if device.type == "cpu":
        chosen = probes.get("fp32", (None, None))[0] or "an unknown backend"
        print(f"note: no CUDA GPU is visible; fused blocks run on the CPU with the {chosen} backend")
    return 0


def _probe_auto(device, dtype) -> tuple[Optional[str], Optional[str]]:
    """Convert a one-block resnet50-style model with backend="auto", run it once, read ``block.backend``."""
    try:
        import torch
        from torch import nn
        from torchvision.models.resnet import Bottleneck

        from . import benchmark as B

        torch.manual_seed(0)
        model = nn.Sequential(Bottleneck(256, 64))
        fused = B.convert(model, "auto")
        fused = fused.to(device=device, memory_format=torch.channels_last).eval().to(dtype)
        x = torch.randn(2, 256, 8, 8, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            fused(x)
        blocks = B.fused_blocks(fused)
        if not blocks:
            return None, "convert() produced no fused block"
        return str(blocks[0][1].backend), None
    except Exception as e:
        return None, f"{type(e).__name__}: {e}".splitlines()[0]


# ---------------------------------------------------------------- check


def cmd_check(args, argv) -> int:
    from . import benchmark as B

    device = B.resolve_device(args.device)
    dtype = B.parse_dtype(args.dtype)
    spec = B.model_spec(args.model)
    on_cpu = device.type == "cpu"
    batch = args.batch or (2 if on_cpu else 16)
    image = args.image_size or (spec.image_size if spec.kind == "cifar" else (64 if on_cpu else 224))
    report = B.run_parity(
        args.model, dtype=dtype, batch=batch, image_size=image, train=args.train, backend=args.backend,
        device=device, seed=args.seed, rtol=args.rtol, atol=args.atol, lowp_atol=args.lowp_atol,
        channels_last=not args.contiguous, direct=args.direct, show=not args.quiet,
    )
    h = report.header
    print(f"fused-resnet check: {h['model']} {h['mode']} {h['dtype']} batch {h['batch']} "
          f"{h['image_size']}x{h['image_size']} on {h['device']} ({h['gpu']}), "
          f"backend {h['requested_backend']} -> {B.describe_backends(report.backends)}")
    print(f"rule: {h['rule']}")
    print(B.parity_table(report, verbose=args.verbose))
    for p in report.problems:
        print(f"PROBLEM: {p}")
    n_fail = len(report.failures)
    status = "PASS" if report.ok else "FAIL"
    print(f"{status}: {n_fail} of {len(report.items)} compared tensors out of tolerance"
          + (f", {len(report.problems)} problem(s)" if report.problems else ""))
    if args.json:
        _write_json(args.json, {
            "command": _command_line(argv), "env": B.env_info(), "header": h, "ok": report.ok,
            "problems": report.problems, "backends": report.backends,
            "items": [dict(vars(i), ok=i.ok) for i in report.items],
        })
    return 0 if report.ok else 1


# ---------------------------------------------------------------- bench


def cmd_bench(args, argv) -> int:
    import torch

    from . import benchmark as B

    device = B.resolve_device(args.device)
    on_cpu = device.type == "cpu"
    spec = B.model_spec(args.model)
    mode = "train" if args.train else "infer"
    d = B.CPU_DEFAULTS if on_cpu else B.GPU_DEFAULTS
    dtype = B.parse_dtype(args.dtype or d["dtype"])
    if spec.kind == "cifar":
        batch, image = args.batch or (d["batch"] if on_cpu else d["cifar_batch"]), spec.image_size
    else:
        batch, image = args.batch or d["batch"], args.image_size or (d["image_size"] if on_cpu else 224)
    steps = args.steps if args.steps is not None else d["steps"]
    warmup = args.warmup if args.warmup is not None else d["warmup"]
    variants = ["eager", "fused"] + (["eager+compile", "fused+compile"] if args.compile else [])
    if args.no_eager:
        variants = [v for v in variants if not v.startswith("eager")]
    if on_cpu:
        B.progress("no CUDA GPU: running on the CPU with small defaults "
                   f"(batch {batch}, {image}x{image}, {steps} steps); CPU numbers say nothing about GPU speed")
    rows = B.bench_model(
        args.model, mode=mode, variants=variants, batch=batch, image_size=image, dtype=dtype, device=device,
        steps=steps, warmup=warmup, backend=args.backend, compile_mode=args.compile_mode, seed=args.seed,
        channels_last=not args.contiguous, show=not args.quiet,
    )
    env = B.env_info()
    fused_backends = sorted({r.get("backend") for r in rows if r["variant"].startswith("fused") and r.get("backend")})
    note = B.CPU_NOTE.format(backend="/".join(fused_backends) or args.backend) if on_cpu else None
    out = {
        "command": _command_line(argv),
        "cwd": os.getcwd(),
        "date": env["date"],
        "device": env["gpu"] if not on_cpu else "cpu",
        "device_type": device.type,
        "env": env,
        "config": {"model": args.model, "mode": mode, "batch": batch, "image_size": image,
                   "dtype": B.dtype_name(dtype), "channels_last": not args.contiguous, "steps": steps,
                   "warmup": warmup, "backend": args.backend, "compile": args.compile,
                   "compile_mode": args.compile_mode, "variants": variants, "seed": args.seed,
                   "timing": "CUDA events per step, median" if not on_cpu else "perf_counter per step, median",
                   "train_step": "autocast forward + cross-entropy + backward + SGD(momentum=0.9) step",
                   "infer_step": "model.eval().to(dtype) under torch.inference_mode"},
        "note": note,
        "results": rows,
    }
    path = args.json or f"bench-{args.model}-{mode}.json"
    _write_json(path, out)
    print(f"fused-resnet bench: {args.model} {mode} {B.dtype_name(dtype)} batch {batch} {image}x{image} "
          f"on {out['device']}, torch {torch.__version__}")
    print(B.results_table(rows))
    if note:
        print(f"NOTE: {note}")
    print(f"wrote {path}")
    failed = [r for r in rows if r.get("error")]
    return 1 if failed else 0


def _write_json(path: str, obj) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, default=str)
        f.write("\n")


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fused-resnet", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose-log", action="store_true", help="log backend choices (logging INFO)")
    sub = p.add_subparsers(dest="command", metavar="{info,check,bench}")
    sub.required = True

    s = sub.add_parser("info", help="versions, GPU, extension, backends and the auto choice")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    s.set_defaults(func=cmd_info)

    def common(s, default_model):
        s.add_argument("--model", default=default_model, help=MODEL_HELP)
        s.add_argument("--batch", type=int, default=None)
        s.add_argument("--image-size", type=int, default=None, help="ImageNet models only (CIFAR: 32)")
        s.add_argument("--backend", default="auto", help="auto, reference, triton or cuda")
        s.add_argument("--device", default="auto", help="auto (cuda if visible), cuda, cpu")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--contiguous", action="store_true", help="NCHW activations instead of channels_last")
        s.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")

    s = sub.add_parser("check", help="parity of a converted model against torchvision",
                       description="Forward + backward of a torchvision model and of its converted twin on the "
                                   "same seeded batch; per-block outputs, logits, input and parameter gradients "
                                   "(and BN running statistics with --train) are compared against an fp64 copy "
                                   "of the plain model, next to plain PyTorch's own error: fp32 (TF32 off) passes "
                                   "when err <= 2*plain_err + rtol*scale + atol*group_scale, fp16/bf16 when "
                                   "err <= 2*plain_err + lowp_atol*group_scale. Exit code 1 when any tensor is "
                                   "out of tolerance. Defaults: CPU batch 2 at 64x64, GPU batch 16 at 224x224.")
    common(s, "resnet50")
    s.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    s.add_argument("--train", action="store_true", help="train mode: batch statistics, running stats updated")
    s.add_argument("--rtol", type=float, default=1e-4, help="fp32: times the tensor's scale")
    s.add_argument("--atol", type=float, default=1e-4, help="fp32: times the scale of its group")
    s.add_argument("--lowp-atol", type=float, default=None, help="fp16/bf16: times the group scale "
                   "(default 2e-3 fp16, 1e-2 bf16)")
    s.add_argument("--direct", action="store_true", help="fp32: compare with plain fp32 directly "
                   "(|fused - plain| <= rtol*scale + atol*group_scale) instead of against an fp64 reference")
    s.add_argument("--verbose", action="store_true", help="one row per parameter and buffer")
    s.add_argument("--json", default=None, help="also write the report as JSON to this path")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("bench", help="images/s of torchvision eager vs fused (and torch.compile)",
                       description="Whole-model throughput. GPU defaults: bf16, batch 256 (CIFAR 512), 20 timed "
                                   "steps after 5 warm-up steps. Without a GPU it runs on the CPU with batch 2, "
                                   "64x64 images, 2 steps: those numbers say nothing about GPU speed.")
    common(s, "resnet50")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--train", action="store_true", help="training step (autocast + SGD)")
    g.add_argument("--infer", action="store_true", help="inference (default)")
    s.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                   help="default bf16 on a GPU, fp32 on the CPU")
    s.add_argument("--compile", action="store_true", help="also torch.compile of eager and of fused")
    s.add_argument("--compile-mode", default=None, help="torch.compile mode (default: inductor default)")
    s.add_argument("--no-eager", action="store_true", help="skip the torchvision baselines")
    s.add_argument("--steps", type=int, default=None, help="timed steps (GPU 20, CPU 2)")
    s.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps (GPU 5, CPU 1)")
    s.add_argument("--json", default=None, help="output path (default bench-<model>-<mode>.json)")
    s.set_defaults(func=cmd_bench)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose_log else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args, argv) or 0)
    except (ValueError, RuntimeError, ImportError) as e:
        print(f"fused-resnet {args.command}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
