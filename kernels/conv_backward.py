"""Triton kernels of ``fused_resnet::conv_backward``: the data and weight gradients of a fused
convolution, the gradient at its output, and the ordered sums of per-tile partials (which
bn_act_backward's launcher uses too).

Kernels never allocate and never validate: the launchers in
``fused_resnet/backends/triton/conv_backward.py`` do both. Every activation a kernel sees is a
dense NHWC buffer ([rows, channels] row-major) unless documented otherwise.
No kernel uses atomics: every reduction writes per-tile partials that an
ordered reduction kernel sums in a fixed order, so results are bitwise
repeatable for a given configuration.

The gradient at the convolution's output (contract: reference.conv_backward)
    g = dy + ga[c] + gb[c]*(y - mean[c])    (STATS; ga = dmean/M, gb = 2 dvar/M, from
                                             dmean, dvar and INV_M = 1/M in the load)
    g = g * (y > 0)                         (RELU; where y is NaN, g passes, as in torch)
is never materialised for the GEMMs: it is recomputed in fp32 in the operand
load of both GEMMs that consume it (``_load_g``), then rounded to the
activation dtype for the tensor cores, exactly as the reference rounds it
before its convolution backward.

conv_dgrad_kernel
    da[n, ih, iw, ci] = sum_{kh, kw, co} g[n, oh, ow, co] * w[co, ci, kh, kw]
    with ih = oh*SH - PH + kh*DH: an implicit GEMM with rows = input pixels,
    columns = one group's input channels, reduction over (tap, output channel);
    taps whose output pixel does not exist (padding, or not on the stride grid)
    contribute 0. Strided convolutions (undilated) are split into QH*QW phases,
    one per residue (ih mod SH, iw mod SW): a phase's pixels all meet the same
    taps, so its programs loop over those alone (a 3x3 stride-2 conv: 2.25 of 9
    taps on average instead of all 9 masked). Program axis 1 = group*QH*QW +
    phase; M = rows of the largest phase (phase 0), NB the batch. Epilogue
    without prologue: dx = da. With the forward prologue a = relu(x*s + t):
    gu = da*(x*s + t > 0), dx = gu*s (NEED_DX), and per-tile partial sums of
    gu*x and gu per input channel into psum [2, NT, Cin] (NEED_PSUM; tile =
    phase*tiles_per_phase + tile of the phase) for dscale / dshift. Groups of
    few channels are packed as in conv_kernel: CIN_G/COUT_G span GP groups of
    CIN_R/COUT_R channels, the weight tile masked to its block diagonal.
    w: [KH, KW, Cout, CIN_R] dense.

conv_wgrad_kernel
    partial[s, kh, kw, ci, co] = sum_{rows m of split s} a[m @ tap, ci] * g[m, co]
    with a = relu(x*s + t) recomputed (HAS_PRO), rounded to x's dtype and
    zero-padded after the transform. Program = (tap, ci block, co block) x split
    x group; fp32 accumulation; wgrad_reduce_kernel sums the splits in order and
    writes dW [Cout, Cin/groups, KH, KW] in the weight's dtype. Groups of few
    channels are packed as in conv_kernel (CIN_G/COUT_G span GP groups of
    CIN_R/COUT_R channels); a program stores only its block diagonal.

conv_output_grad_kernel
    g itself, only for the outputs that are g: dresidual = g (x's dtype,
    NEED_RES) and per-tile partial column sums for dbias (NEED_SUM).

sum_partials_kernel
    out_s[c] = sum_t p[s, t, c], t in increasing order (BLOCK_T rows at a time), one
    output vector per s.

sum_partials_chunks_kernel
    q[s, j, c] = sum of p[s, t, c] over the ROWS rows t of chunk j, in increasing
    order: the first level of a two-level sum when p has many rows (the launcher
    then runs sum_partials_kernel over q). Program = (channel block, s, chunk), so a
    sum over thousands of partial rows runs on thousands of programs, not on a few.

Offsets are int32: the launcher refuses tensors of 2**31 elements or more.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import GROUP_M, bn_relu, clamp_configs, divisibility_attrs, dot, interpreting, relu_passes


# ----------------------------------------------------------------------------- the gradient at the conv output


@triton.jit
def _load_g(dy_ptr, y_ptr, off, mask, ga, gb, mu, STATS: tl.constexpr, RELU: tl.constexpr):
    """fp32 gradient at the conv output for a tile (zeros where ``mask`` is off).
    ga, gb, mu: per-column fp32 vectors (only read when STATS)."""
    g = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
    if STATS or RELU:
        yv = tl.load(y_ptr + off, mask=mask, other=0.0).to(tl.float32)
        if STATS:
            g = g + ga[None, :] + gb[None, :] * (yv - mu[None, :])
        if RELU:
            g = tl.where(relu_passes(yv), g, 0.0)
    return tl.where(mask, g, 0.0)


@triton.jit
def _load_g_coeffs(dmean_ptr, dvar_ptr, mu_ptr, inv_m, co, ok, STATS: tl.constexpr):
    """_load_g's per-output-channel ga = dmean/M, gb = 2 dvar/M and mu for channels ``co``
    (zeros, unread, without STATS); inv_m = 1/M."""
    if STATS:
        ga = tl.load(dmean_ptr + co, mask=ok, other=0.0) * inv_m
        gb = tl.load(dvar_ptr + co, mask=ok, other=0.0) * (2.0 * inv_m)
        mu = tl.load(mu_ptr + co, mask=ok, other=0.0)
    else:
        ga = 0.0
        gb = 0.0
        mu = 0.0
    return ga, gb, mu


@triton.jit
def conv_output_grad_kernel(
    dy_ptr, y_ptr, dmean_ptr, dvar_ptr, mu_ptr, inv_m, dres_ptr, psum_ptr, M, C,
    STATS: tl.constexpr, RELU: tl.constexpr, NEED_RES: tl.constexpr, NEED_SUM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_m = tl.program_id(0)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    mask = (offs_m < M)[:, None] & c_ok[None, :]
    ga, gb, mu = _load_g_coeffs(dmean_ptr, dvar_ptr, mu_ptr, inv_m, offs_c, c_ok, STATS)
    off = offs_m[:, None] * C + offs_c[None, :]
    gv = _load_g(dy_ptr, y_ptr, off, mask, ga, gb, mu, STATS, RELU)
    if NEED_RES:
        tl.store(dres_ptr + off, gv.to(dres_ptr.dtype.element_ty), mask=mask)
    if NEED_SUM:
        tl.store(psum_ptr + pid_m * C + offs_c, tl.sum(gv, axis=0), mask=c_ok)


# ----------------------------------------------------------------------------- dgrad


@triton.jit
def conv_dgrad_kernel(
    dy_ptr, y_ptr, w_ptr, x_ptr, dx_ptr, dmean_ptr, dvar_ptr, mu_ptr, inv_m, scale_ptr, shift_ptr, psum_ptr,
    M, H, W, CIN, HO, WO, COUT, CIN_G, COUT_G, CIN_R, COUT_R, NT, NB, QH, QW,
    SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_PRO: tl.constexpr, STATS: tl.constexpr, RELU: tl.constexpr,
    NEED_DX: tl.constexpr, NEED_PSUM: tl.constexpr, EVEN_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    g = tl.program_id(1) // (QH * QW)
    phase = tl.program_id(1) % (QH * QW)
    qh = phase // QW
    qw = phase % QW
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(CIN_G, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    # This phase's input pixels: ih = qh + QH*i, iw = qw + QW*j.
    hq = (H - qh + QH - 1) // QH
    wq = (W - qw + QW - 1) // QW
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # input pixel (n, i, j) of the phase
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # input channel within the group
    offs_k = tl.arange(0, BLOCK_K)  # output channel within the group (per chunk)
    m_ok = offs_m < NB * hq * wq
    n_ok = offs_n < CIN_G
    col = g * CIN_G + offs_n

    # A phase can be empty (H or W below the stride): no row is valid then, but the
    # index math still must not divide by zero.
    wq1 = tl.maximum(wq, 1)
    hq1 = tl.maximum(hq, 1)
    iw = qw + QW * (offs_m % wq1)
    t = offs_m // wq1
    ih = qh + QH * (t % hq1)
    nb = t // hq1
    pix = (nb * H + ih) * W + iw
    hbase = ih + PH
    wbase = iw + PW

    # Only the taps on this phase's stride grid: kh = kh0 + QH*i (QH = 1 visits every tap).
    kh0 = (qh + PH) % QH
    kw0 = (qw + PW) % QW
    khn = (KH - kh0 + QH - 1) // QH
    kwn = (KW - kw0 + QW - 1) // QW
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    KC = tl.cdiv(COUT_G, BLOCK_K)
    for kk in range(0, khn * kwn * KC):
        ti = kk // KC
        c0 = (kk - ti * KC) * BLOCK_K
        kh = kh0 + (ti // kwn) * QH
        kw = kw0 + (ti % kwn) * QW
        tap = kh * KW + kw
        hn = hbase - kh * DH
        wn = wbase - kw * DW
        oh = hn // SH
        ow = wn // SW
        row_ok = m_ok & (hn >= 0) & (wn >= 0) & (oh * SH == hn) & (ow * SW == wn) & (oh < HO) & (ow < WO)
        cs = c0 + offs_k
        k_ok = cs < COUT_G
        if EVEN_K:
            a_mask = tl.broadcast_to(row_ok[:, None], (BLOCK_M, BLOCK_K))
            b_mask = tl.broadcast_to(n_ok[None, :], (BLOCK_K, BLOCK_N))
        else:
            a_mask = row_ok[:, None] & k_ok[None, :]
            # Packed groups: only the block diagonal (output and input of one group).
            same = (cs // COUT_R)[:, None] == (offs_n // CIN_R)[None, :]
            b_mask = k_ok[:, None] & n_ok[None, :] & same
        co = g * COUT_G + cs
        ga, gb, mu = _load_g_coeffs(dmean_ptr, dvar_ptr, mu_ptr, inv_m, co, k_ok, STATS)
        dy_off = (((nb * HO + oh) * WO + ow) * COUT)[:, None] + co[None, :]
        a = _load_g(dy_ptr, y_ptr, dy_off, a_mask, ga, gb, mu, STATS, RELU).to(dy_ptr.dtype.element_ty)
        b_ptrs = w_ptr + ((tap * COUT + co) * CIN_R)[:, None] + (offs_n % CIN_R)[None, :]
        b = tl.load(b_ptrs, mask=b_mask, other=0.0)
        acc = dot(a, b, acc, DOT_PRECISION)

    # ---- epilogue: prologue backward
    mask = m_ok[:, None] & n_ok[None, :]
    x_off = pix[:, None] * CIN + col[None, :]
    tile = phase * num_pid_m + pid_m
    if HAS_PRO:
        xv = tl.load(x_ptr + x_off, mask=mask, other=0.0).to(tl.float32)
        sc = tl.load(scale_ptr + col, mask=n_ok, other=0.0)
        sf = tl.load(shift_ptr + col, mask=n_ok, other=0.0)
        u = xv * sc[None, :] + sf[None, :]
        gu = tl.where(mask & relu_passes(u), acc, 0.0)
        if NEED_DX:
            tl.store(dx_ptr + x_off, (gu * sc[None, :]).to(dx_ptr.dtype.element_ty), mask=mask)
        if NEED_PSUM:
            tl.store(psum_ptr + tile * CIN + col, tl.sum(gu * xv, axis=0), mask=n_ok)
            tl.store(psum_ptr + (NT + tile) * CIN + col, tl.sum(gu, axis=0), mask=n_ok)
    else:
        tl.store(dx_ptr + x_off, acc.to(dx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- wgrad


@triton.jit
def conv_wgrad_kernel(
    dy_ptr, y_ptr, x_ptr, part_ptr, dmean_ptr, dvar_ptr, mu_ptr, inv_m, scale_ptr, shift_ptr,
    M, H, W, CIN, HO, WO, COUT, CIN_G, COUT_G, CIN_R, COUT_R, M_PER_SPLIT,
    SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_PRO: tl.constexpr, STATS: tl.constexpr, RELU: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    g = tl.program_id(2)
    n_co = tl.cdiv(COUT_G, BLOCK_CO)
    n_ci = tl.cdiv(CIN_G, BLOCK_CI)
    pid_co = pid % n_co
    r = pid // n_co
    pid_ci = r % n_ci
    tap = r // n_ci
    kh = tap // KW
    kw = tap - kh * KW

    offs_ci = pid_ci * BLOCK_CI + tl.arange(0, BLOCK_CI)
    offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    ci_ok = offs_ci < CIN_G
    co_ok = offs_co < COUT_G
    ci = g * CIN_G + offs_ci
    co = g * COUT_G + offs_co
    ga, gb, mu = _load_g_coeffs(dmean_ptr, dvar_ptr, mu_ptr, inv_m, co, co_ok, STATS)
    if HAS_PRO:
        sc = tl.load(scale_ptr + ci, mask=ci_ok, other=0.0)
        sf = tl.load(shift_ptr + ci, mask=ci_ok, other=0.0)

    acc = tl.zeros((BLOCK_CI, BLOCK_CO), dtype=tl.float32)
    m_begin = split * M_PER_SPLIT
    m_end = tl.minimum(M, m_begin + M_PER_SPLIT)
    for m0 in range(m_begin, m_end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < m_end
        ow = offs_m % WO
        t = offs_m // WO
        oh = t % HO
        nb = t // HO
        ih = oh * SH - PH + kh * DH
        iw = ow * SW - PW + kw * DW
        row_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a_mask = row_ok[:, None] & ci_ok[None, :]
        a = tl.load(x_ptr + (((nb * H + ih) * W + iw) * CIN)[:, None] + ci[None, :], mask=a_mask, other=0.0)
        if HAS_PRO:
            a = bn_relu(a, sc, sf, a_mask)
        g_mask = m_ok[:, None] & co_ok[None, :]
        gt = _load_g(dy_ptr, y_ptr, (offs_m * COUT)[:, None] + co[None, :], g_mask, ga, gb, mu, STATS, RELU)
        acc = dot(tl.trans(a), gt.to(x_ptr.dtype.element_ty), acc, DOT_PRECISION)

    # partial[split, tap, ci_local, co]: [S, KH*KW, CIN_R, COUT]; of packed groups only
    # the block diagonal exists (the rest of acc mixes one group's input with another's output).
    p_off = ((split * KH * KW + tap) * CIN_R + offs_ci % CIN_R)[:, None] * COUT + co[None, :]
    same = (offs_ci // CIN_R)[:, None] == (offs_co // COUT_R)[None, :]
    tl.store(part_ptr + p_off, acc, mask=ci_ok[:, None] & co_ok[None, :] & same)


@triton.jit
def wgrad_reduce_kernel(
    part_ptr, dw_ptr, S, KHW, CIN_G, COUT,
    BLOCK: tl.constexpr,
):
    """dw[co, ci, tap] = sum_s part[s, tap, ci, co], s in increasing order; cast to dw's dtype."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    E = KHW * CIN_G * COUT
    ok = offs < E
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(0, S):
        acc += tl.load(part_ptr + s * E + offs, mask=ok, other=0.0)
    co = offs % COUT
    t = offs // COUT
    ci = t % CIN_G
    tap = t // CIN_G
    tl.store(dw_ptr + (co * CIN_G + ci) * KHW + tap, acc.to(dw_ptr.dtype.element_ty), mask=ok)


