#!/usr/bin/env python
"""Every kernel launch of one fused block training step at the GPU benchmark size, without a GPU.

Runs bench_blocks.py's blocks (N=128, bf16, channels_last) for one training step
(forward + backward of a given output gradient) on the meta device, where nothing is
allocated or computed, and lists what each backend launches on an H200 (132 SMs):

  triton  the triton backend's launchers themselves (checks, layouts, configuration,
          partials buffers, grids) with every Triton launch intercepted
          (_launches.triton_launches): grid, num_warps and BLOCK_* sizes are the
          launchers' own. The configuration is the heuristic one, the first autotuning
          candidate (what runs with autotuning off, under deterministic algorithms, in a
          CUDA graph capture); autotuning on a GPU may pick another. conv_wgrad_kernel's
          split-K slices are its grid axis 1 (kernels.conv_backward.wgrad_splits), reduced
          by wgrad_reduce_kernel, not serially.
  cuda    the cuda backend's Python with each call into fused_resnet._C answered by its
          fake (_launches.cuda_host_backend) and turned into what the C++ launches for it
          by CUDA_MODEL below, a model of csrc/ops/ and the launchers of csrc/*.cu: a
          CUTLASS convolution's grid is ceil(M/TileM) x ceil(N/TileN) x split-K slices
          (tile shapes read from csrc/cutlass/*.cu), the streaming kernels' grids are sized
          as launch.h's plans size them (every buffer 16-byte aligned, as the caching
          allocator gives them). Needs the extension built: _C.conv_reason says which
          convolutions CUTLASS takes.

The aten operators the step runs besides (cuDNN convolutions, PyTorch kernels, copies)
are listed by name; their grid is the library's own ("library").

Bytes: every distinct tensor a launch is given (a buffer passed twice, as a placeholder
pointer say, counted once), read or written once; an approximation that counts unread
placeholders and ignores re-reads. aten operators: tools.traffic.op_bytes. A serial split-K
CUTLASS convolution passes its fp32 output through memory once per slice (each slice
reads what the previous one wrote, adds its part and writes): counted per slice.

Flags: "few programs", a launch that moves >= 8 MB on fewer than 2 x 132 programs (too
few to fill the GPU twice over: the memory system waits on a few SMs); "serial split-K",
slices that wait for each other's epilogues.

The step runs once, as a first step: the triton backend converts every weight to its
kernels' layout (the aten::clone rows), as it does at every step of bench_blocks.py's
training protocol, where autocast casts the weights afresh each step. Difference from
that protocol: the convolution weights are bf16 here rather than fp32 under autocast,
which on a GPU adds two small launches per convolution (the weight's cast, its
gradient's cast), not listed.

Printed: a table per block and backend (identical launches on one row, "MB each" per
launch) and its totals; --json writes every launch in order.

    python bench/launch_audit.py
    python bench/launch_audit.py --blocks layer1 --backends triton --json audit.json
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Callable, Optional
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import _launches as L  # noqa: E402
import bench_blocks  # noqa: E402
from fused_resnet import backends, convert  # noqa: E402
from fused_resnet._layout import output_format  # noqa: E402
from fused_resnet.tools.env import dtype_name, env_info, utc_now  # noqa: E402
from fused_resnet.tools.report import format_table  # noqa: E402
from fused_resnet.tools.traffic import op_bytes, tensor_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BATCH, DTYPE = 128, torch.bfloat16
SMS = 132  # the H200's streaming multiprocessors (the H100's too); both backends size grids by it
FLAG_BYTES, FLAG_PROGRAMS = 8e6, 2 * SMS
AUDITED = ("triton", "cuda")


@dataclasses.dataclass
class Launch:
    """One kernel launch: ``grid`` None for a library kernel (cuDNN, PyTorch), whose grid is its own."""
    op: str                 # the fused_resnet op that launched it (with its convolution), or "step"
    kernel: str
    grid: Optional[tuple] = None
    width: str = ""         # "8 warps" (Triton num_warps) or "256 threads" (a CUDA block)
    tile: str = ""
    splits: str = ""        # split-K slices: "N serial" where they wait for each other, "N parallel"
    bytes: int = 0

    @property
    def programs(self) -> Optional[int]:
        return math.prod(self.grid) if self.grid is not None else None

    @property
    def flag(self) -> str:
        flags = []
        if self.grid is not None and self.bytes >= FLAG_BYTES and self.programs < FLAG_PROGRAMS:
            flags.append("few programs")
        if self.splits.endswith("serial"):
            flags.append("serial split-K")
        return ", ".join(flags)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "programs": self.programs, "flag": self.flag}


def distinct_bytes(tensors) -> int:
    """Bytes of the distinct buffers among ``tensors``, each once (the largest view of each)."""
    seen: dict[int, int] = {}
    for t in tensors:
        key = t.untyped_storage()._cdata
        seen[key] = max(seen.get(key, 0), tensor_bytes(t))
    return sum(seen.values())


def op_label(op) -> str:
    """'conv 64>256 1x1' for a convolution op (in>out channels, kernel), 'bn_act 256' (channels)
    for the others, 'step' outside the fused ops (autograd, the block's own PyTorch)."""
    if op is None:
        return "step"
    func, args = op
    name = func._opname
    weight = {"conv": 1, "conv_shortcut": 1, "conv_backward": 4}.get(name)
    if weight is not None:
        k, c, r, s = args[weight].shape
        return f"{name} {c}>{k} {r}x{s}"
    t = next(a for a in args if isinstance(a, Tensor))
    return f"{name} {t.shape[1] if t.dim() == 4 else t.shape[0]}"


# ---------------------------------------------------------------- the step on the meta device


def meta_train_step(key: str, backend: str) -> Callable[[], None]:
    """One training step of a bench_blocks.py block on ``backend``, meta tensors at the benchmark
    size: channels_last, bf16 activations and convolution weights, fp32 BatchNorm."""
    _, kind, inplanes, planes, hw = bench_blocks.BLOCKS[key]
    block = convert(nn.Sequential(bench_blocks.make_block(kind, inplanes, planes, seed=0)), backend)
    block = block.to(device="meta", memory_format=torch.channels_last).train()
    for m in block.modules():
        if isinstance(m, nn.Conv2d):
            m.to(DTYPE)
    x = torch.empty(BATCH, inplanes, hw, hw, device="meta", dtype=DTYPE).contiguous(
        memory_format=torch.channels_last).requires_grad_(True)
    gout = torch.empty_like(x)
    return lambda: block(x).backward(gout)


class Recorder:
    """The launches of one step, in order; ``mode`` (a _launches.BackendDispatch) reports the aten
    operators and tells which fused_resnet op is running."""

    def __init__(self):
        self.launches: list[Launch] = []
        self.mode = L.BackendDispatch(self.aten)

    def emit(self, launch: Launch) -> None:
        self.launches.append(launch)

    def op(self) -> str:
        return op_label(self.mode.op)

    def aten(self, func, args, kwargs, out) -> None:
        self.emit(Launch(self.op(), f"aten::{func.overloadpacket.__name__}", bytes=op_bytes(func, args, kwargs, out)))

    def triton(self, name, grid, args, kwargs) -> None:
        self.emit(triton_launch(self.op(), name, grid, args, kwargs))

    def cuda(self, name, args, out) -> None:
        for t in args:  # csrc/ops/ makes every vector it reads dense: a copy only of an expanded gradient
            if isinstance(t, Tensor) and t.dim() == 1:
                t.contiguous()
        CUDA_MODEL[name](lambda launch: self.emit(dataclasses.replace(launch, op=self.op())), args, out)


def audit(key: str, backend: str) -> list[Launch]:
    """Every launch of one training step of block ``key`` on ``backend`` ("triton" or "cuda")."""
    rec = Recorder()
    with (triton_on_meta if backend == "triton" else cuda_on_meta)(rec) as name:
        step = meta_train_step(key, name)
        with rec.mode:
            step()
    return rec.launches


# ---------------------------------------------------------------- triton


@contextlib.contextmanager
def triton_on_meta(rec: Recorder):
    """The triton backend's launchers, registered as "triton-meta", on meta tensors as on a GPU:
    outside the interpreter (its configurations, not the interpreter's tiny ones), autotuning off,
    launches reported to ``rec``. Meta tensors skip the launchers' activation checks, whose device
    rule they would fail."""
    from fused_resnet.backends import triton as tb
    from fused_resnet.backends.triton import _common

    check = _common.check_activation
    attrs = {"name": "triton-meta", "not_supported_reasons": lambda self, device=None, dtype=None: []}
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.dict(os.environ, {"TRITON_INTERPRET": "0", "FUSED_RESNET_TRITON_AUTOTUNE": "0"}))
        stack.enter_context(mock.patch.object(_common, "check_activation",
                                              lambda name, t: None if t.is_meta else check(name, t)))
        stack.enter_context(mock.patch.dict(backends.BACKENDS,
                                            {"triton-meta": type("TritonMeta", (tb.TritonBackend,), attrs)()}))
        stack.enter_context(L.triton_launches(rec.triton))
        yield "triton-meta"


