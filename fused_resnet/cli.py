"""Command line: fused-resnet (or python -m fused_resnet) with the commands info, check, bench,
train and experiment.

  info        versions, GPU, the compiled extension, each backend and what "auto" picks
  check       torchvision model vs its converted twin: block outputs, logits, gradients
  bench       images/s of torchvision eager vs fused (and torch.compile of both)
  train       a CIFAR ResNet trained end to end (fused_resnet.train)
  experiment  the residual-network experiments, each a set of train runs (fused_resnet.experiments)

Every argument is checked before any work starts; an argument that cannot be served
ends the command at once (exit code 2) with a message naming it, what was given and
what is allowed. A run that fails (a bench variant that fails, a check out of
tolerance) never replaces an earlier result file: it writes NAME.failed.EXT beside it.
The work is done in fused_resnet.tools (and the charts in fused_resnet.plot).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import shlex
import sys
import tempfile
from typing import Callable, Optional, Sequence

from ._files import atomic_write
from .backends import available_backends

DESCRIPTION = ("Fused ResNet blocks: what runs here (info), parity of a converted model against torchvision "
               "(check), its speed against torchvision (bench), and CIFAR ResNets trained end to end (train, "
               "experiment).")
MODEL_HELP = ("a torchvision.models builder name (resnet18/34/50/101/152, resnext50_32x4d, wide_resnet50_2, ...) "
              "or cifar_resnet<depth> (cifar_resnet20, cifar_resnet56, cifar_resnet56_v2, cifar_resnet20_B, ...)")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SEED_LIMIT = 2**32


class UsageError(Exception):
    """An argument that parses but cannot be served here; reported with the command's usage."""


# ---------------------------------------------------------------- argument types


