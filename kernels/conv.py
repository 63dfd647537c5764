"""Triton kernels of the ``triton`` backend: fused NHWC implicit-GEMM convolution.

Kernels never allocate and never validate: the launcher in
``fused_resnet/backends/triton.py`` does both. Every tensor a kernel sees is a
dense buffer in the layout documented on the kernel.

conv_fwd_kernel
    y[m, co] = epilogue( sum_{kh,kw,ci} prologue(x)[n, ih, iw, g*Cg + ci] * w[kh, kw, ci, co] )
    as a GEMM with rows m = (n, oh, ow) (M = N*Ho*Wo), columns co (one group's
    Cout/groups channels, the group on grid axis 1) and a reduction dimension
    walked tap by tap, BLOCK_K input channels of one filter tap at a time (the
    A tile is then a coalesced NHWC load along channels). One flattened K loop
    over (tap, channel block) keeps the software pipeline busy even when a tap
    has a single channel block.
      Groups of few channels (ResNeXt's 4 or 8) are packed: one program takes
      CIN_G = GP*CIN_R input and COUT_G = GP*COUT_R output channels of GP
      consecutive groups (CIN_R, COUT_R: one real group's) with the weight tile
      masked to its block diagonal, so a 16-wide tensor-core tile holds GP groups
      instead of one group padded with zeros. GP = 1: CIN_G = CIN_R.
      prologue (HAS_PRO): a = relu(x*scale[ci] + shift[ci]), rounded to x's dtype,
          then masked: padded taps and ragged channels contribute exactly 0.
      epilogue: + bias[co] (HAS_BIAS), + residual[m, co] (HAS_RES), relu (RELU),
          cast to y's dtype, NHWC store; STATS: per-tile, per-channel mean and
          M2 (sum of squared deviations from the tile mean) of the *stored*
          (rounded) values, into partials [num_m_tiles, Cout] (no atomics:
          deterministic), merged by stats_merge_kernel.
    x: [N, H, W, Cin] dense; w: [KH, KW, CIN_R, Cout] dense; y, residual:
    [N, Ho, Wo, Cout] dense; bias, scale, shift: fp32 vectors.
      shortcut (``conv_shortcut``; sc_x: [N, H_SC, W_SC, CSC] dense, read at the
      pixel (n, oh*SC_STRIDE, ow*SC_STRIDE) of each output row; sc prologue SC_PRO:
      relu(sc_x*sc_scale + sc_shift) rounded to the activation dtype, as above):
        SC_MODE=1, projection: after the main K loop a second K loop accumulates the
          strided 1x1 GEMM sc_x @ sc_w (sc_w: [CSC, Cout] dense) into the same fp32
          accumulator (the concatenated-K GEMM [a | sc_x] @ [w; sc_w]);
        SC_MODE=2, option A: the epilogue adds sc_x[..., co - SC_FRONT] where
          0 <= co - SC_FRONT < CSC, else 0 (masked loads), before the bias.
      Either way the shortcut never round-trips through memory.

stats_partial_kernel / stats_merge_kernel
    per-channel mean and biased variance of an [M, C] row-major matrix (an NHWC
    activation): per-tile (mean, M2), then Chan's parallel merge, in tile order.

batch_stats_bwd_kernel
    the gradient of batch_stats: dx = (dmean + 2 dvar (x - mean)) / M, one pass.

bn_finalize_kernel / bn_update_running_kernel
    a batch-statistics BatchNorm's per-channel vectors in one launch each:
    (scale, shift, invstd) from (mean, var, weight, bias), and the running
    statistics and batch count updated as nn.BatchNorm2d updates them.

bn_act_kernel
    out = [relu](y*scale[c] + shift[c] + residual*res_scale[c] + res_shift[c])
    on an [R, L] view of a dense NHWC (channel = column) or NCHW (channel = row % C)
    tensor.

Offsets are int32: the launcher refuses tensors of 2**31 elements or more.
"""
from __future__ import annotations

import triton
import triton.language as tl