def triton_launch(op: str, name: str, grid, args, kwargs) -> Launch:
    """A Launch from an intercepted ``kernel[grid](*args, **kwargs)``."""
    grid = tuple(int(g) for g in grid)
    tile = " ".join(f"{k[len('BLOCK_'):]}{v}" if k != "BLOCK" else str(v)
                    for k, v in kwargs.items() if k.startswith("BLOCK"))
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
    return Launch(op, name, grid, f"{kwargs.get('num_warps', 4)} warps", tile,
                  str(grid[1]) if name == "conv_wgrad_kernel" else "", distinct_bytes(tensors))


# ---------------------------------------------------------------- cuda: a model of csrc/


@contextlib.contextmanager
def cuda_on_meta(rec: Recorder):
    """The cuda backend on meta tensors, each _C call handed to ``rec``; raises ImportError with
    the reason when _C is not built."""
    from fused_resnet import _ext

    _ext.load()
    with L.cuda_host_backend(rec.cuda, name="cuda-meta") as name:
        yield name


THREADS = 256              # launch.h kThreads: a streaming kernel's block
MERGE_GROUP = 64           # launch.h kMergeChunksPerGroup: chunks one merge block takes
MERGE_BLOCK = (32, 8)      # kFx x kFy of the merge and slab-sum kernels (batch_stats.cu, bn_act_backward.cu)
_ELEMENTS = {"bfloat16_t": torch.bfloat16, "half_t": torch.float16}
_INSTANCE = re.compile(r"(\w+)<cutlass::(\w+), cutlass::gemm::GemmShape<(\d+), (\d+), (\d+)>, "
                       r"cutlass::gemm::GemmShape<(\d+), (\d+), (\d+)>, \d+>>\(\"(\w+)\"\)")


