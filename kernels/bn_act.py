"""Triton kernels of ``fused_resnet::bn_act`` and ``fused_resnet::bn_act_backward``.

Kernels never allocate and never validate: the launchers in
``fused_resnet/backends/triton/bn_act.py`` do both. Both kernels work on an [R, L]
row-major view of a dense NHWC (R = N*H*W, L = C, channel = column) or NCHW (R = N*C,
L = H*W, channel = row % C) tensor.

bn_act_kernel
    out = [relu](y*scale[c] + shift[c] + residual*res_scale[c] + res_shift[c]).

bn_act_backward_kernel
    g = dout*(out > 0) (where out is NaN, g passes, as in torch); dy = g*scale;
    dres = g*res_scale (or g); partial sums of g*y, g, g*residual per channel into
    psum [3, T, C] (T = row tiles for NHWC; for NCHW rows are summed whole, T = N),
    summed in order by conv_backward's sum_partials_kernel.

Offsets are int32: the launcher refuses tensors of 2**31 elements or more.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import channel_tile, per_channel, relu, relu_passes


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
    off, mask, ch, ch_ok = channel_tile(R, L, C, CHANNEL_ON_COLS, BLOCK_R, BLOCK_L)
    v = tl.load(y_ptr + off, mask=mask, other=0.0).to(tl.float32)
    sc = per_channel(tl.load(scale_ptr + ch, mask=ch_ok, other=0.0), CHANNEL_ON_COLS)
    sf = per_channel(tl.load(shift_ptr + ch, mask=ch_ok, other=0.0), CHANNEL_ON_COLS)
    z = v * sc + sf
    if HAS_RES:
        r = tl.load(res_ptr + off, mask=mask, other=0.0).to(tl.float32)
        if HAS_RSCALE:
            rs = per_channel(tl.load(rscale_ptr + ch, mask=ch_ok, other=0.0), CHANNEL_ON_COLS)
            rt = per_channel(tl.load(rshift_ptr + ch, mask=ch_ok, other=0.0), CHANNEL_ON_COLS)
            r = r * rs + rt
        z += r
    if RELU:
        z = relu(z)
    tl.store(out_ptr + off, z.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def bn_act_backward_kernel(
    dout_ptr, out_ptr, y_ptr, scale_ptr, res_ptr, rscale_ptr, dy_ptr, dres_ptr, psum_ptr,
    R, L, C, T,
    CHANNEL_ON_COLS: tl.constexpr, RELU: tl.constexpr, HAS_RSCALE: tl.constexpr,
    NEED_Y: tl.constexpr, NEED_SCALE: tl.constexpr, NEED_SUM: tl.constexpr, NEED_RES: tl.constexpr,
    NEED_RSCALE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """psum [3, T, C]: sums of g*y, g, g*residual. NHWC: grid (row tiles, column tiles), one
    partial row per row tile. NCHW: grid (row tiles,), each program sums its rows whole
    (loop over L), row r = n*C + c lands at partial row n (T = N)."""
    pid_r = tl.program_id(0)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = offs_r < R
    if CHANNEL_ON_COLS:
        offs_l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
        l_ok = offs_l < L
        ch = offs_l
        ch_ok = l_ok
        mask = r_ok[:, None] & l_ok[None, :]
        off = offs_r[:, None] * L + offs_l[None, :]
        gv = tl.load(dout_ptr + off, mask=mask, other=0.0).to(tl.float32)
        if RELU:
            o = tl.load(out_ptr + off, mask=mask, other=0.0)
            gv = tl.where(relu_passes(o), gv, 0.0)
        if NEED_Y:
            sc = tl.load(scale_ptr + ch, mask=ch_ok, other=0.0)
            tl.store(dy_ptr + off, (gv * sc[None, :]).to(dy_ptr.dtype.element_ty), mask=mask)
        if NEED_RES:
            if HAS_RSCALE:
                rs = tl.load(rscale_ptr + ch, mask=ch_ok, other=0.0)
                tl.store(dres_ptr + off, (gv * rs[None, :]).to(dres_ptr.dtype.element_ty), mask=mask)
            else:
                tl.store(dres_ptr + off, gv.to(dres_ptr.dtype.element_ty), mask=mask)
        if NEED_SCALE:
            yv = tl.load(y_ptr + off, mask=mask, other=0.0).to(tl.float32)
            tl.store(psum_ptr + pid_r * C + ch, tl.sum(gv * yv, axis=0), mask=ch_ok)
        if NEED_SUM:
            tl.store(psum_ptr + (T + pid_r) * C + ch, tl.sum(gv, axis=0), mask=ch_ok)
        if NEED_RSCALE:
            rv = tl.load(res_ptr + off, mask=mask, other=0.0).to(tl.float32)
            tl.store(psum_ptr + (2 * T + pid_r) * C + ch, tl.sum(gv * rv, axis=0), mask=ch_ok)
    else:
        ch = offs_r % C
        sc = tl.load(scale_ptr + ch, mask=r_ok, other=0.0)
        if HAS_RSCALE:
            rs = tl.load(rscale_ptr + ch, mask=r_ok, other=0.0)
        s_y = tl.zeros((BLOCK_R,), dtype=tl.float32)
        s_g = tl.zeros((BLOCK_R,), dtype=tl.float32)
        s_r = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for l0 in range(0, L, BLOCK_L):
            offs_l = l0 + tl.arange(0, BLOCK_L)
            mask = r_ok[:, None] & (offs_l < L)[None, :]
            off = offs_r[:, None] * L + offs_l[None, :]
            gv = tl.load(dout_ptr + off, mask=mask, other=0.0).to(tl.float32)
            if RELU:
                o = tl.load(out_ptr + off, mask=mask, other=0.0)
                gv = tl.where(relu_passes(o), gv, 0.0)
            if NEED_Y:
                tl.store(dy_ptr + off, (gv * sc[:, None]).to(dy_ptr.dtype.element_ty), mask=mask)
            if NEED_RES:
                if HAS_RSCALE:
                    tl.store(dres_ptr + off, (gv * rs[:, None]).to(dres_ptr.dtype.element_ty), mask=mask)
                else:
                    tl.store(dres_ptr + off, gv.to(dres_ptr.dtype.element_ty), mask=mask)
            if NEED_SCALE:
                yv = tl.load(y_ptr + off, mask=mask, other=0.0).to(tl.float32)
                s_y += tl.sum(gv * yv, axis=1)
            if NEED_SUM:
                s_g += tl.sum(gv, axis=1)
            if NEED_RSCALE:
                rv = tl.load(res_ptr + off, mask=mask, other=0.0).to(tl.float32)
                s_r += tl.sum(gv * rv, axis=1)
        # row r = n*C + c is partial row n, channel c: flat offset r in each [T, C] slab
        if NEED_SCALE:
            tl.store(psum_ptr + offs_r, s_y, mask=r_ok)
        if NEED_SUM:
            tl.store(psum_ptr + R + offs_r, s_g, mask=r_ok)
        if NEED_RSCALE:
            tl.store(psum_ptr + 2 * R + offs_r, s_r, mask=r_ok)


# ----------------------------------------------------------------------------- AOT compile checks


def specializations():
    """Specialisations of the forward (each dtype and layout, without, with and with a scaled
    residual, ReLU off and on) and of the backward (each dtype and layout, the gradient sets
    the blocks ask for)."""
    out = []
    for dtype in ("bf16", "fp16", "fp32"):
        p = f"*{dtype}"
        for on_cols in (True, False):
            for has_res, has_rs in ((False, False), (True, False), (True, True)):
                for relu_ in (False, True):
                    out.append((
                        f"bn_act_{dtype}_{'nhwc' if on_cols else 'nchw'}_{int(has_res)}{int(has_rs)}{int(relu_)}",
                        bn_act_kernel,
                        {"y_ptr": p, "scale_ptr": "*fp32", "shift_ptr": "*fp32", "res_ptr": p, "rscale_ptr": "*fp32",
                         "rshift_ptr": "*fp32", "out_ptr": p, "R": "i32", "L": "i32", "C": "i32",
                         "CHANNEL_ON_COLS": "constexpr", "HAS_RES": "constexpr", "HAS_RSCALE": "constexpr",
                         "RELU": "constexpr", "BLOCK_R": "constexpr", "BLOCK_L": "constexpr"},
                        {"CHANNEL_ON_COLS": on_cols, "HAS_RES": has_res, "HAS_RSCALE": has_rs, "RELU": relu_,
                         "BLOCK_R": 32, "BLOCK_L": 64},
                        {"num_warps": 4}, {}))
            for relu_, has_rs, need in ((True, False, (True, True, True, True, False)),
                                        (True, True, (True, True, True, True, True)),
                                        (False, False, (True, True, True, False, False)),
                                        (True, True, (True, False, False, True, False))):
                bits = dict(zip(("NEED_Y", "NEED_SCALE", "NEED_SUM", "NEED_RES", "NEED_RSCALE"), need))
                out.append((
                    f"bn_act_backward_{dtype}_{'nhwc' if on_cols else 'nchw'}_{int(relu_)}{int(has_rs)}_"
                    + "".join(str(int(b)) for b in need),
                    bn_act_backward_kernel,
                    {"dout_ptr": p, "out_ptr": p, "y_ptr": p, "scale_ptr": "*fp32", "res_ptr": p, "rscale_ptr": "*fp32",
                     "dy_ptr": p, "dres_ptr": p, "psum_ptr": "*fp32", "R": "i32", "L": "i32", "C": "i32", "T": "i32",
                     "CHANNEL_ON_COLS": "constexpr", "RELU": "constexpr", "HAS_RSCALE": "constexpr",
                     "NEED_Y": "constexpr", "NEED_SCALE": "constexpr", "NEED_SUM": "constexpr",
                     "NEED_RES": "constexpr", "NEED_RSCALE": "constexpr", "BLOCK_R": "constexpr",
                     "BLOCK_L": "constexpr"},
                    dict(CHANNEL_ON_COLS=on_cols, RELU=relu_, HAS_RSCALE=has_rs, BLOCK_R=32 if on_cols else 16,
                         BLOCK_L=64 if on_cols else 256, **bits),
                    {"num_warps": 4}, {}))
    return out
