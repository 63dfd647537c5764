"""Triton kernels of ``fused_resnet::batch_stats`` and ``fused_resnet::batch_stats_backward``.

Kernels never allocate and never validate: the launchers in
``fused_resnet/backends/triton/batch_stats.py`` do both.

batch_stats_partial_kernel / batch_stats_merge_kernel
    per-channel mean and biased variance of an [M, C] row-major matrix (an NHWC
    activation): per-tile (mean, M2), then Chan's parallel merge, in tile order.
    conv_kernel's STATS epilogue writes the same per-tile partials, which this merge
    then reduces.

batch_stats_backward_kernel
    the gradient of batch_stats: dx = (dmean + 2 dvar (x - mean)) / M, one pass, on an
    [R, L] view of a dense NHWC (channel = column) or NCHW (channel = row % C) tensor.

Offsets are int32: the launcher refuses tensors of 2**31 elements or more.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import channel_tile, per_channel


@triton.jit
def batch_stats_partial_kernel(
    x_ptr, pmean_ptr, pm2_ptr, M, C,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Per-tile mean and M2 of an [M, C] row-major matrix, tiles of BLOCK_M rows."""
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    mask = (offs_m < M)[:, None] & c_ok[None, :]
    v = tl.load(x_ptr + offs_m[:, None] * C + offs_c[None, :], mask=mask, other=0.0).to(tl.float32)
    cnt = tl.minimum(M - pid_m * BLOCK_M, BLOCK_M).to(tl.float32)
    tmean = tl.sum(v, axis=0) / cnt
    d = tl.where(mask, v - tmean[None, :], 0.0)
    tl.store(pmean_ptr + pid_m * C + offs_c, tmean, mask=c_ok)
    tl.store(pm2_ptr + pid_m * C + offs_c, tl.sum(d * d, axis=0), mask=c_ok)


@triton.jit
def batch_stats_merge_kernel(
    pmean_ptr, pm2_ptr, out_mean_ptr, out_b_ptr, T, C, M, TILE_M, TILES_PER_PROG,
    FINAL: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Merge per-tile (mean, M2) partials [T, C]; tile t holds min(TILE_M, M - t*TILE_M) rows.

    Program (c, s) merges tiles [s*TILES_PER_PROG, (s+1)*TILES_PER_PROG) of BLOCK_C
    channels: BLOCK_T tiles at a time exactly (count-weighted mean, then M2 plus
    the between-tile term about that mean), the blocks in order with Chan's
    parallel formula. FINAL: writes mean and the biased variance M2/n (one
    program per channel block); otherwise writes the chunk's (mean, M2) to row s
    of [S, C] partials, which a FINAL launch with TILE_M*TILES_PER_PROG rows per
    tile then merges. Fixed order, no atomics: deterministic.
    """
    pid_c = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    t_begin = pid_s * TILES_PER_PROG
    t_end = tl.minimum(T, t_begin + TILES_PER_PROG)
    n_a = 0.0
    mean_a = tl.zeros((BLOCK_C,), dtype=tl.float32)
    m2_a = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for t0 in range(t_begin, t_end, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        t_ok = offs_t < t_end
        cnt = tl.where(t_ok, tl.minimum(M - offs_t * TILE_M, TILE_M), 0).to(tl.float32)
        mask = t_ok[:, None] & c_ok[None, :]
        pm = tl.load(pmean_ptr + offs_t[:, None] * C + offs_c[None, :], mask=mask, other=0.0)
        p2 = tl.load(pm2_ptr + offs_t[:, None] * C + offs_c[None, :], mask=mask, other=0.0)
        n_b = tl.sum(cnt, axis=0)
        mean_b = tl.sum(pm * cnt[:, None], axis=0) / n_b
        dev = tl.where(mask, pm - mean_b[None, :], 0.0)
        m2_b = tl.sum(p2 + cnt[:, None] * dev * dev, axis=0)
        n = n_a + n_b
        delta = mean_b - mean_a
        mean_a = mean_a + delta * (n_b / n)
        m2_a = m2_a + m2_b + delta * delta * (n_a * n_b / n)
        n_a = n
    if FINAL:
        tl.store(out_mean_ptr + offs_c, mean_a, mask=c_ok)
        tl.store(out_b_ptr + offs_c, m2_a / n_a, mask=c_ok)
    else:
        tl.store(out_mean_ptr + pid_s * C + offs_c, mean_a, mask=c_ok)
        tl.store(out_b_ptr + pid_s * C + offs_c, m2_a, mask=c_ok)


@triton.jit
def batch_stats_backward_kernel(
    x_ptr, dmean_ptr, dvar_ptr, mean_ptr, dx_ptr, R, L, C, M,
    CHANNEL_ON_COLS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """dx = (dmean[c] + 2 dvar[c] (x - mean[c])) / M on an [R, L] view (layouts as in the module docstring)."""
    off, mask, ch, ch_ok = channel_tile(R, L, C, CHANNEL_ON_COLS, BLOCK_R, BLOCK_L)
    x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
    dm = per_channel(tl.load(dmean_ptr + ch, mask=ch_ok, other=0.0), CHANNEL_ON_COLS)
    dv = per_channel(tl.load(dvar_ptr + ch, mask=ch_ok, other=0.0), CHANNEL_ON_COLS)
    mu = per_channel(tl.load(mean_ptr + ch, mask=ch_ok, other=0.0), CHANNEL_ON_COLS)
    dx = (dm + 2.0 * dv * (x - mu)) / M
    tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- AOT compile checks


def specializations():
    """Specialisations of the partials (each dtype), the merge (chunk and final) and the
    backward (each dtype, NHWC and NCHW)."""
    out = []
    for dtype in ("bf16", "fp16", "fp32"):
        out.append((f"batch_stats_partial_{dtype}", batch_stats_partial_kernel,
                    {"x_ptr": f"*{dtype}", "pmean_ptr": "*fp32", "pm2_ptr": "*fp32", "M": "i32", "C": "i32",
                     "BLOCK_M": "constexpr", "BLOCK_C": "constexpr"},
                    {"BLOCK_M": 128, "BLOCK_C": 64}, {"num_warps": 4}, {}))
        for on_cols in (True, False):
            out.append((f"batch_stats_backward_{dtype}_{'nhwc' if on_cols else 'nchw'}", batch_stats_backward_kernel,
                        {"x_ptr": f"*{dtype}", "dmean_ptr": "*fp32", "dvar_ptr": "*fp32", "mean_ptr": "*fp32",
                         "dx_ptr": f"*{dtype}", "R": "i32", "L": "i32", "C": "i32", "M": "i32",
                         "CHANNEL_ON_COLS": "constexpr", "BLOCK_R": "constexpr", "BLOCK_L": "constexpr"},
                        {"CHANNEL_ON_COLS": on_cols, "BLOCK_R": 32, "BLOCK_L": 64}, {"num_warps": 4}, {}))
    for final in (False, True):
        out.append((f"batch_stats_merge_{'final' if final else 'chunk'}", batch_stats_merge_kernel,
                    {"pmean_ptr": "*fp32", "pm2_ptr": "*fp32", "out_mean_ptr": "*fp32", "out_b_ptr": "*fp32",
                     "T": "i32", "C": "i32", "M": "i32", "TILE_M": "i32", "TILES_PER_PROG": "i32",
                     "FINAL": "constexpr", "BLOCK_T": "constexpr", "BLOCK_C": "constexpr"},
                    {"FINAL": final, "BLOCK_T": 64, "BLOCK_C": 32}, {"num_warps": 4}, {}))
    return out