@dataclasses.dataclass(frozen=True)
class Cutlass:
    """One CUTLASS instantiation of csrc/cutlass/: its name, threadblock tile and warp tile (M, N, K)."""
    name: str
    tile: tuple
    warp: tuple

    @property
    def threads(self) -> int:
        return 32 * math.prod(t // w for t, w in zip(self.tile, self.warp))


@functools.lru_cache(maxsize=None)
def cutlass_kernels() -> dict:
    """{(family, dtype, tile N): Cutlass} for every instantiation in csrc/cutlass/*.cu."""
    found = {}
    for path in sorted((ROOT / "csrc" / "cutlass").glob("*.cu")):
        for m in _INSTANCE.finditer(path.read_text()):
            family, element, *dims, name = m.groups()
            tile, warp = tuple(map(int, dims[:3])), tuple(map(int, dims[3:]))
            found[(family, _ELEMENTS[element], tile[1])] = Cutlass(name, tile, warp)
    return found


def _cutlass(family: str, dtype: torch.dtype, wide: bool) -> Cutlass:
    """ops/conv.cpp's choice: the 128x128 tile when wide (more than 64 output channels for fprop,
    input channels for dgrad; always for wgrad), else 128x64."""
    return cutlass_kernels()[(family, dtype, 128 if wide else 64)]


def _cutlass_launch(k: Cutlass, m: int, n: int, nbytes: int, split: int = 1, mode: str = "serial") -> Launch:
    """A CUTLASS implicit GEMM of M x N: grid ceil(M/TileM) x ceil(N/TileN) x split-K slices
    (``mode``: "serial" slices wait for each other, "parallel" ones write their own partials)."""
    grid = (_cdiv(m, k.tile[0]), _cdiv(n, k.tile[1]), split)
    return Launch("", k.name, grid, f"{k.threads} threads", "x".join(map(str, k.tile)),
                  f"{split} {mode}" if split > 1 else "", nbytes)


def _vec_bytes(*vectors) -> int:
    return sum(tensor_bytes(v) for v in vectors if v is not None)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _units(x: Tensor) -> tuple[int, int]:
    """(rows N*H*W, channel vectors per row: 16 bytes each where the channels fill them, else
    single values) of a channels_last activation, as launch.h's NHWC passes read it (the
    audited blocks have no NCHW tensor)."""
    assert output_format(x) == torch.channels_last, "the model covers channels_last activations"
    vec = 16 // x.element_size()
    c = x.shape[1]
    return x.numel() // c, c // vec if c % vec == 0 else c


def _plan(units: int, cvecs: int) -> tuple[int, int]:
    """ops/common.cpp make_plan (NHWC): the grid (gx, nchunks) of a reduction over rows."""
    tx = 1
    while tx < cvecs and tx < 32:
        tx <<= 1
    gx = _cdiv(cvecs, tx)
    target = max(1, SMS * 4 // gx)
    upc = max(_cdiv(units, target), THREADS // tx * 8)
    return gx, max(1, _cdiv(units, upc))


def _elementwise(kernel: str, x: Tensor, nbytes: int) -> Launch:
    """ops/common.cpp elementwise_shape: a grid-stride pass over 16-byte vectors, at most 16 blocks per SM."""
    rows, cvecs = _units(x)
    blocks = max(1, min(_cdiv(rows * cvecs, THREADS), SMS * 16))
    return Launch("", kernel, (blocks,), f"{THREADS} threads", bytes=nbytes)


def _merge(kernel: str, c: int, chunks: int, out_bytes: int, z: int = 1) -> list[Launch]:
    """A fixed-order merge of [2, chunks, C] partials (launch_stats_merge; launch_slab_sums, whose
    two quantities are grid axis z): one launch, or two through groups of MERGE_GROUP chunks."""
    threads, cblocks = f"{math.prod(MERGE_BLOCK)} threads", _cdiv(c, MERGE_BLOCK[0])
    partial = 2 * chunks * c * 4
    if chunks <= MERGE_GROUP:
        return [Launch("", kernel, (1, cblocks, z), threads, bytes=partial + out_bytes)]
    groups = _cdiv(chunks, MERGE_GROUP)
    return [Launch("", kernel, (groups, cblocks, z), threads, bytes=partial + 2 * groups * c * 4),
            Launch("", kernel, (1, cblocks, z), threads, bytes=2 * groups * c * 4 + out_bytes)]


def _batch_stats(emit, x: Tensor) -> None:
    """launch_batch_stats: per-chunk (mean, M2) over rows, then one merge of the chunks."""
    rows, cvecs = _units(x)
    gx, chunks = _plan(rows, cvecs)
    c = x.shape[1]
    emit(Launch("", "batch_stats_nhwc_kernel", (gx, chunks), f"{THREADS} threads",
                bytes=tensor_bytes(x) + (2 * chunks + 1) * c * 4))
    emit(Launch("", "batch_stats_merge_kernel", (1, _cdiv(c, MERGE_BLOCK[0])), f"{math.prod(MERGE_BLOCK)} threads",
                bytes=(2 * chunks + 1) * c * 4 + 2 * c * 4))


def _krsc(weight: Tensor) -> Tensor:
    """ops/conv_common.cpp krsc: the filter as [K, R, S, C], run here on the meta weight so that the copy it
    costs (none for a channels_last weight) is reported by the dispatch mode as the C++ makes it."""
    return weight.permute(0, 2, 3, 1).contiguous()


def c_conv(emit, args, out) -> None:
    """_C.conv: the CUTLASS fprop (prologue / bias+ReLU / plain with statistics), its statistics
    merged from the epilogue's slabs, or read back from y by batch_stats when there is a residual
    or the kernel takes none."""
    x, weight, bias, scale, shift, residual = args[:6]
    relu, stats, y = args[10], args[11], out[0]
    family = "FpropPrologue" if scale is not None else "FpropBiasRelu" if bias is not None and relu else "FpropStats"
    k = _cutlass(family, x.dtype, weight.shape[0] > 64)
    w = _krsc(weight)
    m, n = y.numel() // y.shape[1], y.shape[1]
    slabs = _cdiv(m, k.warp[0]) if stats and residual is None and family != "FpropBiasRelu" else 0
    emit(_cutlass_launch(k, m, n, distinct_bytes([t for t in (x, w, y, residual) if t is not None])
                         + _vec_bytes(bias, scale, shift) + 2 * slabs * n * 4))
    if slabs:
        for launch in _merge("batch_stats_merge_kernel", n, slabs, 2 * n * 4):
            emit(launch)
    elif stats:
        _batch_stats(emit, y)


def _wgrad_split(k_out: int, crs: int, rows: int) -> int:
    """ops/conv_backward.cpp wgrad_split: parallel slices for about two waves of 128x128 tiles, >= 1024 rows each."""
    tiles = _cdiv(k_out, 128) * _cdiv(crs, 128)
    return max(1, min(_cdiv(2 * SMS, tiles), rows // 1024))


def c_conv_wgrad(emit, args, out) -> None:
    """_C.conv_wgrad: the CUTLASS wgrad with the prologue, parallel split-K (each slice's fp32
    partial dW in a buffer CUTLASS zeroes first), then wgrad_reduce: the slices summed in order
    into the weight's dtype and layout (blocks of 32 elements x 8 slice lanes)."""
    g, x, weight, scale, shift = args[:5]
    kout, c, r, s = weight.shape
    rows = g.numel() // kout
    split = _wgrad_split(kout, c * r * s, rows)
    partial_bytes = split * kout * r * s * c * 4
    launch = _cutlass_launch(_cutlass("WgradPrologue", x.dtype, True), kout, c * r * s,
                             distinct_bytes([g, x]) + _vec_bytes(scale, shift) + partial_bytes, split, "parallel")
    emit(Launch("", "cudaMemsetAsync (split-K partials)", bytes=partial_bytes))
    emit(launch)
    emit(Launch("", "wgrad_reduce_kernel", (_cdiv(kout * r * s * c, 32),), "256 threads", "", "",
                partial_bytes + tensor_bytes(out)))


def c_conv_dgrad(emit, args, out) -> None:
    """_C.conv_dgrad: the unit-stride CUTLASS dgrad with the prologue's gradient in the epilogue,
    then the fixed-order sums of its slabs (dscale, dshift)."""
    g, x, weight, scale, shift = args[:5]
    dx = out[0]
    c = x.shape[1]
    k = _cutlass("DgradBnRelu", x.dtype, c > 64)
    w = _krsc(weight)
    m = x.numel() // c
    slabs = _cdiv(m, k.warp[0])
    emit(_cutlass_launch(k, m, c, distinct_bytes([g, x, w, dx]) + _vec_bytes(scale, shift) + 2 * slabs * c * 4))
    for launch in _merge("slab_sum_kernel", c, slabs, 2 * c * 4, z=2):
        emit(launch)


def c_batch_stats(emit, args, out) -> None:
    """_C.batch_stats."""
    _batch_stats(emit, args[0])


def c_bn_act(emit, args, out) -> None:
    """_C.bn_act: one elementwise pass (bn_act.cu)."""
    y, scale, shift, residual, res_scale, res_shift, _ = args
    tensors = distinct_bytes([t for t in (y, residual, out) if t is not None])
    emit(_elementwise("bn_act_kernel", y, tensors + _vec_bytes(scale, shift, res_scale, res_shift)))


def c_bn_act_backward(emit, args, out) -> None:
    """_C.bn_act_backward: one pass over rows (dy, dres, per-chunk sums), then the sums merged."""
    dout, out_, y, scale, residual, res_scale, relu, mask = args
    need_y, need_scale, need_shift, need_res, need_rscale, need_rshift = mask
    any_sum = need_scale or need_shift or need_rscale or need_rshift
    if not (need_y or need_res or any_sum):
        return
    rows, cvecs = _units(y)
    gx, chunks = _plan(rows, cvecs)
    c = y.shape[1]
    touched = [t for t, used in ((dout, True), (out_, relu), (y, need_scale), (residual, need_rscale),
                                 (out[0], need_y), (out[3], need_res)) if used]
    partial = 3 * chunks * c * 4 if any_sum else 0
    emit(Launch("", "bn_act_backward_nhwc_kernel", (gx, chunks), f"{THREADS} threads",
                bytes=distinct_bytes(touched) + _vec_bytes(scale, res_scale) + partial))
    if any_sum:
        emit(Launch("", "bn_act_backward_merge_kernel", (_cdiv(c, MERGE_BLOCK[0]),),
                    f"{math.prod(MERGE_BLOCK)} threads", bytes=partial + _vec_bytes(out[1], out[2], out[4], out[5])))


def c_conv_output_grad(emit, args, out) -> None:
    """_C.conv_output_grad: one elementwise pass (conv_output_grad.cu)."""
    dy, dmean, dvar, y, mean = args
    emit(_elementwise("conv_output_grad_kernel", y, distinct_bytes([dy, y, out]) + _vec_bytes(dmean, dvar, mean)))


def c_batch_stats_backward(emit, args, out) -> None:
    """_C.batch_stats_backward: the same pass without dy."""
    dmean, dvar, x, mean = args
    emit(_elementwise("conv_output_grad_kernel", x, distinct_bytes([x, out]) + _vec_bytes(dmean, dvar, mean)))


def _per_channel(kernel: str, affine: tuple = (), one_block: bool = False):
    """A launch over the C channels of its vector arguments, a thread a channel in blocks of THREADS
    (bn_finalize.cu; ``one_block``: one block looping over them), after ops/common.cpp float_vec's fp32
    copies of the BatchNorm parameters at positions ``affine``."""
    def model(emit, args, out):
        for i in affine:
            if args[i] is not None:
                args[i].to(torch.float32)
        vecs = [t for t in pytree_tensors((args, out)) if t.dim() == 1]
        grid = (1,) if one_block else (_cdiv(max(v.shape[0] for v in vecs), THREADS),)
        emit(Launch("", kernel, grid, f"{THREADS} threads", bytes=distinct_bytes(vecs)))
    return model


def pytree_tensors(tree) -> list[Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(tree) if isinstance(t, Tensor)]


CUDA_MODEL: dict[str, Callable] = {
    "conv": c_conv, "conv_wgrad": c_conv_wgrad, "conv_dgrad": c_conv_dgrad, "batch_stats": c_batch_stats,
    "bn_act": c_bn_act, "bn_act_backward": c_bn_act_backward, "conv_output_grad": c_conv_output_grad,
    "batch_stats_backward": c_batch_stats_backward, "bn_finalize": _per_channel("bn_finalize_kernel", (2, 3)),
    "bn_finalize_backward": _per_channel("bn_finalize_backward_kernel", (4,)),
    "bn_update_running": _per_channel("bn_update_running_kernel", one_block=True),
}


# ---------------------------------------------------------------- report


def grouped(launches: list[Launch]) -> list[tuple[Launch, int]]:
    """Identical launches (same op, kernel, grid, tile, bytes) as one row with their count, in
    order of first appearance."""
    rows: dict[tuple, list] = {}
    for launch in launches:
        key = tuple(dataclasses.astuple(launch))
        rows.setdefault(key, [launch, 0])[1] += 1
    return [(launch, n) for launch, n in rows.values()]


def table(launches: list[Launch]) -> str:
    body = [[x.op, x.kernel, n, x.programs if x.grid is not None else "library", x.width or "-", x.tile or "-",
             x.splits or "-", round(x.bytes / 1e6, 2), x.flag or "-"] for x, n in grouped(launches)]
    return format_table(["op", "kernel", "launches", "programs", "warps/threads", "tile", "splits",
                           "MB each", "flag"], body)


def totals(launches: list[Launch]) -> dict:
    return {"launches": len(launches), "MB": round(sum(x.bytes for x in launches) / 1e6, 1),
            "flagged": sum(bool(x.flag) for x in launches)}


def run(keys: list[str], names: list[str]) -> list[dict]:
    """One result per block and backend: its launches and totals, or why the backend could not be audited."""
    results = []
    for key in keys:
        for backend in names:
            row = {"block": bench_blocks.BLOCKS[key][0], "key": key, "backend": backend}
            try:
                launches = audit(key, backend)
            except ImportError as e:  # the cuda backend without _C
                row["skipped"] = str(e)
            else:
                row.update(totals=totals(launches), launches=[x.as_dict() for x in launches])
                t = row["totals"]
                print(f"== {row['block']}, {backend}: {t['launches']} launches, {t['MB']} MB, "
                      f"{t['flagged']} flagged\n{table(launches)}\n", flush=True)
            results.append(row)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", default=",".join(bench_blocks.BLOCKS), help="of " + ", ".join(bench_blocks.BLOCKS))
    p.add_argument("--backends", default=",".join(AUDITED), help="of " + ", ".join(AUDITED))
    p.add_argument("--json", help="write every launch, the totals and the environment here")
    args = p.parse_args(argv)
    results = run(args.blocks.split(","), args.backends.split(","))
    for r in results:
        if "skipped" in r:
            print(f"== {r['block']}, {r['backend']}: not audited: {r['skipped']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(["launch_audit.py"] + (argv if argv is not None else sys.argv[1:])),
                       "date": utc_now(), "env": env_info(), "N": BATCH, "dtype": dtype_name(DTYPE),
                       "sms": SMS, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
