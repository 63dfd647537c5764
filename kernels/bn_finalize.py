"""Triton kernels of ``fused_resnet::bn_finalize``, ``fused_resnet::bn_finalize_backward`` and
``fused_resnet::bn_update_running``: a batch-statistics BatchNorm's per-channel vectors, in one
launch each.

Kernels never allocate and never validate: the launchers in
``fused_resnet/backends/triton/bn_finalize.py`` do both.

bn_finalize_kernel
    (scale, shift, invstd) from (mean, var, weight, bias).

bn_finalize_backward_kernel
    the gradients of a BatchNorm's (scale, shift, invstd) w.r.t. (mean, var, weight).

bn_update_running_kernel
    the running statistics and batch count updated as nn.BatchNorm2d updates them.
"""
from __future__ import annotations

import triton
import triton.language as tl


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
def bn_finalize_backward_kernel(
    dscale_ptr, dshift_ptr, dinvstd_ptr, mean_ptr, weight_ptr, scale_ptr, invstd_ptr,
    dmean_ptr, dvar_ptr, dweight_ptr, C,
    HAS_WEIGHT: tl.constexpr, HAS_DINVSTD: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """bn_finalize's gradients per channel (derivation: reference.bn_finalize_backward):
    dst = dscale - dshift*mean; dweight = dst*invstd; dr = dst*weight (or dst) + dinvstd;
    dmean = -dshift*scale; dvar = -dr/2 * invstd^3."""
    offs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = offs < C
    dscale = tl.load(dscale_ptr + offs, mask=ok, other=0.0)
    dshift = tl.load(dshift_ptr + offs, mask=ok, other=0.0)
    mean = tl.load(mean_ptr + offs, mask=ok, other=0.0)
    invstd = tl.load(invstd_ptr + offs, mask=ok, other=0.0)
    dst = dscale - dshift * mean
    dr = dst
    if HAS_WEIGHT:
        dr = dst * tl.load(weight_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        tl.store(dweight_ptr + offs, dst * invstd, mask=ok)
    if HAS_DINVSTD:
        dr = dr + tl.load(dinvstd_ptr + offs, mask=ok, other=0.0)
    tl.store(dmean_ptr + offs, -dshift * tl.load(scale_ptr + offs, mask=ok, other=0.0), mask=ok)
    tl.store(dvar_ptr + offs, dr * -0.5 * (invstd * invstd * invstd), mask=ok)


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


# ----------------------------------------------------------------------------- AOT compile checks


def specializations():
    """Specialisations of finalize (with and without weight and bias), its backward (with and
    without weight and dinvstd) and the running update (each momentum mode, with and without
    a count, each buffer dtype)."""
    out = []
    for has_w, has_b in ((True, True), (False, False), (True, False), (False, True)):
        out.append((f"bn_finalize_{int(has_w)}{int(has_b)}", bn_finalize_kernel,
                    {"mean_ptr": "*fp32", "var_ptr": "*fp32", "weight_ptr": "*fp32", "bias_ptr": "*fp32",
                     "scale_ptr": "*fp32", "shift_ptr": "*fp32", "invstd_ptr": "*fp32", "C": "i32", "eps": "fp32",
                     "HAS_WEIGHT": "constexpr", "HAS_BIAS": "constexpr", "BLOCK_C": "constexpr"},
                    {"HAS_WEIGHT": has_w, "HAS_BIAS": has_b, "BLOCK_C": 1024}, {"num_warps": 4}, {}))
    for has_w, has_di in ((True, False), (False, False), (True, True), (False, True)):
        out.append((f"bn_finalize_backward_{int(has_w)}{int(has_di)}", bn_finalize_backward_kernel,
                    {"dscale_ptr": "*fp32", "dshift_ptr": "*fp32", "dinvstd_ptr": "*fp32", "mean_ptr": "*fp32",
                     "weight_ptr": "*fp32", "scale_ptr": "*fp32", "invstd_ptr": "*fp32", "dmean_ptr": "*fp32",
                     "dvar_ptr": "*fp32", "dweight_ptr": "*fp32", "C": "i32", "HAS_WEIGHT": "constexpr",
                     "HAS_DINVSTD": "constexpr", "BLOCK_C": "constexpr"},
                    {"HAS_WEIGHT": has_w, "HAS_DINVSTD": has_di, "BLOCK_C": 1024}, {"num_warps": 4}, {}))
    for mode, has_nbt in ((0, True), (1, True), (0, False), (2, False)):
        for rdtype in ("fp32", "fp16", "bf16"):
            out.append((f"bn_update_running_{mode}{int(has_nbt)}_{rdtype}", bn_update_running_kernel,
                        {"mean_ptr": "*fp32", "var_ptr": "*fp32", "rmean_ptr": f"*{rdtype}",
                         "rvar_ptr": f"*{rdtype}", "nbt_ptr": "*i64" if has_nbt else "*fp32", "C": "i32",
                         "unbias": "fp32", "momentum": "fp32", "MOMENTUM_MODE": "constexpr",
                         "HAS_NBT": "constexpr", "BLOCK_C": "constexpr"},
                        {"MOMENTUM_MODE": mode, "HAS_NBT": has_nbt, "BLOCK_C": 1024}, {"num_warps": 4}, {}))
    return out
