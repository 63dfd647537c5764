"""Triton kernel of ``fused_resnet::conv`` and ``fused_resnet::conv_shortcut``: a fused NHWC
implicit-GEMM convolution.

Kernels never allocate and never validate: the launchers in
``fused_resnet/backends/triton/conv.py`` do both. Every tensor a kernel sees is a
dense buffer in the layout documented on the kernel.

conv_kernel
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
          deterministic), merged by batch_stats_merge_kernel.
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

Offsets are int32: the launcher refuses tensors of 2**31 elements or more.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import GROUP_M, bn_relu, clamp_configs, divisibility_attrs, dot, interpreting, relu


@triton.jit
def conv_kernel(
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


def conv_configs(cin_g: int, cout_g: int, elem_size: int) -> list[tuple[int, int, int, int, int]]:
    """The candidate configurations for one problem: blocks clamped to the channel counts."""
    if interpreting():
        return [INTERPRET_CONV_CONFIG]
    # Heuristic first: the candidate used untimed (autotuning off, CUDA graph capture).
    first = CONV_CONFIGS[1] if cout_g >= 128 else CONV_CONFIGS[0]
    return clamp_configs(first, CONV_CONFIGS, cout_g, cin_g, elem_size, fp32_slot=2)  # BLOCK_N, BLOCK_K


# ----------------------------------------------------------------------------- AOT compile checks


def conv_signature(dtype: str) -> dict[str, str]:
    """The ASTSource signature of conv_kernel for activations of ``dtype``."""
    p = f"*{dtype}"
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


def specializations():
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
        attrs = divisibility_attrs(conv_kernel, divisible)
        out.append((name, conv_kernel, conv_signature(dtype), consts,
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

