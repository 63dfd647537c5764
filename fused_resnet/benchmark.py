"""Model building, timing and parity helpers shared by the CLI and the bench/ scripts.

Everything here is importable without a GPU and without the compiled extension.
The public API of the package (``fused_resnet.convert`` and friends) is imported
lazily inside the functions that need it.

Conventions (the same in ``python -m fused_resnet bench``, bench/bench_models.py
and bench/bench_blocks.py):

* channels_last activations;
* inference: ``model.eval().to(dtype)`` run under ``torch.inference_mode``;
* training step: forward under autocast (``dtype``; disabled for fp32),
  cross-entropy, backward, SGD momentum step, ``zero_grad(set_to_none=True)``;
* timing: warm-up iterations excluded, every timed iteration measured on its own
  (CUDA events on a GPU, ``perf_counter`` on the CPU), the median reported;
* peak memory: ``torch.cuda.max_memory_allocated`` from just before the model is
  moved to the device until the last timed iteration.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import gc
import math
import os
import platform
import re
import statistics
import sys
import time
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

CPU_NOTE = (
    "ran on the CPU (backend {backend}): CPU numbers say nothing about GPU speed; "
    "run on a CUDA GPU for meaningful timings"
)

DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}

# Small defaults that keep CPU runs to seconds.
CPU_DEFAULTS = {"batch": 2, "image_size": 64, "steps": 2, "warmup": 1, "dtype": "fp32"}
GPU_DEFAULTS = {"batch": 256, "cifar_batch": 512, "steps": 20, "warmup": 5, "dtype": "bf16"}


# ---------------------------------------------------------------- small utilities


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use fp32, fp16 or bf16") from None


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}.get(
        dtype, str(dtype).replace("torch.", "")
    )


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_device(name: Optional[str]) -> torch.device:
    if name in (None, "", "auto"):
        return default_device()
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA GPU is visible")
    return dev


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def progress(msg: str, enabled: bool = True) -> None:
    """Progress lines go to stderr so that stdout holds only the result table."""
    if enabled:
        print(f"[fused-resnet] {msg}", file=sys.stderr, flush=True)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table; the first column left-aligned, the others right-aligned. The
    numbers of a column share one format (``column_format``)."""
    rows = [list(r) for r in rows]
    formats = [column_format([r[i] for r in rows if i < len(r)]) for i in range(len(headers))]
    body = [[_cell(v, f) for v, f in zip(row, formats)] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in body]
    return "\n".join(out)


def column_format(values: Sequence[Any]) -> str:
    """One format for every float of a table column: ``.2e`` when one of them is below 1e-2
    or from 1e5 up, else ``.1f`` when one is from 100 up, else ``.2f``."""
    mags = [abs(v) for v in values if isinstance(v, float) and math.isfinite(v) and v != 0]
    if any(m < 1e-2 or m >= 1e5 for m in mags):
        return ".2e"
    return ".1f" if any(m >= 100 for m in mags) else ".2f"