try:
    from . import _common
except ImportError:  # loaded by file path from a plain checkout (fused_resnet/backends/triton.py)
    from fused_resnet.backends.triton import _load_kernel_module

    _common = _load_kernel_module("_common")
compile_specialization, interpreting = _common.compile_specialization, _common.interpreting
bn_relu, dot, relu = _common.bn_relu, _common.dot, _common.relu


# ----------------------------------------------------------------------------- conv


@triton.jit
def conv_fwd_kernel(
    x_ptr, w_ptr, y_ptr, bias_ptr, scale_ptr, shift_ptr, res_ptr, pmean_ptr, pm2_ptr,
    M, H, W, CIN, HO, WO, COUT, CIN_G, COUT_G, CIN_R, COUT_R,
    SH, SW, PH, PW, DH, DW,
    sc_x_ptr, sc_w_ptr, sc_scale_ptr, sc_shift_ptr, H_SC, W_SC, CSC, SC_STRIDE, SC_FRONT,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_PRO: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
    RELU: tl.constexpr, STATS: tl.constexpr, EVEN_K: tl.constexpr,
    SC_MODE: tl.constexpr, SC_PRO: tl.constexpr, SC_EVEN_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    g = tl.program_id(1)
    # Grouped ordering of the (m, n) tiles so neighbouring programs share A rows in L2.
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(COUT_G, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # channel within the group
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < COUT_G
    col = g * COUT_G + offs_n  # output channel

    # Output pixel -> top-left input pixel of its receptive field.
    ow = offs_m % WO
    t = offs_m // WO
    oh = t % HO
    nb = t // HO
    ih0 = oh * SH - PH
    iw0 = ow * SW - PW
    x_row = ((nb * H + ih0) * W + iw0) * CIN + g * CIN_G  # may point outside; masked

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    KC = tl.cdiv(CIN_G, BLOCK_K)
    for kk in range(0, KH * KW * KC):
        tap = kk // KC
        c0 = (kk - tap * KC) * BLOCK_K
        kh = tap // KW
        kw = tap - kh * KW
        ih = ih0 + kh * DH
        iw = iw0 + kw * DW
        row_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        cs = c0 + offs_k
        if EVEN_K:
            a_mask = tl.broadcast_to(row_ok[:, None], (BLOCK_M, BLOCK_K))
            b_mask = tl.broadcast_to(n_ok[None, :], (BLOCK_K, BLOCK_N))
        else:
            k_ok = cs < CIN_G
            a_mask = row_ok[:, None] & k_ok[None, :]
            # Packed groups: only the block diagonal (input and output of one group).
            same = (cs // CIN_R)[:, None] == (offs_n // COUT_R)[None, :]
            b_mask = k_ok[:, None] & n_ok[None, :] & same
        a_ptrs = x_ptr + (x_row + (kh * DH * W + kw * DW) * CIN)[:, None] + cs[None, :]
        a = tl.load(a_ptrs, mask=a_mask, other=0.0)
        if HAS_PRO:
            if EVEN_K:
                sc = tl.load(scale_ptr + g * CIN_G + cs)
                sf = tl.load(shift_ptr + g * CIN_G + cs)
            else:
                sc = tl.load(scale_ptr + g * CIN_G + cs, mask=cs < CIN_G, other=0.0)
                sf = tl.load(shift_ptr + g * CIN_G + cs, mask=cs < CIN_G, other=0.0)
            a = bn_relu(a, sc, sf, a_mask)  # zero padding (and ragged channels) after the transform
        b_ptrs = w_ptr + ((tap * CIN_R + cs % CIN_R) * COUT)[:, None] + col[None, :]
        b = tl.load(b_ptrs, mask=b_mask, other=0.0)
        acc = dot(a, b, acc, DOT_PRECISION)

    if SC_MODE != 0:
        # The shortcut's input pixel of each output row: (n, oh*SC_STRIDE, ow*SC_STRIDE).
        sc_row = ((nb * H_SC + oh * SC_STRIDE) * W_SC + ow * SC_STRIDE) * CSC
    if SC_MODE == 1:
        # Projection: a second K loop, the strided 1x1 GEMM over sc_x (its own prologue
        # on load), into the same accumulator; its result never touches memory.
        for kk in range(0, tl.cdiv(CSC, BLOCK_K)):
            cs = kk * BLOCK_K + offs_k
            if SC_EVEN_K:
                a_mask = tl.broadcast_to(m_ok[:, None], (BLOCK_M, BLOCK_K))
                b_mask = tl.broadcast_to(n_ok[None, :], (BLOCK_K, BLOCK_N))
            else:
                k_ok = cs < CSC
                a_mask = m_ok[:, None] & k_ok[None, :]
                b_mask = k_ok[:, None] & n_ok[None, :]
            a = tl.load(sc_x_ptr + sc_row[:, None] + cs[None, :], mask=a_mask, other=0.0)
            if SC_PRO:
                if SC_EVEN_K:
                    sc = tl.load(sc_scale_ptr + cs)
                    sf = tl.load(sc_shift_ptr + cs)
                else:
                    sc = tl.load(sc_scale_ptr + cs, mask=cs < CSC, other=0.0)
                    sf = tl.load(sc_shift_ptr + cs, mask=cs < CSC, other=0.0)
                a = bn_relu(a, sc, sf, a_mask)
            b = tl.load(sc_w_ptr + (cs * COUT)[:, None] + col[None, :], mask=b_mask, other=0.0)
            acc = dot(a, b, acc, DOT_PRECISION)

    # ---- epilogue
    mask = m_ok[:, None] & n_ok[None, :]
    y_off = offs_m[:, None] * COUT + col[None, :]
    if SC_MODE == 2:
        # Option A: sc_x subsampled, channels zero-padded (SC_FRONT in front); the padded
        # channels are masked loads, exactly 0 (the prologue is not applied to them).
        cc = col - SC_FRONT
        c_ok = n_ok & (cc >= 0) & (cc < CSC)
        s_mask = m_ok[:, None] & c_ok[None, :]
        s = tl.load(sc_x_ptr + sc_row[:, None] + cc[None, :], mask=s_mask, other=0.0)
        if SC_PRO:
            sc = tl.load(sc_scale_ptr + cc, mask=c_ok, other=0.0)
            sf = tl.load(sc_shift_ptr + cc, mask=c_ok, other=0.0)
            s = bn_relu(s, sc, sf, s_mask)
        acc += s.to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + col, mask=n_ok, other=0.0)
        acc += bias[None, :]
    if HAS_RES:
        r = tl.load(res_ptr + y_off, mask=mask, other=0.0)
        acc += r.to(tl.float32)
    if RELU:
        acc = relu(acc)
    y = acc.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + y_off, y, mask=mask)
    if STATS:
        # Statistics of the stored (rounded) values: per-tile mean and M2.
        yf = tl.where(mask, y.to(tl.float32), 0.0)
        cnt = tl.minimum(M - pid_m * BLOCK_M, BLOCK_M).to(tl.float32)
        tmean = tl.sum(yf, axis=0) / cnt
        d = tl.where(mask, yf - tmean[None, :], 0.0)
        tm2 = tl.sum(d * d, axis=0)
        tl.store(pmean_ptr + pid_m * COUT + col, tmean, mask=n_ok)
        tl.store(pm2_ptr + pid_m * COUT + col, tm2, mask=n_ok)


# ----------------------------------------------------------------------------- statistics


@triton.jit
def stats_partial_kernel(
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
def stats_merge_kernel(
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
def bn_finalize_kernel(
    mean_ptr, var_ptr, weight_ptr, bias_ptr, scale_ptr, shift_ptr, invstd_ptr, C, eps,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """invstd = 1/sqrt(var + eps), scale = weight*invstd (or invstd), shift = bias - mean*scale
    (or -mean*scale), fp32 vectors of C channels; weight and bias in their own dtype."""
    offs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = offs < C
    mean = tl.load(mean_ptr + offs, mask=ok, other=0.0)
    var = tl.load(var_ptr + offs, mask=ok, other=0.0)
    invstd = tl.math.div_rn(1.0, tl.sqrt_rn(var + eps))
    scale = invstd
    if HAS_WEIGHT:
        scale = invstd * tl.load(weight_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    shift = -mean * scale
    if HAS_BIAS:
        shift = shift + tl.load(bias_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(invstd_ptr + offs, invstd, mask=ok)
    tl.store(scale_ptr + offs, scale, mask=ok)
    tl.store(shift_ptr + offs, shift, mask=ok)


@triton.jit
def bn_update_running_kernel(
    mean_ptr, var_ptr, rmean_ptr, rvar_ptr, nbt_ptr, C, unbias, momentum,
    MOMENTUM_MODE: tl.constexpr, HAS_NBT: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """nn.BatchNorm2d's running-statistics update, in one program (grid (1,)):
    num_batches_tracked += 1 (HAS_NBT); f = momentum (MOMENTUM_MODE 0), 1/num_batches_tracked
    after the increment (1: a cumulative average), or 0 (2: momentum None and no count);
    running_mean = running_mean*(1-f) + mean*f, running_var likewise with the unbiased
    variance var*unbias (unbias = M/(M-1)). One program reads and writes the count, so
    there is no race on it; the loop walks the channels BLOCK_C at a time."""
    if HAS_NBT:
        nbt = tl.load(nbt_ptr) + 1
    if MOMENTUM_MODE == 0:
        f = momentum
    elif MOMENTUM_MODE == 1:
        f = 1.0 / nbt.to(tl.float32)
    else:
        f = 0.0
    for c0 in range(0, C, BLOCK_C):
        offs = c0 + tl.arange(0, BLOCK_C)
        ok = offs < C
        rm = tl.load(rmean_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        rv = tl.load(rvar_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + offs, mask=ok, other=0.0)
        var = tl.load(var_ptr + offs, mask=ok, other=0.0) * unbias
        tl.store(rmean_ptr + offs, (rm * (1.0 - f) + mean * f).to(rmean_ptr.dtype.element_ty), mask=ok)
        tl.store(rvar_ptr + offs, (rv * (1.0 - f) + var * f).to(rvar_ptr.dtype.element_ty), mask=ok)
    if HAS_NBT:
        tl.store(nbt_ptr, nbt)


@triton.jit
def _channel_tile(R, L, C, CHANNEL_ON_COLS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    """This program's tile of an [R, L] row-major view of an NHWC (channel = column) or NCHW
    (channel = row % C) tensor: element offsets, their mask, and the channel of each column
    (NHWC) or row (NCHW) with its mask."""
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    r_ok = offs_r < R
    l_ok = offs_l < L
    if CHANNEL_ON_COLS:
        ch = offs_l
        ch_ok = l_ok
    else:
        ch = offs_r % C
        ch_ok = r_ok
    return offs_r[:, None] * L + offs_l[None, :], r_ok[:, None] & l_ok[None, :], ch, ch_ok


@triton.jit
def _per_channel(v, CHANNEL_ON_COLS: tl.constexpr):
    """A vector over _channel_tile's channels, broadcastable against its tile."""
    if CHANNEL_ON_COLS:
        return v[None, :]
    else:
        return v[:, None]


@triton.jit
def batch_stats_bwd_kernel(
    x_ptr, dmean_ptr, dvar_ptr, mean_ptr, dx_ptr, R, L, C, M,
    CHANNEL_ON_COLS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """dx = (dmean[c] + 2 dvar[c] (x - mean[c])) / M on an [R, L] view (layouts as bn_act_kernel)."""
    off, mask, ch, ch_ok = _channel_tile(R, L, C, CHANNEL_ON_COLS, BLOCK_R, BLOCK_L)
    x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
    dm = _per_channel(tl.load(dmean_ptr + ch, mask=ch_ok, other=0.0), CHANNEL_ON_COLS)
    dv = _per_channel(tl.load(dvar_ptr + ch, mask=ch_ok, other=0.0), CHANNEL_ON_COLS)
    mu = _per_channel(tl.load(mean_ptr + ch, mask=ch_ok, other=0.0), CHANNEL_ON_COLS)
    dx = (dm + 2.0 * dv * (x - mu)) / M
    tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- BN-apply


@triton.jit
def bn_act_kernel(
    y_ptr, scale_ptr, shift_ptr, res_ptr, rscale_ptr, rshift_ptr, out_ptr, R, L, C,
    CHANNEL_ON_COLS: tl.constexpr, HAS_RES: tl.constexpr, HAS_RSCALE: tl.constexpr,
    RELU: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """out = [relu](y*scale + shift + r) on an [R, L] row-major view.

    NHWC: R = N*H*W, L = C, channel = column. NCHW: R = N*C, L = H*W, channel = row % C.
    r = residual*res_scale + res_shift (HAS_RSCALE) or residual (HAS_RES).
    """
    off, mask, ch, ch_ok = _channel_tile(R, L, C, CHANNEL_ON_COLS, BLOCK_R, BLOCK_L)
    v = tl.load(y_ptr + off, mask=mask, other=0.0).to(tl.float32)
    sc = _per_channel(tl.load(scale_ptr + ch, mask=ch_ok, other=0.0), CHANNEL_ON_COLS)
    sf = _per_channel(tl.load(shift_ptr + ch, mask=ch_ok, other=0.0), CHANNEL_ON_COLS)
    z = v * sc + sf
    if HAS_RES:
        r = tl.load(res_ptr + off, mask=mask, other=0.0).to(tl.float32)
        if HAS_RSCALE:
            rs = _per_channel(tl.load(rscale_ptr + ch, mask=ch_ok, other=0.0), CHANNEL_ON_COLS)
            rt = _per_channel(tl.load(rshift_ptr + ch, mask=ch_ok, other=0.0), CHANNEL_ON_COLS)
            r = r * rs + rt
        z += r
    if RELU:
        z = relu(z)
    tl.store(out_ptr + off, z.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- configurations

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) tried by the launcher's
# autotuner on a GPU; clamped to the problem's channel counts (and, for fp32,
# to what fits in shared memory) before timing.
CONV_CONFIGS = (
    (128, 64, 64, 4, 4),
    (128, 128, 64, 8, 3),
    (64, 128, 64, 4, 4),
    (128, 256, 64, 8, 3),
    (64, 64, 64, 4, 4),
    (128, 128, 32, 4, 4),
)
# The single configuration used under TRITON_INTERPRET=1 (tiny test shapes).
INTERPRET_CONV_CONFIG = (32, 16, 16, 1, 1)
GROUP_M = 8


def conv_configs(cin_g: int, cout_g: int, elem_size: int) -> list[tuple[int, int, int, int, int]]:
    """The candidate configurations for one problem: blocks clamped to the channel counts."""
    if interpreting():
        return [INTERPRET_CONV_CONFIG]
    # Heuristic first: the candidate used untimed (autotuning off, CUDA graph capture).
    first = CONV_CONFIGS[1] if cout_g >= 128 else CONV_CONFIGS[0]
    return _common.clamp_configs(first, CONV_CONFIGS, cout_g, cin_g, elem_size, fp32_slot=2)  # BLOCK_N, BLOCK_K


# ----------------------------------------------------------------------------- AOT compile checks

_TL_DTYPES = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}


def conv_signature(dtype: str) -> dict[str, str]:
    """The ASTSource signature of conv_fwd_kernel for activations of ``dtype``."""
    p = f"*{_TL_DTYPES[dtype]}"
    sig = {
        "x_ptr": p, "w_ptr": p, "y_ptr": p, "bias_ptr": "*fp32", "scale_ptr": "*fp32",
        "shift_ptr": "*fp32", "res_ptr": p, "pmean_ptr": "*fp32", "pm2_ptr": "*fp32",
    }
    for name in ("M", "H", "W", "CIN", "HO", "WO", "COUT", "CIN_G", "COUT_G", "CIN_R", "COUT_R", "SH", "SW", "PH",
                 "PW", "DH", "DW"):
        sig[name] = "i32"
    sig.update(sc_x_ptr=p, sc_w_ptr=p, sc_scale_ptr="*fp32", sc_shift_ptr="*fp32")
    for name in ("H_SC", "W_SC", "CSC", "SC_STRIDE", "SC_FRONT"):
        sig[name] = "i32"
    for name in ("KH", "KW", "HAS_PRO", "HAS_BIAS", "HAS_RES", "RELU", "STATS", "EVEN_K", "SC_MODE", "SC_PRO",
                 "SC_EVEN_K", "DOT_PRECISION", "BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"):
        sig[name] = "constexpr"
    return sig


_DIVISIBLE_CONV_ARGS = ("x_ptr", "w_ptr", "y_ptr", "bias_ptr", "scale_ptr", "shift_ptr", "res_ptr", "pmean_ptr",
                        "pm2_ptr", "CIN", "COUT", "CIN_G", "COUT_G")
_DIVISIBLE_SC_ARGS = ("sc_x_ptr", "sc_w_ptr", "sc_scale_ptr", "sc_shift_ptr", "CSC")


def conv_specializations():
    """The constexpr combinations the launcher can produce, one representative config each.

    Yields (name, kernel, signature, constexprs, options, attrs). bf16 (the
    production dtype) covers all 32 combinations of the prologue/epilogue flags;
    fp16 and fp32 cover all-off, all-on and each flag alone; every kernel size
    (1, 3, 7) x dtype x EVEN_K is compiled with all flags on, and fp32 with both
    TF32 and IEEE dot precision. EVEN_K specialisations carry the 16-divisibility
    a ResNet launch has (aligned pointers, channel counts), ragged ones none.
    Finally every autotuning candidate block shape compiles (bf16 and fp32).
    conv_shortcut's specialisations (SC_MODE 1 projection / 2 option A, SC_PRO
    off/on, every dtype; no residual, no statistics) follow, including EVEN_K !=
    SC_EVEN_K and the autotuning block shapes for the bf16 projection.
    """
    flags = ("HAS_PRO", "HAS_BIAS", "HAS_RES", "RELU", "STATS")
    seen = set()
    out = []

    def add(dtype, k, even_k, prec, bits, cfg=None, sc=(0, False), sc_even=None):
        cfg = cfg or ((128, 64, 32, 4, 3) if dtype == "fp32" else (128, 64, 64, 4, 4))
        sc_even = even_k if sc_even is None else sc_even
        key = (dtype, k, even_k, prec, bits, cfg, sc, sc_even)
        if key in seen:
            return
        seen.add(key)
        bm, bn, bk, warps, stages = cfg
        sc_mode, sc_pro = sc
        consts = dict(zip(flags, bits))
        consts.update(KH=k, KW=k, EVEN_K=even_k, SC_MODE=sc_mode, SC_PRO=sc_pro, SC_EVEN_K=sc_even,
                      DOT_PRECISION=prec, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=GROUP_M)
        name = f"conv_{dtype}_{k}x{k}_{'even' if even_k else 'ragged'}_{prec}_" + "".join(
            f for f, b in zip("pbrus", bits) if b) + f"_{bm}x{bn}x{bk}w{warps}s{stages}"
        if sc_mode:
            name += f"_sc{'proj' if sc_mode == 1 else 'optA'}{'_pro' if sc_pro else ''}"
            name += "" if sc_even == even_k else ("_sceven" if sc_even else "_scragged")
        divisible = (_DIVISIBLE_CONV_ARGS if even_k else ()) + (_DIVISIBLE_SC_ARGS if sc_mode and sc_even else ())
        attrs = _common.divisibility_attrs(conv_fwd_kernel, divisible)
        out.append((name, conv_fwd_kernel, conv_signature(dtype), consts,
                    {"num_warps": warps, "num_stages": stages}, attrs))

    off, on = (False,) * 5, (True,) * 5
    singles = [tuple(j == i for j in range(5)) for i in range(5)]
    for i in range(32):
        add("bf16", 3, True, "tf32", tuple(bool(i >> j & 1) for j in range(5)))
    for dtype in ("fp16", "fp32"):
        for bits in [off, on] + singles:
            add(dtype, 3, True, "tf32", bits)
    for dtype in ("bf16", "fp16", "fp32"):
        for k in (1, 3, 7):
            for even_k in (True, False):
                add(dtype, k, even_k, "tf32", on)
    add("fp32", 3, True, "ieee", on)
    add("fp32", 3, False, "ieee", off)
    for cfg in CONV_CONFIGS:  # every autotuning candidate, as clamped for 16-bit and fp32 tiles
        add("bf16", 3, True, "tf32", on, cfg)
        bm, bn, bk, warps, stages = cfg
        add("fp32", 3, True, "tf32", on, (bm, bn, min(bk, 32), warps, min(stages, 3)))
    # conv_shortcut (no residual, no statistics): projection and option A, each with the
    # sc prologue off and on, in every dtype, with the flags of the eval blocks' last conv
    # (bias + ReLU; with and without the main prologue); projection also ragged, 3x3 and
    # with each autotuning block shape (bf16).
    for dtype in ("bf16", "fp16", "fp32"):
        for sc_mode in (1, 2):
            for sc_pro in (False, True):
                for pro in (False, True):
                    add(dtype, 1, True, "tf32", (pro, True, False, True, False), sc=(sc_mode, sc_pro))
                add(dtype, 3, False, "tf32", (sc_pro, True, False, True, False), sc=(sc_mode, sc_pro))
    add("bf16", 1, True, "tf32", off, sc=(1, False))
    add("bf16", 1, True, "tf32", off, sc=(2, False))
    add("fp32", 1, True, "ieee", (False, True, False, True, False), sc=(1, True))
    add("fp32", 1, False, "ieee", (False, True, False, True, False), sc=(2, True))
    for dtype in ("bf16", "fp16", "fp32"):  # EVEN_K and SC_EVEN_K differ (e.g. Cin=64, Csc=3)
        add(dtype, 3, True, "tf32", (True, True, False, True, False), sc=(1, True), sc_even=False)
        add(dtype, 1, False, "tf32", (False, True, False, True, False), sc=(1, False), sc_even=True)
    for cfg in CONV_CONFIGS:
        add("bf16", 1, True, "tf32", (False, True, False, True, False), cfg, sc=(1, False))
    return out


def aux_specializations():
    """Specialisations of the statistics, BatchNorm-vector and bn_act kernels."""
    out = []
    for dtype in ("bf16", "fp16", "fp32"):
        p = f"*{dtype}"
        out.append((f"stats_partial_{dtype}", stats_partial_kernel,
                    {"x_ptr": p, "pmean_ptr": "*fp32", "pm2_ptr": "*fp32", "M": "i32", "C": "i32",
                     "BLOCK_M": "constexpr", "BLOCK_C": "constexpr"},
                    {"BLOCK_M": 128, "BLOCK_C": 64}, {"num_warps": 4}, {}))
        for on_cols in (True, False):
            for has_res, has_rs in ((False, False), (True, False), (True, True)):
                for relu in (False, True):
                    out.append((
                        f"bn_act_{dtype}_{'nhwc' if on_cols else 'nchw'}_{int(has_res)}{int(has_rs)}{int(relu)}",
                        bn_act_kernel,
                        {"y_ptr": p, "scale_ptr": "*fp32", "shift_ptr": "*fp32", "res_ptr": p, "rscale_ptr": "*fp32",
                         "rshift_ptr": "*fp32", "out_ptr": p, "R": "i32", "L": "i32", "C": "i32",
                         "CHANNEL_ON_COLS": "constexpr", "HAS_RES": "constexpr", "HAS_RSCALE": "constexpr",
                         "RELU": "constexpr", "BLOCK_R": "constexpr", "BLOCK_L": "constexpr"},
                        {"CHANNEL_ON_COLS": on_cols, "HAS_RES": has_res, "HAS_RSCALE": has_rs, "RELU": relu,
                         "BLOCK_R": 32, "BLOCK_L": 64},
                        {"num_warps": 4}, {}))
    for dtype in ("bf16", "fp16", "fp32"):
        for on_cols in (True, False):
            out.append((f"batch_stats_bwd_{dtype}_{'nhwc' if on_cols else 'nchw'}", batch_stats_bwd_kernel,
                        {"x_ptr": f"*{dtype}", "dmean_ptr": "*fp32", "dvar_ptr": "*fp32", "mean_ptr": "*fp32",
                         "dx_ptr": f"*{dtype}", "R": "i32", "L": "i32", "C": "i32", "M": "i32",
                         "CHANNEL_ON_COLS": "constexpr", "BLOCK_R": "constexpr", "BLOCK_L": "constexpr"},
                        {"CHANNEL_ON_COLS": on_cols, "BLOCK_R": 32, "BLOCK_L": 64}, {"num_warps": 4}, {}))
    for has_w, has_b in ((True, True), (False, False), (True, False), (False, True)):
        out.append((f"bn_finalize_{int(has_w)}{int(has_b)}", bn_finalize_kernel,
                    {"mean_ptr": "*fp32", "var_ptr": "*fp32", "weight_ptr": "*fp32", "bias_ptr": "*fp32",
                     "scale_ptr": "*fp32", "shift_ptr": "*fp32", "invstd_ptr": "*fp32", "C": "i32", "eps": "fp32",
                     "HAS_WEIGHT": "constexpr", "HAS_BIAS": "constexpr", "BLOCK_C": "constexpr"},
                    {"HAS_WEIGHT": has_w, "HAS_BIAS": has_b, "BLOCK_C": 1024}, {"num_warps": 4}, {}))
    for mode, has_nbt in ((0, True), (1, True), (0, False), (2, False)):
        for rdtype in ("fp32", "fp16", "bf16"):
            out.append((f"bn_update_running_{mode}{int(has_nbt)}_{rdtype}", bn_update_running_kernel,
                        {"mean_ptr": "*fp32", "var_ptr": "*fp32", "rmean_ptr": f"*{rdtype}",
                         "rvar_ptr": f"*{rdtype}", "nbt_ptr": "*i64" if has_nbt else "*fp32", "C": "i32",
                         "unbias": "fp32", "momentum": "fp32", "MOMENTUM_MODE": "constexpr",
                         "HAS_NBT": "constexpr", "BLOCK_C": "constexpr"},
                        {"MOMENTUM_MODE": mode, "HAS_NBT": has_nbt, "BLOCK_C": 1024}, {"num_warps": 4}, {}))
    for final in (False, True):
        out.append((f"stats_merge_{'final' if final else 'chunk'}", stats_merge_kernel,
                    {"pmean_ptr": "*fp32", "pm2_ptr": "*fp32", "out_mean_ptr": "*fp32", "out_b_ptr": "*fp32",
                     "T": "i32", "C": "i32", "M": "i32", "TILE_M": "i32", "TILES_PER_PROG": "i32",
                     "FINAL": "constexpr", "BLOCK_T": "constexpr", "BLOCK_C": "constexpr"},
                    {"FINAL": final, "BLOCK_T": 64, "BLOCK_C": 32}, {"num_warps": 4}, {}))
    return out


def all_specializations():
    return conv_specializations() + aux_specializations()


def _main(argv):
    """``python -m kernels.conv [SHARD NSHARDS [ARCH]]``: compile every NSHARDS-th specialisation
    starting at SHARD for sm_<ARCH> (default: all, sm_90); exit status 1 if any fails."""
    _common.compile_main(argv, all_specializations)


if __name__ == "__main__":
    import sys

    _main(sys.argv[1:])
