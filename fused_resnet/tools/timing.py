"""Timing of models and steps: images/s of eager, fused and compiled variants, device ceilings.

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

import dataclasses
import gc
import statistics
import time
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..convert import convert
from .env import default_device, dtype_name, synchronize
from .models import ModelSpec, block_backends, build_model, fused_blocks, make_input, model_spec
from .report import format_table, progress

CPU_NOTE = (
    "ran on the CPU (backend {backend}): CPU numbers say nothing about GPU speed; "
    "run on a CUDA GPU for meaningful timings"
)

# Small defaults that keep CPU runs to seconds.
CPU_DEFAULTS = {"batch": 2, "image_size": 64, "steps": 2, "warmup": 1, "dtype": "fp32"}
GPU_DEFAULTS = {"batch": 256, "cifar_batch": 512, "steps": 20, "warmup": 5, "dtype": "bf16"}


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


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
    for variant in variants:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    fused_backends = [b.strip() for b in backend.split(",") if b.strip()]
    runs = [(v, b) for v in variants for b in (fused_backends if v.startswith("fused") else [None])]
    setting = dict(mode=mode, batch=batch, size=size, dtype=dtype, device=device, steps=steps, warmup=warmup,
                   compile_mode=compile_mode, seed=seed, channels_last=channels_last, show=show)
    results = []
    for variant, run_backend in runs:
        label = f"{name} {mode} {variant}" + (f"[{run_backend}]" if len(fused_backends) > 1 and run_backend else "")
        results.append(_bench_run(spec, variant, run_backend, label, **setting))
    _add_speedups(results)
    return results


def _bench_run(spec: ModelSpec, variant: str, backend: Optional[str], label: str, *, mode: str, batch: int,
               size: int, dtype: torch.dtype, device: torch.device, channels_last: bool, show: bool,
               **timing) -> dict:
    """One row of ``bench_model``: the variant timed, or the error it raised."""
    row = {
        "model": spec.name, "mode": mode, "variant": variant, "batch": batch, "image_size": size,
        "dtype": dtype_name(dtype), "channels_last": channels_last, "device": device.type,
        "requested_backend": backend,
    }
    t_start = time.perf_counter()
    try:
        reset_peak_memory(device)
        torch._dynamo.reset()
        _time_variant(row, spec, variant, backend, label, mode=mode, batch=batch, size=size, dtype=dtype,
                      device=device, channels_last=channels_last, show=show, **timing)
    except Exception as e:  # recorded and reported, the other variants still run
        row["error"] = f"{type(e).__name__}: {e}".strip()[:2000]
        progress(f"{label}: FAILED: {row['error'].splitlines()[0] if row['error'] else ''}", show)
    finally:
        row["wall_s"] = time.perf_counter() - t_start
        if variant.endswith("+compile"):
            torch._dynamo.reset()
        reset_peak_memory(device)
    return row


def _time_variant(row: dict, spec: ModelSpec, variant: str, backend: Optional[str], label: str, *, mode: str,
                  batch: int, size: int, dtype: torch.dtype, device: torch.device, steps: int, warmup: int,
                  compile_mode: Optional[str], seed: int, channels_last: bool, show: bool) -> None:
    """The variant's model and step built, its steps timed; the results go into ``row``."""
    base = build_model(spec, seed=seed)
    model = convert(base, backend) if backend else base
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
                           dtype=dtype if mode == "infer" else torch.float32, channels_last=channels_last)
    step = _variant_step(model, variant, mode, x, target, dtype)
    progress(f"{label}: batch {batch}, {size}x{size}, {dtype_name(dtype)}, warm-up {warmup}, steps {steps}", show)
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


def _variant_step(model: nn.Module, variant: str, mode: str, x: torch.Tensor, target: torch.Tensor,
                  dtype: torch.dtype) -> Callable[[], Any]:
    """The step a variant times: inference or training, replayed from a CUDA graph for +graphs."""
    graphs = variant.endswith("+graphs")
    if graphs and x.device.type != "cuda":
        raise ValueError(f"the +graphs variants replay a CUDA graph: they need a CUDA device, not "
                         f"{x.device.type}")
    if mode == "infer":
        step = make_infer_step(model, x)
    else:
        step = make_train_step(model, x, target, dtype, zero_grad=not graphs)
    if graphs:
        reset = None if mode == "infer" else (lambda m=model: m.zero_grad(set_to_none=True))
        step = make_graph_step(step, reset=reset)
    return step


def _add_speedups(results: list[dict]) -> None:
    """Each row's speed-up over the eager and the eager+compile rows of its mode."""
    eager = {r["mode"]: r.get("img_per_s") for r in results if r["variant"] == "eager"}
    compiled = {r["mode"]: r.get("img_per_s") for r in results if r["variant"] == "eager+compile"}
    for r in results:
        base = eager.get(r["mode"])
        r["speedup_vs_eager"] = r["img_per_s"] / base if base and r.get("img_per_s") else None
        cbase = compiled.get(r["mode"])
        r["speedup_vs_compile"] = r["img_per_s"] / cbase if cbase and r.get("img_per_s") else None


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