def _cell(v: Any, fmt: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "ok" if v else "FAIL"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else format(v, fmt)
    return str(v)


# ---------------------------------------------------------------- environment


def _dist_version(name: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def gpu_name(device: Optional[torch.device] = None) -> str:
    if not torch.cuda.is_available():
        return "none"
    idx = device.index if device is not None and device.type == "cuda" and device.index is not None else 0
    return torch.cuda.get_device_name(idx)


def env_info() -> dict:
    """Versions and the machine, for the header of every benchmark and check."""
    import torchvision

    try:
        import fused_resnet

        fr_version = getattr(fused_resnet, "__version__", None)
    except Exception:  # pragma: no cover - the package itself failing to import
        fr_version = None
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = _dist_version("triton")
    info = {
        "date": utc_now(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "triton": triton_version,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "fused_resnet": fr_version,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu_name(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") == "1",
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(
            gpu_capability=f"{p.major}.{p.minor}",
            gpu_sms=p.multi_processor_count,
            gpu_memory_GB=round(p.total_memory / 1e9, 1),
            gpu_count=torch.cuda.device_count(),
        )
    return info


def ext_status() -> tuple[bool, str]:
    from . import _ext

    return _ext.status()


def ext_build_info() -> Optional[dict]:
    """``_C.built_with()`` (toolkit, architectures, ops, CUTLASS kernels), or None when _C is not built."""
    from . import _ext

    ok, _ = _ext.status()
    return dict(_ext.load().built_with()) if ok else None


def available_backends() -> dict[str, tuple[bool, str]]:
    from . import backends

    return backends.available_backends()


# ---------------------------------------------------------------- models

_CIFAR_RE = re.compile(r"^cifar_(resnet|plain|preact_resnet)(\d+)(?:_v([12]))?(?:_([abAB]))?$")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "imagenet" or "cifar"
    image_size: int
    num_classes: int
    cifar: Optional[dict] = None  # keyword arguments of fused_resnet.models.cifar_resnet


def model_spec(name: str) -> ModelSpec:
    """What ``name`` builds: any torchvision classification builder, or a CIFAR ResNet.

    CIFAR names: ``cifar_resnet<depth>`` (v1, option-A shortcut), with optional
    suffixes ``_v2`` (pre-activation) and ``_B`` (projection shortcut);
    ``cifar_preact_resnet<depth>`` is ``_v2``; ``cifar_plain<depth>`` has no
    shortcuts.
    """
    m = _CIFAR_RE.match(name)
    if m:
        family, depth, version, shortcut = m.groups()
        version = int(version or (2 if family == "preact_resnet" else 1))
        kwargs = dict(depth=int(depth), version=version, shortcut=(shortcut or "A").upper(),
                      plain=family == "plain", num_classes=10)
        return ModelSpec(name, "cifar", 32, 10, kwargs)
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        resnets = [n for n in available if "res" in n]
        raise ValueError(
            f"unknown model {name!r}: use a torchvision.models builder name ({', '.join(resnets)}, ...) "
            "or cifar_resnet<depth> (e.g. cifar_resnet56, cifar_resnet56_v2, cifar_resnet20_B)"
        )
    return ModelSpec(name, "imagenet", 224, 1000)


def build_model(spec: ModelSpec | str, seed: int = 0) -> nn.Module:
    """The plain PyTorch model (weights=None), its parameters drawn from ``seed``."""
    if isinstance(spec, str):
        spec = model_spec(spec)
    torch.manual_seed(seed)
    if spec.kind == "cifar":
        from . import models as fr_models  # lands with the public API

        return fr_models.cifar_resnet(**spec.cifar)
    import torchvision

    return torchvision.models.get_model(spec.name, weights=None)


def fusable_blocks(spec: ModelSpec) -> int:
    """How many blocks ``convert`` fuses in the model, counted on the meta device (no memory,
    no compute); ValueError when there is none."""
    import fused_resnet

    with torch.device("meta"):
        blocks = len(fused_blocks(fused_resnet.convert(build_model(spec), backend="auto")))
    if not blocks:
        raise ValueError(f"{spec.name} has no block that fused-resnet fuses (torchvision's BasicBlock and "
                         "Bottleneck, pre-activation and CIFAR blocks)")
    return blocks


def check_step(spec: ModelSpec, *, batch: int, image_size: int, train: bool) -> None:
    """One step of the plain model on the meta device: ValueError when it cannot take a batch
    of ``batch`` images of ``image_size`` pixels (BatchNorm needs 2 values per channel to train)."""
    with torch.device("meta"):
        model = build_model(spec).train(train)
        try:
            model(torch.empty(batch, 3, image_size, image_size))
        except Exception as e:
            mode = "training" if train else "inference"
            raise ValueError(f"{spec.name} cannot run a {mode} step on a batch of {batch} "
                             f"{image_size}x{image_size} images: {e}") from None


def perturb_batchnorm(model: nn.Module, seed: int = 1) -> nn.Module:
    """Draw BatchNorm affine parameters and running statistics away from (1, 0, 0, 1).

    At initialisation an eval-mode BatchNorm is the identity, which would hide a
    swapped scale/shift or a stale folded weight; this makes every BN distinct.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_((torch.rand(n, generator=g) - 0.5) * 0.4)
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


def calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics to the batch statistics of ``x``.

    A freshly initialised network in eval mode normalises with (0, 1), so its
    activations grow block after block (to ~1e3 at the end of a ResNet-50) and
    the comparison turns ill-conditioned (ReLU masks flip on rounding noise).
    One no-grad training-mode forward with cumulative averaging gives running
    statistics like a trained model's, after which the model is put back as it was.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    for m, (momentum, nbt) in zip(bns, saved):
        m.momentum = momentum
        m.num_batches_tracked.copy_(nbt)
    return model.train(was_training)


def make_input(batch: int, image_size: int, *, num_classes: int, seed: int = 0, device="cpu",
               dtype=torch.float32, channels_last: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random image batch (drawn in fp32 on the CPU, then moved) and labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, image_size, image_size, generator=g)
    target = torch.randint(0, num_classes, (batch,), generator=g)
    x = x.to(device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, target.to(device)


def convert(model: nn.Module, backend: str = "auto") -> nn.Module:
    """``fused_resnet.convert`` on a deep copy (the original is never touched)."""
    import fused_resnet

    return fused_resnet.convert(copy.deepcopy(model), backend=backend, inplace=True)


def fused_block_classes() -> tuple:
    from . import blocks

    return tuple(blocks.FUSED_BLOCKS)


def fused_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every fused block, in module order."""
    classes = fused_block_classes()
    return [(n, m) for n, m in model.named_modules() if isinstance(m, classes)]


def block_backends(model: nn.Module) -> dict[str, int]:
    """How many fused blocks run on each backend (``block.backend`` after a forward)."""
    counts: dict[str, int] = {}
    for _, m in fused_blocks(model):
        b = str(getattr(m, "backend", None))
        counts[b] = counts.get(b, 0) + 1
    return counts


def describe_backends(counts: dict[str, int]) -> str:
    return ", ".join(f"{b} x{n}" for b, n in sorted(counts.items())) or "no fused blocks"


# ---------------------------------------------------------------- timing


@dataclasses.dataclass
class Timing:
    samples_ms: list[float]
    wall_ms_per_step: float  # host clock over the timed loop, synchronized; a sanity check

    @property
    def median_ms(self) -> float:
        return median(self.samples_ms)

    def as_dict(self) -> dict:
        s = self.samples_ms
        return {
            "median_ms": self.median_ms,
            "min_ms": min(s) if s else None,
            "max_ms": max(s) if s else None,
            "mean_ms": sum(s) / len(s) if s else None,
            "wall_ms_per_step": self.wall_ms_per_step,
            "steps": len(s),
            "samples_ms": s,
        }


def time_fn(fn: Callable[[], Any], *, device: torch.device, warmup: int, steps: int,
            label: str = "", show: bool = True) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``steps`` times each timed on its own.

    On a GPU every step sits between two CUDA events (a single synchronize at the
    end), so launch gaps count but host work between steps does not; on the CPU
    the host clock brackets each call.
    """
    steps = max(1, int(steps))
    t0 = time.perf_counter()
    for i in range(warmup):
        fn()
        if i == 0:
            synchronize(device)
            if show:
                progress(f"{label}: first warm-up step took {time.perf_counter() - t0:.2f} s")
    synchronize(device)
    start = time.perf_counter()
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
        for begin, end in events:
            begin.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        samples = [b.elapsed_time(e) for b, e in events]
    else:
        samples = []
        for _ in range(steps):
            t = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t) * 1e3)
    wall = (time.perf_counter() - start) * 1e3 / steps
    timing = Timing(samples, wall)
    if show:
        progress(f"{label}: {steps} timed steps, median {timing.median_ms:.3f} ms")
    return timing


def reset_peak_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 1e9


def autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def make_infer_step(model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    def step():
        with torch.inference_mode():
            return model(x)

    return step


def make_train_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor, dtype: torch.dtype,
                    lr: float = 1e-3, zero_grad: bool = True) -> Callable[[], None]:
    """forward (autocast) + cross-entropy + backward + SGD momentum step (+ zero_grad, set_to_none)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    device = x.device

    def step():
        with autocast(device, dtype):
            loss = F.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        if zero_grad:
            opt.zero_grad(set_to_none=True)

    return step


def prepare(model: nn.Module, *, mode: str, dtype: torch.dtype, device: torch.device,
            channels_last: bool = True) -> nn.Module:
    """Move to the device and set the mode; inference casts the model to ``dtype``."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=fmt)
    if mode == "infer":
        model = model.eval().to(dtype)
    else:
        model.train()
    return model


VARIANTS = ("eager", "fused", "eager+compile", "fused+compile", "eager+graphs", "fused+graphs")


def make_graph_step(step: Callable[[], Any], *, warmup: int = 3,
                    reset: Optional[Callable[[], None]] = None) -> Callable[[], None]:
    """``step`` captured once in a CUDA graph; the returned function replays it.

    The warm-up steps run eagerly first (on a side stream, as capture requires): they
    compile and autotune the Triton kernels, which a capture cannot do. ``reset``
    (a training step's zero_grad(set_to_none=True)) runs after each warm-up step and
    before the capture, so the captured backward allocates the gradients in the
    graph's pool and every replay overwrites them (PyTorch's whole-network capture).
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
            if reset is not None:
                reset()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def bench_model(name: str, *, mode: str = "infer", variants: Sequence[str] = ("eager", "fused"),
                batch: int, image_size: Optional[int] = None, dtype: torch.dtype = torch.bfloat16,
                device: Optional[torch.device] = None, steps: int = 20, warmup: int = 5,
                backend: str = "auto", compile_mode: Optional[str] = None, seed: int = 0,
                channels_last: bool = True, show: bool = True) -> list[dict]:
    """Images/s of each variant of one model in one mode; a failing variant is recorded, not raised.

    ``backend`` may name several backends, comma-separated: each fused variant then
    runs once per backend (one table row each).
    """
    if mode not in ("infer", "train"):
        raise ValueError(f"mode must be 'infer' or 'train', not {mode!r}")
    device = device or default_device()
    spec = model_spec(name)
    size = spec.image_size if spec.kind == "cifar" else (image_size or spec.image_size)
    results = []
    for variant in variants:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    fused_backends = [b.strip() for b in backend.split(",") if b.strip()]
    runs = [(v, b) for v in variants for b in (fused_backends if v.startswith("fused") else [None])]
    for variant, run_backend in runs:
        label = f"{name} {mode} {variant}" + (f"[{run_backend}]" if len(fused_backends) > 1 and run_backend else "")
        row = {
            "model": name, "mode": mode, "variant": variant, "batch": batch, "image_size": size,
            "dtype": dtype_name(dtype), "channels_last": channels_last, "device": device.type,
            "requested_backend": run_backend,
        }
        t_start = time.perf_counter()
        model = step = x = target = None
        try:
            reset_peak_memory(device)
            torch._dynamo.reset()
            base = build_model(spec, seed=seed)
            model = convert(base, run_backend) if run_backend else base
            del base
            if variant.startswith("fused"):
                row["blocks"] = len(fused_blocks(model))
                if row["blocks"] == 0:
                    raise RuntimeError("convert() produced no fused blocks")
            model = prepare(model, mode=mode, dtype=dtype, device=device, channels_last=channels_last)
            if variant.endswith("+compile"):
                torch._dynamo.reset()
                model = torch.compile(model, mode=compile_mode)
            x, target = make_input(batch, size, num_classes=spec.num_classes, seed=seed, device=device,
                                   dtype=dtype if mode == "infer" else torch.float32,
                                   channels_last=channels_last)
            graphs = variant.endswith("+graphs")
            if graphs and device.type != "cuda":
                raise ValueError(f"the +graphs variants replay a CUDA graph: they need a CUDA device, not "
                                 f"{device.type}")
            if mode == "infer":
                step = make_infer_step(model, x)
            else:
                step = make_train_step(model, x, target, dtype, zero_grad=not graphs)
            if graphs:
                reset = None if mode == "infer" else (lambda m=model: m.zero_grad(set_to_none=True))
                step = make_graph_step(step, reset=reset)
            progress(f"{label}: batch {batch}, {size}x{size}, {dtype_name(dtype)}, "
                     f"warm-up {warmup}, steps {steps}", show)
            timing = time_fn(step, device=device, warmup=warmup, steps=steps, label=label, show=show)
            row.update(timing.as_dict())
            row["img_per_s"] = batch / (timing.median_ms / 1e3) if timing.median_ms > 0 else None
            row["peak_GB"] = peak_memory_gb(device)
            if variant.startswith("fused"):
                counts = block_backends(model)
                row["backends"] = counts
                row["backend"] = "+".join(sorted(counts)) if counts else None
            else:
                row["backend"] = "torch"
        except Exception as e:  # recorded and reported, the other variants still run
            row["error"] = f"{type(e).__name__}: {e}".strip()[:2000]
            progress(f"{label}: FAILED: {row['error'].splitlines()[0] if row['error'] else ''}", show)
        finally:
            row["wall_s"] = time.perf_counter() - t_start
            del model, step, x, target
            if variant.endswith("+compile"):
                torch._dynamo.reset()
            reset_peak_memory(device)
        results.append(row)
    eager = {r["mode"]: r.get("img_per_s") for r in results if r["variant"] == "eager"}
    compiled = {r["mode"]: r.get("img_per_s") for r in results if r["variant"] == "eager+compile"}
    for r in results:
        base = eager.get(r["mode"])
        r["speedup_vs_eager"] = r["img_per_s"] / base if base and r.get("img_per_s") else None
        cbase = compiled.get(r["mode"])
        r["speedup_vs_compile"] = r["img_per_s"] / cbase if cbase and r.get("img_per_s") else None
    return results


def results_table(rows: Sequence[dict]) -> str:
    """The rows of ``bench_model`` as a table; a failed run reads FAILED there, its error in full below."""
    headers = ["model", "mode", "variant", "backend", "batch", "dtype", "median ms", "img/s",
               "x eager", "peak GB"]
    body, errors = [], []
    for r in rows:
        if r.get("error"):
            body.append([r["model"], r["mode"], r["variant"], r.get("requested_backend") or "-", r["batch"],
                         r["dtype"], "FAILED", None, None, None])
            errors.append(f"{r['variant']} FAILED: {(r['error'].splitlines() or [''])[0]}")
            continue
        body.append([r["model"], r["mode"], r["variant"], r.get("backend"), r["batch"], r["dtype"],
                     r.get("median_ms"), r.get("img_per_s"), r.get("speedup_vs_eager"), r.get("peak_GB")])
    return "\n".join([format_table(headers, body)] + errors)


# ---------------------------------------------------------------- floors and ceilings


def measure_ceilings(device: torch.device, *, copy_bytes: int = 1 << 30, gemm_n: int = 8192,
                     show: bool = True) -> dict:
    """Measured device ceilings: device-to-device copy (bytes read + written) and a bf16 GEMM.

    Random data (never zeros), warm-up excluded, median of 10. Empty on the CPU.
    """
    if device.type != "cuda":
        return {}
    out = {}
    src = torch.randn(copy_bytes // 4, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device=device, warmup=3, steps=10, label="copy ceiling", show=show)
    out["copy_GBps"] = 2 * src.numel() * 4 / (t.median_ms * 1e-3) / 1e9
    del src, dst
    a = torch.randn(gemm_n, gemm_n, device=device, dtype=torch.bfloat16)
    b = torch.randn(gemm_n, gemm_n, device=device, dtype=torch.bfloat16)
    t = time_fn(lambda: a @ b, device=device, warmup=3, steps=10, label="bf16 GEMM ceiling", show=show)
    out["bf16_TFLOPs"] = 2 * gemm_n**3 / (t.median_ms * 1e-3) / 1e12
    del a, b
    torch.cuda.empty_cache()
    return out


def conv_flops(module: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-add FLOPs (2 per MAC) of every Conv2d/Linear in one forward of ``module``.

    Runs the module once on the CPU in fp32, batch 1, and scales by the batch size.
    """
    total = [0]

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total[0] += 2 * out.numel() * (m.in_channels // m.groups) * kh * kw
        elif isinstance(m, nn.Linear):
            total[0] += 2 * out.numel() * m.in_features

    m = copy.deepcopy(module).float().cpu().eval()
    handles = [c.register_forward_hook(hook) for c in m.modules() if isinstance(c, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        m(torch.randn(1, *input_shape[1:]))
    for h in handles:
        h.remove()
    return total[0] * int(input_shape[0])


def weight_bytes(module: nn.Module, dtype: torch.dtype) -> int:
    """Bytes of the weights a fused inference kernel must read once: conv/linear weights in
    ``dtype`` and a folded fp32 bias per output channel of every BatchNorm."""
    item = torch.empty((), dtype=dtype).element_size()
    n = 0
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            n += m.weight.numel() * item
            if m.bias is not None:
                n += m.bias.numel() * 4
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            n += m.num_features * 4
    return n


# aten operators that launch no kernel on a GPU (allocations, aliases) besides views.
NO_KERNEL_OPS = frozenset(("empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach",
                           "lift_fresh", "alias"))


# In-place operators that overwrite their first argument without reading it.
_WRITE_ONLY_OPS = frozenset(("copy_", "fill_", "zero_"))


class _OpTraffic(TorchDispatchMode):
    """Counts, per operator that runs a kernel, the bytes of its tensor inputs and outputs.

    A fused_resnet op counts as one operator and is not looked into: the count is
    that of the fused dataflow, each op reading its inputs once and writing its
    outputs once, whatever its backend launches for it.
    """

    def __init__(self):
        super().__init__()
        self.ops: dict[str, list[int]] = {}  # name -> [calls, bytes]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.namespace == "fused_resnet" or runs_kernel(func):
            entry = self.ops.setdefault(f"{func.namespace}::{func.overloadpacket.__name__}", [0, 0])
            entry[0] += 1
            entry[1] += op_bytes(func, args, kwargs, out)
        return out


def runs_kernel(func) -> bool:
    """Whether the aten operator ``func`` launches a kernel on a GPU (not a view, not an allocation)."""
    return not (func.is_view or func.overloadpacket.__name__ in NO_KERNEL_OPS)


def op_bytes(func, args, kwargs, out) -> int:
    """The bytes one call of ``func`` moves: its tensor inputs read once and its outputs written
    once (the destination of a copy or fill is written, not read)."""
    read = args[1:] if func.overloadpacket.__name__ in _WRITE_ONLY_OPS else args
    return sum(tensor_bytes(t) for t in pytree.tree_leaves((read, kwargs, out)) if isinstance(t, torch.Tensor))


def tensor_bytes(t: torch.Tensor) -> int:
    """The bytes a kernel moves reading or writing ``t`` once."""
    # An expanded tensor (autograd's broadcast gradients) moves its storage, not its view.
    return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())


def op_traffic(step: Callable[[], Any]) -> dict:
    """One call of ``step`` with every operator's bytes counted (_OpTraffic):
    ``{"bytes": total, "ops": calls, "by_op": {name: [calls, bytes]}}``. Backward
    operators count too: the autograd engine carries the mode into its thread."""
    with _OpTraffic() as mode:
        step()
    by_op = dict(sorted(mode.ops.items(), key=lambda kv: -kv[1][1]))
    return {"bytes": sum(b for _, b in by_op.values()), "ops": sum(c for c, _ in by_op.values()), "by_op": by_op}


def gpu_gap(real_gap: Callable[..., str]) -> Callable[..., str]:
    """``real_gap`` (a ``_C`` gap function: ``conv_gap``, ``conv_dgrad_gap``) asked about
    meta copies of the operands as a bf16 channels_last model has them on a GPU (4-D
    tensors bf16 channels_last, floating vectors fp32), so that it answers for the GPU
    on any machine: the device, its only other objection, is dropped. Answers are kept
    per signature, so a block step pays for each question once."""
    memo: dict = {}

    def as_meta(t):
        if not isinstance(t, torch.Tensor):
            return t
        if t.dim() == 4:
            return torch.empty(t.shape, dtype=torch.bfloat16, device="meta", memory_format=torch.channels_last)
        return torch.empty(t.shape, dtype=torch.float32 if t.is_floating_point() else t.dtype, device="meta")

    def gap(*args):
        key = tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else
                    (tuple(a) if isinstance(a, (list, tuple)) else a) for a in args)
        if key not in memo:
            answer = real_gap(*map(as_meta, args))
            memo[key] = "" if answer.startswith("x is on meta") else answer
        return memo[key]
    return gap


# ---------------------------------------------------------------- parity check

LOWP_ATOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}
# Whole-model gradients are compared by relative norm with this slack (see run_parity).
GRAD_REL_SLACK = 0.25


@dataclasses.dataclass
class Item:
    group: str      # "block", "logits", "running_mean", ..., "block.out", "block.dx", "block.grad",
                    # "input.grad", "param.grad"
    name: str
    err: float      # max |fused - reference| (or, metric "rel", ||fused - ref|| / ||ref||)
    scale: float    # max |reference| (1 for metric "rel")
    tol: float
    plain_err: Optional[float] = None  # the same measure for plain PyTorch in the same dtype
    note: str = ""
    metric: str = "max"

    @property
    def ok(self) -> bool:
        return math.isfinite(self.err) and self.err <= self.tol


@dataclasses.dataclass
class ParityReport:
    header: dict
    items: list[Item]
    problems: list[str]
    backends: dict[str, int]

    @property
    def failures(self) -> list[Item]:
        return [i for i in self.items if not i.ok]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.problems


def _max_abs(t: torch.Tensor) -> float:
    return t.detach().double().abs().max().item() if t.numel() else 0.0


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    if not a.numel():
        return 0.0
    a, b = a.detach().double(), b.detach().double()
    if not torch.isfinite(a).all():
        return float("nan")
    return (a - b).abs().max().item()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    a, b = a.detach().double(), b.detach().double()
    if not torch.isfinite(a).all():
        return float("nan")
    den = b.norm().item()
    num = (a - b).norm().item()
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def _owner(name: str, block_names: Sequence[str]) -> str:
    for b in block_names:
        if name.startswith(b + "."):
            return b
    return name.split(".")[0]


class _Run:
    """One forward + backward of a model; records block outputs, block inputs and the
    gradients arriving at block outputs (for the per-block replay), logits and gradients."""

    def __init__(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, block_names: Sequence[str],
                 amp_dtype: Optional[torch.dtype], capture: bool = False):
        self.blocks: dict[str, torch.Tensor] = {}
        self.block_in: dict[str, torch.Tensor] = {}
        self.block_gout: dict[str, torch.Tensor] = {}
        handles = []
        for name in block_names:
            mod = model.get_submodule(name)
            handles.append(mod.register_forward_hook(self._hook(name, capture)))
            if capture:
                handles.append(mod.register_forward_pre_hook(self._pre_hook(name)))
        x = x.detach().clone().requires_grad_(True)
        try:
            with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), target)
            loss.backward()
        finally:
            for h in handles:
                h.remove()
        self.logits = logits.detach()
        self.xgrad = x.grad
        self.grads = {n: p.grad for n, p in model.named_parameters()}
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()
                        if n.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}

    def _pre_hook(self, name):
        def hook(module, inputs):
            self.block_in[name] = inputs[0].detach().clone()

        return hook

    def _hook(self, name, capture):
        def hook(module, inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            self.blocks[name] = out.detach().clone()
            if capture and out.requires_grad:
                out.register_hook(lambda g: self.block_gout.__setitem__(name, g.detach().clone()))

        return hook


def _replay_block(block: nn.Module, x: torch.Tensor, gout: torch.Tensor, amp_dtype: Optional[torch.dtype]):
    """Forward + backward of a copy of one block on a given input and output gradient."""
    block = copy.deepcopy(block)
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        y = block(x)
    y.backward(gout.to(y.dtype))
    return y.detach(), x.grad, {n: p.grad for n, p in block.named_parameters()}


def run_parity(name: str, *, dtype: torch.dtype = torch.float32, batch: int = 2, image_size: Optional[int] = None,
               train: bool = False, backend: str = "auto", device: Optional[torch.device] = None, seed: int = 0,
               rtol: float = 1e-4, atol: float = 1e-4, lowp_atol: Optional[float] = None,
               grad_slack: float = GRAD_REL_SLACK, channels_last: bool = True, direct: bool = False,
               show: bool = True) -> ParityReport:
    """torchvision (or plain CIFAR) model vs its converted twin on one seeded batch.

    Reference: an fp64 copy of the plain model (``direct=True``, fp32 only: plain
    fp32 itself). Each tensor's error against it sits next to plain PyTorch's own
    error in the same dtype (``plain_err``); scale is the tensor's max |reference|
    and group_scale the largest scale among tensors of its kind.

    Judged by max abs error, ``err <= 2*plain_err + rtol*scale + atol*group_scale``
    (fp32, TF32 off) or ``err <= 2*plain_err + lowp_atol*group_scale`` (fp16/bf16;
    inference: models cast to the dtype, --train: fp32 weights under autocast):
      * whole model, forward: every block's output, the logits, and with --train
        the BN running statistics (num_batches_tracked exactly);
      * every block on its own ("replay"): the block input and the gradient
        arriving at its output, both taken from the reference run, are fed to a
        copy of the plain block, of the fused block and of the fp64 block; their
        outputs, input gradients and parameter gradients are compared.
    Judged by relative norm, ``rel <= 2*plain_rel + grad_slack``: the whole
    model's input and parameter gradients. Gradients of a whole deep network are
    discontinuous in rounding noise (a ReLU whose input lies within rounding of 0
    flips its mask), so two correct fp32 implementations differ there by up to
    ~10% at small sizes (ResNet-50, batch 2, 64x64: plain PyTorch with another
    memory format does); the per-block replay is the tight test of the backward,
    and this one catches gross errors (a missing or doubled term, wrong wiring).
    """
    device = device or default_device()
    spec = model_spec(name)
    size = spec.image_size if spec.kind == "cifar" else (image_size or spec.image_size)
    lowp = dtype != torch.float32
    direct = direct and not lowp
    lowp_atol = LOWP_ATOL.get(dtype, 1e-2) if lowp_atol is None else lowp_atol
    problems: list[str] = []
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    # BN affine parameters drawn away from (1, 0), running statistics calibrated on another
    # seeded batch: eval-mode BN is then neither the identity nor badly scaled.
    plain = perturb_batchnorm(build_model(spec, seed=seed), seed=seed + 1)
    plain = plain.to(device=device, memory_format=fmt)
    calib, _ = make_input(batch, size, num_classes=spec.num_classes, seed=seed + 3, device=device,
                          channels_last=channels_last)
    calibrate_batchnorm(plain, calib)
    del calib
    fused = convert(plain, backend)
    block_names = [n for n, _ in fused_blocks(fused)]
    if not block_names:
        problems.append("convert() produced no fused blocks")
    plain, fused = plain.train(train), fused.train(train)
    x, target = make_input(batch, size, num_classes=spec.num_classes, seed=seed + 2, device=device,
                           channels_last=channels_last)
    amp = dtype if lowp and train else None
    if lowp and not train:
        plain, fused, x = plain.to(dtype), fused.to(dtype), x.to(dtype)
    ref = None if direct else copy.deepcopy(plain).double()  # low precision eval: the rounded weights, upcast
    # Untouched copies for the per-block replay (the whole-model runs update running statistics).
    replay_models = {"plain": copy.deepcopy(plain), "fused": copy.deepcopy(fused),
                     "ref": copy.deepcopy(ref) if ref is not None else None}
    x_ref = x.double()

    header = {
        "model": name, "dtype": dtype_name(dtype), "batch": batch, "image_size": size,
        "mode": "train" if train else "eval", "device": device.type, "gpu": gpu_name(device),
        "requested_backend": backend, "blocks": len(block_names), "seed": seed,
        "channels_last": channels_last,
        "reference": "plain fp32" if direct else "fp64 copy of the plain model",
        "rule": (f"max: |fused - plain| <= {rtol:g}*scale + {atol:g}*group_scale (TF32 off)" if direct else
                 f"max: |fused - fp64| <= 2*|plain - fp64| + {rtol:g}*scale + {atol:g}*group_scale (TF32 off)"
                 if not lowp else f"max: |fused - fp64| <= 2*|plain - fp64| + {lowp_atol:g}*group_scale")
                + f"; rel (whole-model gradients): rel <= 2*plain_rel + {grad_slack:g}",
    }

    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    if not lowp:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    items: list[Item] = []
    try:
        progress(f"check {name}: plain PyTorch forward+backward", show)
        r_plain = _Run(plain, x, target, block_names, amp, capture=direct)
        progress(f"check {name}: fused forward+backward (backend {backend})", show)
        r_fused = _Run(fused, x, target, block_names, amp)
        r_ref = None
        if ref is not None:
            progress(f"check {name}: fp64 reference forward+backward", show)
            r_ref = _Run(ref, x_ref, target, block_names, None, capture=True)
        progress(f"check {name}: per-block replay", show)
        source = r_ref if r_ref is not None else r_plain
        for b in block_names:
            if b not in source.block_in or b not in source.block_gout:
                problems.append(f"block {b}: no input or output gradient captured for the replay")
                continue
            xin, gout = source.block_in[b], source.block_gout[b]
            run_dtype = x.dtype
            outs = {}
            for key in ("plain", "fused", "ref"):
                m = replay_models[key]
                if m is None:
                    continue
                dt = torch.float64 if key == "ref" else run_dtype
                outs[key] = _replay_block(m.get_submodule(b), xin.to(dt), gout.to(dt),
                                          None if key == "ref" else amp)
            _compare_replay(items, b, outs, direct=direct, lowp=lowp, rtol=rtol, atol=atol, lowp_atol=lowp_atol)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32

    counts = block_backends(fused)
    if backend != "auto":
        wrong = {b: n for b, n in counts.items() if b != backend}
        if wrong:
            problems.append(f"backend {backend!r} was requested but blocks ran on {wrong}")

    def compare(group: str, entries, shared_scale: bool, metric: str = "max"):
        # entries: (name, fused, plain, fp64 reference or None)
        _compare(items, group, entries, shared_scale=shared_scale, metric=metric, direct=direct, lowp=lowp,
                 rtol=rtol, atol=atol, lowp_atol=lowp_atol, grad_slack=grad_slack)

    def ref_of(d: Optional[dict], k):
        return None if d is None else d.get(k)

    compare("block", [(n, r_fused.blocks.get(n), r_plain.blocks.get(n), ref_of(r_ref and r_ref.blocks, n))
                      for n in block_names], shared_scale=False)
    compare("logits", [("logits", r_fused.logits, r_plain.logits, r_ref.logits if r_ref else None)], False)
    if train:
        bnames = list(r_plain.buffers)
        missing = [n for n in bnames if n not in r_fused.buffers]
        if missing:
            problems.append(f"{len(missing)} BatchNorm buffers missing in the converted model: "
                            f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
        for kind in ("running_mean", "running_var"):
            names = [n for n in bnames if n.endswith(kind) and n in r_fused.buffers]
            compare(kind, [(n, r_fused.buffers[n], r_plain.buffers[n], ref_of(r_ref and r_ref.buffers, n))
                           for n in names], shared_scale=True)
        for n in bnames:
            if n.endswith("num_batches_tracked") and n in r_fused.buffers:
                same = torch.equal(r_fused.buffers[n].cpu(), r_plain.buffers[n].cpu())
                items.append(Item("num_batches", n, 0.0 if same else float("inf"), 0.0, 0.0,
                                  note="" if same else
                                  f"{r_fused.buffers[n].item()} != {r_plain.buffers[n].item()}"))

    compare("input.grad", [("input", r_fused.xgrad, r_plain.xgrad, r_ref.xgrad if r_ref else None)], False,
            metric="rel")
    pnames, fnames = list(r_plain.grads), set(r_fused.grads)
    unmatched = [n for n in pnames if n not in fnames] + [n for n in r_fused.grads if n not in set(pnames)]
    if unmatched:
        problems.append(
            f"{len(unmatched)} parameter names differ between the plain and the converted model "
            f"(gradients not compared): {', '.join(unmatched[:6])}{' ...' if len(unmatched) > 6 else ''}"
        )
    compare("param.grad", [(n, r_fused.grads[n], r_plain.grads[n], ref_of(r_ref and r_ref.grads, n))
                           for n in pnames if n in fnames], shared_scale=True, metric="rel")
    return ParityReport(header, items, problems, counts)


def _compare(items: list, group: str, entries, *, shared_scale: bool, metric: str, direct: bool, lowp: bool,
             rtol: float, atol: float, lowp_atol: float, grad_slack: float = GRAD_REL_SLACK) -> None:
    scales = {}
    for n, f, p, r in entries:
        base = r if r is not None else p
        scales[n] = _max_abs(base) if base is not None else 0.0
    gscale = max(scales.values(), default=0.0)
    for n, f, p, r in entries:
        needed = {"fused": f, "plain": p} if direct else {"fused": f, "plain": p, "fp64": r}
        if all(t is None for t in needed.values()):
            continue  # none has it (e.g. a frozen parameter)
        missing = [w for w, t in needed.items() if t is None]
        if missing:
            items.append(Item(group, n, float("inf"), scales[n], 0.0, note="missing in " + ", ".join(missing)))
            continue
        s, g = scales[n], (gscale if shared_scale else scales[n])
        if metric == "rel":
            if direct:
                items.append(Item(group, n, _rel_err(f, p), 1.0, grad_slack, metric="rel"))
            else:
                pe = _rel_err(p, r)
                items.append(Item(group, n, _rel_err(f, r), 1.0, 2 * pe + grad_slack, plain_err=pe, metric="rel"))
        elif direct:
            items.append(Item(group, n, _max_err(f, p), s, rtol * s + atol * g))
        else:
            pe = _max_err(p, r)
            extra = lowp_atol * g if lowp else rtol * s + atol * g
            items.append(Item(group, n, _max_err(f, r), s, 2 * pe + extra, plain_err=pe))


def _compare_replay(items: list, block: str, outs: dict, *, direct: bool, lowp: bool, rtol: float, atol: float,
                    lowp_atol: float) -> None:
    f, p, r = outs["fused"], outs["plain"], outs.get("ref")
    kw = dict(direct=direct, lowp=lowp, rtol=rtol, atol=atol, lowp_atol=lowp_atol, metric="max")
    _compare(items, "replay.out", [(block, f[0], p[0], r[0] if r else None)], shared_scale=False, **kw)
    _compare(items, "replay.dx", [(block, f[1], p[1], r[1] if r else None)], shared_scale=False, **kw)
    _compare(items, "replay.grad", [(f"{block}.{n}", f[2].get(n), p[2][n], r[2].get(n) if r else None)
                                    for n in p[2]], shared_scale=True, **kw)


def parity_table(report: ParityReport, *, verbose: bool = False) -> str:
    """One row per block output, the logits, the input gradient, and the parameter
    gradients and BN statistics gathered per block (every tensor with ``verbose``)."""
    block_names = [i.name for i in report.items if i.group == "block"]
    vs_ref = report.header.get("reference") != "plain fp32"  # errors against fp64, next to plain's
    rows: list[list] = []
    grouped: dict[tuple[str, str], list[Item]] = {}
    order: list[tuple[str, str]] = []
    for it in report.items:
        if verbose or it.group in ("block", "logits", "input.grad", "replay.out", "replay.dx"):
            key = (it.group, it.name)
        elif it.group == "num_batches":
            key = (it.group, "all")
        else:
            key = (it.group, _owner(it.name, block_names))
        if key not in grouped:
            grouped[key] = []
            order.append(key)
        grouped[key].append(it)
    rank = ["block", "logits", "running_mean", "running_var", "num_batches", "replay.out", "replay.dx",
            "replay.grad", "input.grad", "param.grad"]
    order.sort(key=lambda k: rank.index(k[0]) if k[0] in rank else len(rank))  # stable within a group
    for key in order:
        its = grouped[key]
        worst = max(its, key=lambda i: (not i.ok, i.err / i.tol if i.tol > 0 else (0 if i.err == 0 else math.inf)))
        name = key[1] if len(its) == 1 else f"{key[1]} ({len(its)})"
        row = [key[0], name, worst.metric, worst.err]
        if vs_ref:
            row.append(worst.plain_err)
        row += [worst.scale if worst.metric == "max" else None, worst.tol, all(i.ok for i in its)]
        if worst.note:
            row[-1] = f"FAIL ({worst.note})"
        rows.append(row)
    err_head = "fused err (vs fp64)" if vs_ref else "fused err (vs plain)"
    headers = ["what", "name", "metric", err_head] + (["plain err"] if vs_ref else []) + ["scale", "tol", "ok"]
    return format_table(headers, rows)