def _integer(low: int, what: str, high: Optional[int] = None) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` (below ``high``), else an error saying what was expected."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value >= high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def _backend_names() -> list[str]:
    from .backends import BACKENDS

    return ["auto", *BACKENDS]


def _backend(text: str) -> str:
    names = _backend_names()
    if text not in names:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(names)}, got {text!r}")
    return text


def _backends(text: str) -> str:
    """One backend name or several, comma-separated (each fused variant runs once per backend)."""
    names = [n.strip() for n in text.split(",")]
    bad = [n for n in names if n not in _backend_names()]
    if bad or not text.strip():
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(_backend_names())} or several of them comma-separated, got {text!r}")
    return ",".join(names)


def _device(text: str):
    import torch

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(text)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda" and (device.index or 0) >= count:
        raise argparse.ArgumentTypeError(f"got {text!r}, but this machine has {count} visible CUDA GPU(s)")
    return device


def _model(text: str) -> str:
    from .tools.models import fusable_blocks, model_spec

    try:
        fusable_blocks(model_spec(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _output(kind: str) -> Callable[[str], str]:
    """An argparse type: a file path this process can create or replace (``kind`` "json" or "plot")."""
    def parse(text: str) -> str:
        path = os.path.abspath(text)
        if os.path.isdir(path):
            raise argparse.ArgumentTypeError(f"expected a file path, got the directory {text!r}")
        parent = os.path.dirname(path)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        try:
            tempfile.TemporaryFile(dir=parent).close()
        except OSError as e:
            raise argparse.ArgumentTypeError(f"got {text!r}, but {parent} is not writable: {e.strerror}") from None
        if kind == "plot":
            _plot_format(text)
        return text

    return parse


def _plot_format(text: str) -> None:
    from . import plot

    try:
        formats = plot.file_formats()
    except ImportError:
        raise argparse.ArgumentTypeError(plot.MISSING) from None
    ext = os.path.splitext(text)[1].lstrip(".").lower()
    if ext not in formats:
        raise argparse.ArgumentTypeError(
            f"expected a file name ending in one of .{', .'.join(sorted(formats))}, got {text!r}")


# ---------------------------------------------------------------- checks after parsing


def _check_backends(backend: str, device, dtype) -> None:
    from .backends import BACKENDS
    from .tools.env import dtype_name

    for name in backend.split(","):
        if name == "auto":
            continue
        reasons = BACKENDS[name].not_supported_reasons(device, dtype)
        if reasons:
            raise UsageError(f"argument --backend: {name!r} cannot run {dtype_name(dtype)} on {device}: "
                             f"{'; '.join(reasons)} (--backend auto picks one that can)")


def _check_step(spec, batch: int, image: int, train: bool) -> None:
    from .tools.models import check_step

    try:
        check_step(spec, batch=batch, image_size=image, train=train)
    except ValueError as e:
        raise UsageError(f"arguments --batch/--image-size: {e}") from None


def _check_image_size(args, spec) -> None:
    if spec.kind == "cifar" and args.image_size not in (None, spec.image_size):
        raise UsageError(f"argument --image-size: {spec.name} takes {spec.image_size}x{spec.image_size} images, "
                         f"got {args.image_size}")


# ---------------------------------------------------------------- output files


def failed_path(path: str) -> str:
    """Where a failed run writes instead of ``path``: NAME.failed.EXT beside it."""
    stem, ext = os.path.splitext(path)
    return f"{stem}.failed{ext}"


def _save(path: str, ok: bool, write: Callable[[str], None]) -> str:
    """``write`` a result to ``path`` (to ``failed_path(path)`` when the run failed) through a
    temporary file renamed into place, so an earlier file is replaced whole or not at all."""
    target = path if ok else failed_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    atomic_write(target, write)
    return target


def _json_writer(obj) -> Callable[[str], None]:
    def write(path: str) -> None:
        with open(path, "w") as f:
            json.dump(obj, f, indent=1, default=str)
            f.write("\n")

    return write


def _report_saved(what: str, path: str, written: str) -> None:
    if written == path:
        print(f"wrote {written}")
    else:
        print(f"the run failed: wrote its {what} to {written}; {path} is left as it was")


# ---------------------------------------------------------------- info


def _describe_build(build: dict) -> str:
    kernels = build.get("cutlass_kernels", [])
    return (f"built with CUDA {build['cuda_version']} for sm {'/'.join(build['arch_list'])}; "
            f"{len(kernels)} CUTLASS convolutions ({', '.join(kernels)})")


def _say(line: str) -> None:
    print(line, flush=True)


def cmd_info(args, command: str) -> int:
    from .tools.env import default_device, env_info, ext_build_info, ext_status

    if args.json:
        return _info_json()
    env = env_info()
    gpu = env["gpu"] + (f" (sm_{env['gpu_capability'].replace('.', '')}, {env['gpu_sms']} SMs, "
                        f"{env['gpu_memory_GB']} GB)" if env["gpu"] != "none" else "")
    rows = [
        ("fused_resnet", env["fused_resnet"]), ("python", env["python"]), ("torch", env["torch"]),
        ("torchvision", env["torchvision"]), ("triton", env["triton"] or "not installed"),
        ("CUDA runtime", env["cuda_runtime"] or "none (CPU build of torch)"), ("cuDNN", env["cudnn"] or "none"),
        ("GPU", gpu), ("TRITON_INTERPRET", "1" if env["triton_interpret"] else "unset"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        _say(f"{k.ljust(width)}  {v}")
    built, why = ext_status()
    _say(f"{'_C extension'.ljust(width)}  {_describe_build(ext_build_info()) if built else f'not built: {why}'}")
    _say("backends:")
    for name, (ok, reason) in available_backends().items():
        _say(f"  {name.ljust(10)} {'available' if ok else 'unavailable: ' + reason}")
    device = default_device()
    chosen = None
    for name, (backend, err) in _probes(device):
        where = f"{device.type}, {name}"
        _say(f"auto backend ({where}, resnet50 bottleneck): "
             + (f"could not be determined: {err}" if err else backend))
        chosen = chosen or backend
    if device.type == "cpu":
        _say(f"note: no CUDA GPU is visible; fused blocks run on the CPU with the {chosen or 'an unknown'} backend")
    return 0


def _info_json() -> int:
    from .tools.env import default_device, env_info, ext_build_info, ext_status

    built, why = ext_status()
    device = default_device()
    out = dict(env_info(), extension={"built": built, "reason": why, "built_with": ext_build_info()},
               backends={k: {"available": ok, "reason": r} for k, (ok, r) in available_backends().items()},
               auto={k: {"backend": b, "error": e} for k, (b, e) in _probes(device)}, device=device.type)
    print(json.dumps(out, indent=1))
    return 0


def _probes(device):
    """(dtype name, (backend, error)) of the auto backend's choice, one dtype after another,
    each announced on stderr before it runs (on a GPU it compiles, and may tune, kernels)."""
    from .tools.env import parse_dtype
    from .tools.report import progress

    for name in (["fp32", "bf16"] if device.type == "cuda" else ["fp32"]):
        progress(f"info: running one ResNet-50 bottleneck with backend='auto' on {device.type} in {name} "
                   "to see which backend it picks" + (" (the first run on a GPU compiles, and may tune, Triton "
                                                      "kernels: about 30 s)" if device.type == "cuda" else ""))
        yield name, _probe_auto(device, parse_dtype(name))


def _probe_auto(device, dtype) -> tuple[Optional[str], Optional[str]]:
    """Convert a one-block resnet50-style model with backend="auto", run it once, read ``block.backend``."""
    try:
        import torch
        from torch import nn
        from torchvision.models.resnet import Bottleneck

        from .convert import convert
        from .tools.models import fused_blocks

        torch.manual_seed(0)
        model = nn.Sequential(Bottleneck(256, 64))
        fused = convert(model, "auto")
        fused = fused.to(device=device, memory_format=torch.channels_last).eval().to(dtype)
        x = torch.randn(2, 256, 8, 8, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            fused(x)
        blocks = fused_blocks(fused)
        if not blocks:
            return None, "convert() produced no fused block"
        return str(blocks[0][1].backend), None
    except Exception as e:
        return None, f"{type(e).__name__}: {e}".splitlines()[0]


# ---------------------------------------------------------------- check


def _check_plan(args) -> dict:
    """The check's settings, defaults filled in for the device; raises UsageError for any that cannot be served."""
    from .tools.env import parse_dtype
    from .tools.models import model_spec

    spec, on_cpu = model_spec(args.model), args.device.type == "cpu"
    dtype = parse_dtype(args.dtype)
    lowp = dtype != parse_dtype("fp32")
    if lowp and (args.rtol is not None or args.atol is not None or args.direct):
        raise UsageError(f"arguments --rtol/--atol/--direct: fp32 only; --dtype {args.dtype} is judged by "
                         "--lowp-atol")
    if not lowp and args.lowp_atol is not None:
        raise UsageError("argument --lowp-atol: fp16/bf16 only; --dtype fp32 is judged by --rtol and --atol")
    _check_image_size(args, spec)
    batch = args.batch or (2 if on_cpu else 16)
    image = spec.image_size if spec.kind == "cifar" else args.image_size or (64 if on_cpu else 224)
    _check_backends(args.backend, args.device, dtype)
    _check_step(spec, batch, image, args.train)
    return dict(dtype=dtype, batch=batch, image_size=image, train=args.train, backend=args.backend,
                device=args.device, seed=args.seed, rtol=args.rtol, atol=args.atol, lowp_atol=args.lowp_atol,
                channels_last=not args.contiguous, direct=args.direct, show=not args.quiet)


def cmd_check(args, command: str) -> int:
    from .tools.env import env_info
    from .tools.models import describe_backends
    from .tools.parity import parity_table, run_parity

    plan = _check_plan(args)
    report = run_parity(args.model, **plan)
    h = report.header
    title = (f"fused-resnet check: {h['model']} {h['mode']} {h['dtype']} batch {h['batch']} "
             f"{h['image_size']}x{h['image_size']} on {h['device']} ({h['gpu']}), "
             f"backend {h['requested_backend']} -> {describe_backends(report.backends)}")
    print(title)
    print(f"rule: {h['rule']}")
    print(parity_table(report, verbose=args.verbose))
    for p in report.problems:
        print(f"PROBLEM: {p}")
    n_fail = len(report.failures)
    print(f"{'PASS' if report.ok else 'FAIL'}: {n_fail} of {len(report.items)} compared tensors out of tolerance"
          + (f", {len(report.problems)} problem(s)" if report.problems else ""))
    if args.json:
        _report_saved("report", args.json, _save(args.json, report.ok, _json_writer({
            "command": command, "env": env_info(), "header": h, "ok": report.ok,
            "problems": report.problems, "backends": report.backends,
            "items": [dict(vars(i), ok=i.ok) for i in report.items],
        })))
    if args.plot:
        from . import plot

        chart = title.removeprefix("fused-resnet check: ") + f": {'PASS' if report.ok else 'FAIL'}"
        _report_saved("chart", args.plot,
                      _save(args.plot, report.ok, lambda path: plot.check_chart(report, path, chart)))
    return 0 if report.ok else 1


# ---------------------------------------------------------------- bench


def _bench_plan(args) -> dict:
    """The benchmark's settings, defaults filled in for the device; raises UsageError for any that cannot be served."""
    from .tools.env import parse_dtype
    from .tools.models import model_spec
    from .tools.timing import CPU_DEFAULTS, GPU_DEFAULTS

    spec, on_cpu = model_spec(args.model), args.device.type == "cpu"
    if args.compile_mode and not args.compile:
        raise UsageError(f"argument --compile-mode: applies to --compile only, got {args.compile_mode!r} "
                         "without --compile")
    _check_image_size(args, spec)
    d = CPU_DEFAULTS if on_cpu else GPU_DEFAULTS
    dtype = parse_dtype(args.dtype or d["dtype"])
    if spec.kind == "cifar":
        batch, image = args.batch or (d["batch"] if on_cpu else d["cifar_batch"]), spec.image_size
    else:
        batch, image = args.batch or d["batch"], args.image_size or (d["image_size"] if on_cpu else 224)
    variants = ["eager", "fused"] + (["eager+compile", "fused+compile"] if args.compile else [])
    if args.no_eager:
        variants = [v for v in variants if not v.startswith("eager")]
    mode = "train" if args.train else "infer"
    _check_backends(args.backend, args.device, dtype)
    _check_step(spec, batch, image, args.train)
    return dict(mode=mode, variants=variants, batch=batch, image_size=image, dtype=dtype, device=args.device,
                steps=d["steps"] if args.steps is None else args.steps,
                warmup=d["warmup"] if args.warmup is None else args.warmup, backend=args.backend,
                compile_mode=args.compile_mode, seed=args.seed, channels_last=not args.contiguous,
                show=not args.quiet)


def cmd_bench(args, command: str) -> int:
    import torch

    from .tools.env import dtype_name, env_info
    from .tools.report import progress
    from .tools.timing import CPU_NOTE, bench_model, results_table

    plan = _bench_plan(args)
    on_cpu = plan["device"].type == "cpu"
    batch, image, dtype, mode = plan["batch"], plan["image_size"], plan["dtype"], plan["mode"]
    if on_cpu:
        progress("no CUDA GPU: running on the CPU with small defaults "
                   f"(batch {batch}, {image}x{image}, {plan['steps']} steps); CPU numbers say nothing about GPU "
                   "speed", not args.quiet)
    rows = bench_model(args.model, **plan)
    env = env_info()
    fused_backends = sorted({r.get("backend") for r in rows if r["variant"].startswith("fused") and r.get("backend")})
    note = CPU_NOTE.format(backend="/".join(fused_backends) or args.backend) if on_cpu else None
    device_name = env["gpu"] if not on_cpu else "cpu"
    config = {k: v for k, v in plan.items() if k not in ("device", "show")}
    config.update(model=args.model, dtype=dtype_name(dtype), compile=args.compile,
                  timing="CUDA events per step, median" if not on_cpu else "perf_counter per step, median",
                  train_step="autocast forward + cross-entropy + backward + SGD(momentum=0.9) step",
                  infer_step="model.eval().to(dtype) under torch.inference_mode")
    out = {"command": command, "cwd": os.getcwd(), "date": env["date"], "device": device_name,
           "device_type": plan["device"].type, "env": env, "config": config, "note": note, "results": rows}
    title = (f"fused-resnet bench: {args.model} {mode} {dtype_name(dtype)} batch {batch} {image}x{image} "
             f"on {device_name}, torch {torch.__version__}")
    print(title)
    print(results_table(rows))
    if note:
        print(f"NOTE: {note}")
    ok = not any(r.get("error") for r in rows)
    path = args.json or f"bench-{args.model}-{mode}.json"
    _report_saved("results", path, _save(path, ok, _json_writer(out)))
    if args.plot:
        from . import plot

        chart = title.removeprefix("fused-resnet bench: ")
        _report_saved("chart", args.plot, _save(args.plot, ok, lambda p: plot.bench_chart(rows, p, chart)))
    return 0 if ok else 1


# ---------------------------------------------------------------- parser


def _common(s: argparse.ArgumentParser, default_model: str) -> None:
    s.add_argument("--model", type=_model, default=default_model, metavar="NAME",
                   help=f"{MODEL_HELP}; default {default_model}")
    s.add_argument("--batch", type=_integer(1, "a positive integer (images per step)"), default=None,
                   metavar="N", help="images per step (defaults: see above)")
    s.add_argument("--image-size", type=_integer(1, "a positive integer (pixels)"), default=None,
                   metavar="PIXELS", help="height and width of the images; ImageNet models only (CIFAR: 32)")
    s.add_argument("--device", type=_device, default="auto", help="auto (cuda if visible), cpu, cuda or cuda:N")
    s.add_argument("--seed", type=_integer(0, f"an integer from 0 to {SEED_LIMIT - 1}", SEED_LIMIT), default=0,
                   help="seeds the weights and the batch (default 0)")
    s.add_argument("--contiguous", action="store_true", help="NCHW activations instead of channels_last")
    s.add_argument("--plot", type=_output("plot"), default=None, metavar="FILE",
                   help="also draw the result to FILE (.png, .pdf, .svg, ...; needs matplotlib)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")


def _add_check(sub) -> None:
    s = sub.add_parser("check", help="parity of a converted model against torchvision",
                       description="Forward + backward of a torchvision model and of its converted twin on the "
                                   "same seeded batch; per-block outputs, logits, input and parameter gradients "
                                   "(and BN running statistics with --train) are compared against an fp64 copy "
                                   "of the plain model, next to plain PyTorch's own error, by the tests' rule "
                                   "(fused_resnet.tolerance): a tensor passes when err <= 2*plain_err + atol, atol "
                                   "by its dtype (fp32 1e-6 with TF32 off, fp16 1e-3, bf16 1e-2); fp32 adds "
                                   "rtol*scale + atol*group_scale when given. Exit code 1 when any tensor is "
                                   "out of tolerance. Defaults: CPU batch 2 at 64x64, GPU batch 16 at 224x224.")
    _common(s, "resnet50")
    s.add_argument("--backend", type=_backend, default="auto", help=", ".join(_backend_names()))
    s.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    s.add_argument("--train", action="store_true", help="train mode: batch statistics, running stats updated")
    s.add_argument("--rtol", type=_tolerance, default=None, help="fp32: times the tensor's scale, added to the "
                   "bound (default 0; with --direct 1e-4)")
    s.add_argument("--atol", type=_tolerance, default=None, help="fp32: times the scale of its group, added to the "
                   "bound (default 0; with --direct 1e-5)")
    s.add_argument("--lowp-atol", type=_tolerance, default=None, help="fp16/bf16: the atol of every tensor "
                   "(default by its dtype: 1e-3 fp16, 1e-2 bf16, 1e-6 fp32)")
    s.add_argument("--direct", action="store_true", help="fp32: compare with plain fp32 directly "
                   "(|fused - plain| <= rtol*scale + atol*group_scale) instead of against an fp64 reference")
    s.add_argument("--verbose", action="store_true", help="one row per parameter and buffer")
    s.add_argument("--json", type=_output("json"), default=None, metavar="FILE",
                   help="also write the report as JSON to FILE")
    s.set_defaults(func=cmd_check, parser=s)


def _add_bench(sub) -> None:
    s = sub.add_parser("bench", help="images/s of torchvision eager vs fused (and torch.compile)",
                       description="Whole-model throughput. GPU defaults: bf16, batch 256 (CIFAR 512), 20 timed "
                                   "steps after 5 warm-up steps. Without a GPU it runs on the CPU with batch 2, "
                                   "64x64 images, 2 steps: those numbers say nothing about GPU speed.")
    _common(s, "resnet50")
    s.add_argument("--backend", type=_backends, default="auto",
                   help=f"{', '.join(_backend_names())}, or several comma-separated (one fused run each)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--train", action="store_true", help="training step (autocast + SGD)")
    g.add_argument("--infer", action="store_true", help="inference (default)")
    s.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                   help="default bf16 on a GPU, fp32 on the CPU")
    s.add_argument("--compile", action="store_true", help="also torch.compile of eager and of fused")
    s.add_argument("--compile-mode", default=None, choices=COMPILE_MODES, metavar="MODE",
                   help=f"torch.compile mode with --compile: {', '.join(COMPILE_MODES)} (default: inductor's)")
    s.add_argument("--no-eager", action="store_true", help="skip the torchvision baselines")
    s.add_argument("--steps", type=_integer(1, "a positive integer"), default=None, metavar="N",
                   help="timed steps (GPU 20, CPU 2)")
    s.add_argument("--warmup", type=_integer(0, "a non-negative integer"), default=None, metavar="N",
                   help="untimed warm-up steps (GPU 5, CPU 1)")
    s.add_argument("--json", type=_output("json"), default=None, metavar="FILE",
                   help="where the results go (default bench-<model>-<mode>.json)")
    s.set_defaults(func=cmd_bench, parser=s)


def _training_command(command: Callable) -> Callable:
    """``command`` (fused_resnet.train's or .experiments'), its option errors reported as usage errors."""
    def run(args, command_line: str) -> int:
        from .train import OptionError

        try:
            return command(args)
        except OptionError as e:
            raise UsageError(str(e)) from None

    return run


def _add_training(sub) -> None:
    from . import experiments, train

    s = sub.add_parser("train", help="train a CIFAR ResNet (the paper's recipe by default)",
                       description=train.__doc__.split("\n\n")[0])
    train.add_arguments(s)
    s.set_defaults(func=_training_command(train.command), parser=s)
    s = sub.add_parser("experiment", help="the residual-network experiments: " + ", ".join(experiments.EXPERIMENTS),
                       description=experiments.__doc__.split("\n\n")[0])
    experiments.add_arguments(s)
    s.set_defaults(func=_training_command(experiments.command), parser=s)


def build_parser(prog: str = "fused-resnet") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    p.add_argument("-v", "--verbose-log", action="store_true", help="log backend choices (logging INFO)")
    sub = p.add_subparsers(dest="command", metavar="{info,check,bench,train,experiment}")
    sub.required = True
    s = sub.add_parser("info", help="versions, GPU, extension, backends and the auto choice")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    s.set_defaults(func=cmd_info, parser=s)
    _add_check(sub)
    _add_bench(sub)
    _add_training(sub)
    return p


def _command_line(prog: str, argv: Optional[Sequence[str]] = None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    return " ".join([prog] + [shlex.quote(a) for a in argv])


@contextlib.contextmanager
def _quiet(enabled: bool):
    """FUSED_RESNET_QUIET=1 (no Triton tuning progress lines) while a -q command runs."""
    saved = os.environ.get("FUSED_RESNET_QUIET")
    if enabled:
        os.environ["FUSED_RESNET_QUIET"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("FUSED_RESNET_QUIET", None)
        else:
            os.environ["FUSED_RESNET_QUIET"] = saved


def main(argv: Optional[Sequence[str]] = None, prog: str = "fused-resnet") -> int:
    """Runs one command; returns its exit code (2: an argument was refused or the run raised)."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or an argument argparse refused (2)
        return int(e.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose_log else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        with _quiet(getattr(args, "quiet", False)):
            return int(args.func(args, _command_line(prog, argv)) or 0)
    except UsageError as e:
        args.parser.print_usage(sys.stderr)
        print(f"{args.parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, ImportError) as e:
        print(f"{args.parser.prog}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