# ----------------------------------------------------------------------------- ordered sums of partials


@triton.jit
def sum_partials_kernel(
    p_ptr, out0_ptr, out1_ptr, out2_ptr, T, C,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out_s[c] = sum over t of p[s, t, c] ([S, T, C] dense, S <= 3), BLOCK_T rows at a time in
    order; each s has its own output vector (separate tensors, so no result aliases another)."""
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    s = tl.program_id(1)
    c_ok = offs_c < C
    acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    base = p_ptr + s * T * C
    for t0 in range(0, T, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        mask = (offs_t < T)[:, None] & c_ok[None, :]
        v = tl.load(base + offs_t[:, None] * C + offs_c[None, :], mask=mask, other=0.0)
        acc += tl.sum(v, axis=0)
    tl.store(out0_ptr + offs_c, acc, mask=c_ok & (s == 0))
    tl.store(out1_ptr + offs_c, acc, mask=c_ok & (s == 1))
    tl.store(out2_ptr + offs_c, acc, mask=c_ok & (s == 2))


@triton.jit
def sum_partials_chunks_kernel(
    p_ptr, q_ptr, T, C, NCH, ROWS,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """q[s, j, c] = sum of p[s, t, c] over t in [j*ROWS, (j+1)*ROWS) ∩ [0, T), BLOCK_T rows at a
    time in order (p: [S, T, C], q: [S, NCH, C], dense; ROWS a multiple of BLOCK_T)."""
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    s = tl.program_id(1)
    j = tl.program_id(2)
    c_ok = offs_c < C
    acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    base = p_ptr + s * T * C
    t_end = tl.minimum(j * ROWS + ROWS, T)
    for t0 in range(j * ROWS, t_end, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        mask = (offs_t < t_end)[:, None] & c_ok[None, :]
        v = tl.load(base + offs_t[:, None] * C + offs_c[None, :], mask=mask, other=0.0)
        acc += tl.sum(v, axis=0)
    tl.store(q_ptr + (s * NCH + j) * C + offs_c, acc, mask=c_ok)


# ----------------------------------------------------------------------------- configurations

# dgrad: (BLOCK_M, BLOCK_N (input channels), BLOCK_K (output channels), num_warps, num_stages)
# The last two take 32 output channels a step: on sm_90 (triton 3.6) they compile to
# 166 and 172 registers without spills, where every 64-wide candidate sits at the
# 255-register cap and some spill (bench/kernel_resources.py, bench/RESULTS.md).
DGRAD_CONFIGS = (
    (128, 64, 64, 4, 4),
    (128, 128, 64, 8, 3),
    (64, 128, 64, 4, 4),
    (64, 64, 64, 4, 4),
    (128, 256, 64, 8, 3),
    (128, 64, 32, 8, 4),
    (64, 64, 32, 4, 4),
)
# wgrad: (BLOCK_M (rows reduced), BLOCK_CI, BLOCK_CO, num_warps, num_stages)
WGRAD_CONFIGS = (
    (64, 128, 128, 8, 3),
    (64, 64, 128, 4, 3),
    (64, 128, 64, 4, 3),
    (128, 64, 64, 4, 3),
    (32, 64, 64, 4, 4),
)
INTERPRET_DGRAD_CONFIG = (32, 16, 16, 1, 1)
INTERPRET_WGRAD_CONFIG = (32, 16, 16, 1, 1)


def dgrad_configs(cin_g: int, cout_g: int, elem_size: int) -> list[tuple[int, int, int, int, int]]:
    if interpreting():
        return [INTERPRET_DGRAD_CONFIG]
    first = DGRAD_CONFIGS[1] if cin_g >= 128 else DGRAD_CONFIGS[0]
    return clamp_configs(first, DGRAD_CONFIGS, cin_g, cout_g, elem_size, fp32_slot=2)  # BLOCK_N, BLOCK_K


def wgrad_configs(cin_g: int, cout_g: int, elem_size: int) -> list[tuple[int, int, int, int, int]]:
    if interpreting():
        return [INTERPRET_WGRAD_CONFIG]
    first = WGRAD_CONFIGS[0] if min(cin_g, cout_g) >= 128 else WGRAD_CONFIGS[1]
    return clamp_configs(first, WGRAD_CONFIGS, cin_g, cout_g, elem_size, fp32_slot=0)  # BLOCK_CI, BLOCK_CO; fp32: BLOCK_M


def wgrad_splits(m: int, tiles: int, block_m: int, sms: int = 132) -> tuple[int, int]:
    """(splits, rows per split) so that tiles*splits programs fill the GPU at least twice over
    (the blocks a split takes are rounded down, so the splits round up), each reducing at
    least 4 blocks of rows (two blocks under the interpreter, so tiny shapes exercise both
    the in-program loop and the split reduction)."""
    blocks = triton.cdiv(m, block_m)
    if interpreting():
        per = 2
    else:
        want = max(1, triton.cdiv(2 * sms, max(tiles, 1)))
        per = max(4, blocks // want)
    splits = triton.cdiv(blocks, per)
    return splits, per * block_m


# ----------------------------------------------------------------------------- AOT compile checks


_SHAPE_ARGS = ("M", "H", "W", "CIN", "HO", "WO", "COUT", "CIN_G", "COUT_G")
_CONV_GEOM = ("SH", "SW", "PH", "PW", "DH", "DW")


def dgrad_signature(dtype: str) -> dict[str, str]:
    p = f"*{dtype}"
    sig = {"dy_ptr": p, "y_ptr": p, "w_ptr": p, "x_ptr": p, "dx_ptr": p, "dmean_ptr": "*fp32",
           "dvar_ptr": "*fp32", "mu_ptr": "*fp32", "inv_m": "fp32", "scale_ptr": "*fp32", "shift_ptr": "*fp32", "psum_ptr": "*fp32"}
    for name in _SHAPE_ARGS + ("CIN_R", "COUT_R", "NT", "NB", "QH", "QW") + _CONV_GEOM:
        sig[name] = "i32"
    for name in ("KH", "KW", "HAS_PRO", "STATS", "RELU", "NEED_DX", "NEED_PSUM", "EVEN_K", "DOT_PRECISION",
                 "BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"):
        sig[name] = "constexpr"
    return sig


def wgrad_signature(dtype: str) -> dict[str, str]:
    p = f"*{dtype}"
    sig = {"dy_ptr": p, "y_ptr": p, "x_ptr": p, "part_ptr": "*fp32", "dmean_ptr": "*fp32",
           "dvar_ptr": "*fp32", "mu_ptr": "*fp32", "inv_m": "fp32", "scale_ptr": "*fp32", "shift_ptr": "*fp32"}
    for name in _SHAPE_ARGS + ("CIN_R", "COUT_R", "M_PER_SPLIT") + _CONV_GEOM:
        sig[name] = "i32"
    for name in ("KH", "KW", "HAS_PRO", "STATS", "RELU", "DOT_PRECISION", "BLOCK_M", "BLOCK_CI", "BLOCK_CO"):
        sig[name] = "constexpr"
    return sig


_DIV_DGRAD = ("dy_ptr", "y_ptr", "w_ptr", "x_ptr", "dx_ptr", "dmean_ptr", "dvar_ptr", "mu_ptr", "scale_ptr",
              "shift_ptr", "psum_ptr", "CIN", "COUT", "CIN_G", "COUT_G")
_DIV_WGRAD = ("dy_ptr", "y_ptr", "x_ptr", "part_ptr", "dmean_ptr", "dvar_ptr", "mu_ptr", "scale_ptr", "shift_ptr",
              "CIN", "COUT", "CIN_G", "COUT_G")


def specializations():
    """The constexpr combinations the backward launchers produce, one representative config each.

    dgrad and wgrad: every (HAS_PRO, STATS, RELU) combination in bf16, fp16 and fp32
    (fp32 with TF32 and IEEE), dgrad with each epilogue output set (dx only,
    dscale/dshift only, both), kernel sizes 1/3/7 with aligned and ragged channels,
    and every autotuning candidate in bf16; plus the output gradient and the reduction kernels.
    """
    out = []
    seen = set()

    def add_dgrad(dtype, k, even, prec, pro, stats, relu, need_dx=True, need_psum=True, cfg=None):
        cfg = cfg or ((128, 64, 32, 4, 3) if dtype == "fp32" else (128, 64, 64, 4, 4))
        if not pro:
            need_dx, need_psum = True, False
        key = ("dgrad", dtype, k, even, prec, pro, stats, relu, need_dx, need_psum, cfg)
        if key in seen:
            return
        seen.add(key)
        bm, bn, bk, warps, stages = cfg
        consts = dict(KH=k, KW=k, HAS_PRO=pro, STATS=stats, RELU=relu, NEED_DX=need_dx, NEED_PSUM=need_psum,
                      EVEN_K=even, DOT_PRECISION=prec, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=GROUP_M)
        name = (f"dgrad_{dtype}_{k}x{k}_{'even' if even else 'ragged'}_{prec}_"
                + "".join(f for f, b in zip("psrxd", (pro, stats, relu, need_dx, need_psum)) if b)
                + f"_{bm}x{bn}x{bk}w{warps}s{stages}")
        out.append((name, conv_dgrad_kernel, dgrad_signature(dtype), consts, {"num_warps": warps, "num_stages": stages},
                    divisibility_attrs(conv_dgrad_kernel, _DIV_DGRAD if even else ())))

    def add_wgrad(dtype, k, even, prec, pro, stats, relu, cfg=None):
        cfg = cfg or ((32, 64, 64, 4, 3) if dtype == "fp32" else (64, 64, 128, 4, 3))
        key = ("wgrad", dtype, k, even, prec, pro, stats, relu, cfg)
        if key in seen:
            return
        seen.add(key)
        bm, bci, bco, warps, stages = cfg
        consts = dict(KH=k, KW=k, HAS_PRO=pro, STATS=stats, RELU=relu, DOT_PRECISION=prec, BLOCK_M=bm,
                      BLOCK_CI=bci, BLOCK_CO=bco)
        name = (f"wgrad_{dtype}_{k}x{k}_{'even' if even else 'ragged'}_{prec}_"
                + "".join(f for f, b in zip("psr", (pro, stats, relu)) if b)
                + f"_{bm}x{bci}x{bco}w{warps}s{stages}")
        out.append((name, conv_wgrad_kernel, wgrad_signature(dtype), consts, {"num_warps": warps, "num_stages": stages},
                    divisibility_attrs(conv_wgrad_kernel, _DIV_WGRAD if even else ())))

    combos = [(bool(i & 1), bool(i & 2), bool(i & 4)) for i in range(8)]
    for dtype in ("bf16", "fp16", "fp32"):
        for pro, stats, relu in combos:
            add_dgrad(dtype, 3, True, "tf32", pro, stats, relu)
            add_wgrad(dtype, 3, True, "tf32", pro, stats, relu)
        for need_dx, need_psum in ((True, False), (False, True)):
            add_dgrad(dtype, 1, True, "tf32", True, True, False, need_dx, need_psum)
        for k in (1, 3, 7):
            for even in (True, False):
                add_dgrad(dtype, k, even, "tf32", True, True, False)
                add_wgrad(dtype, k, even, "tf32", True, True, False)
    add_dgrad("fp32", 3, True, "ieee", True, True, True)
    add_wgrad("fp32", 3, True, "ieee", True, True, True)
    for cfg in DGRAD_CONFIGS:
        add_dgrad("bf16", 3, True, "tf32", True, True, False, cfg=cfg)
    for cfg in WGRAD_CONFIGS:
        add_wgrad("bf16", 3, True, "tf32", True, True, False, cfg=cfg)

    for dtype in ("bf16", "fp16", "fp32"):
        p = f"*{dtype}"
        for stats, relu, need_res, need_sum in ((True, False, False, True), (False, True, True, True),
                                                (False, False, True, False), (True, True, True, True)):
            out.append((f"conv_output_grad_{dtype}_{int(stats)}{int(relu)}{int(need_res)}{int(need_sum)}",
                        conv_output_grad_kernel,
                        {"dy_ptr": p, "y_ptr": p, "dmean_ptr": "*fp32", "dvar_ptr": "*fp32", "mu_ptr": "*fp32", "inv_m": "fp32",
                         "dres_ptr": p, "psum_ptr": "*fp32", "M": "i32", "C": "i32", "STATS": "constexpr",
                         "RELU": "constexpr", "NEED_RES": "constexpr", "NEED_SUM": "constexpr",
                         "BLOCK_M": "constexpr", "BLOCK_C": "constexpr"},
                        {"STATS": stats, "RELU": relu, "NEED_RES": need_res, "NEED_SUM": need_sum,
                         "BLOCK_M": 64, "BLOCK_C": 64}, {"num_warps": 4}, {}))
    out.append(("sum_partials", sum_partials_kernel,
                {"p_ptr": "*fp32", "out0_ptr": "*fp32", "out1_ptr": "*fp32", "out2_ptr": "*fp32", "T": "i32",
                 "C": "i32", "BLOCK_T": "constexpr",
                 "BLOCK_C": "constexpr"}, {"BLOCK_T": 64, "BLOCK_C": 32}, {"num_warps": 4}, {}))
    out.append(("sum_partials_chunks", sum_partials_chunks_kernel,
                {"p_ptr": "*fp32", "q_ptr": "*fp32", "T": "i32", "C": "i32", "NCH": "i32", "ROWS": "i32",
                 "BLOCK_T": "constexpr", "BLOCK_C": "constexpr"}, {"BLOCK_T": 16, "BLOCK_C": 64}, {"num_warps": 4},
                {}))
    for dtype in ("bf16", "fp16", "fp32"):
        out.append((f"wgrad_reduce_{dtype}", wgrad_reduce_kernel,
                    {"part_ptr": "*fp32", "dw_ptr": f"*{dtype}", "S": "i32", "KHW": "i32", "CIN_G": "i32",
                     "COUT": "i32", "BLOCK": "constexpr"}, {"BLOCK": 512}, {"num_warps": 4}, {}))
    return out
