"""Launcher of ``fused_resnet::conv_backward`` on the kernels of ``kernels/conv_backward.py``, in
named steps: the outputs that are the gradient at the conv output itself (dresidual, dbias),
the data gradient with the prologue's backward in its epilogue (dx, dscale, dshift), the
weight gradient (split-K, ordered reduce), and the ordered sums of per-tile partials that
give every per-channel gradient (``sum_partials``, which bn_act_backward uses too).

The gradient at the conv output is never materialised for the GEMMs: the dgrad and wgrad
kernels recompute it in their operand loads. Under ``torch.use_deterministic_algorithms(True)``
autotuning is skipped and the heuristic configuration taken, so the reduction order (and
the bits) do not depend on timing either.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from ..._layout import conv_out_hw, empty_like_layout, empty_vec, output_format
from . import _common, tuning
from .conv import ConvProblem

# Partial rows per chunk of the first level of sum_partials: at least this many, and
# enough that the second level reads at most _SUM_MAX_CHUNKS rows. Fixed numbers, not
# the GPU's size: the summation order, and so the bits, are the same on every device.
_SUM_CHUNK_ROWS = 16
_SUM_MAX_CHUNKS = 1024


def sum_partials(p: Tensor) -> list[Tensor]:
    """[S, T, C] fp32 partials (S <= 3) -> S separate [C] vectors, summed over T in a fixed
    order (deterministic). Many rows go through two levels: chunks of rows summed on
    (C blocks x S x chunks) programs, then the chunk sums in order, so the work is spread
    over the GPU instead of a few programs looping over every row."""
    import triton

    from ...kernels import conv_backward as kernels

    s_, t_, c_ = p.shape
    outs = [torch.empty(c_, dtype=torch.float32, device=p.device) for _ in range(s_)]
    ptrs = outs + [outs[0]] * (3 - s_)  # rows beyond S are never stored
    bt, bc = (4, 16) if _common.interpreting() else (32, 64)
    chunk_bt = 4 if _common.interpreting() else _SUM_CHUNK_ROWS
    rows = max(_SUM_CHUNK_ROWS, triton.cdiv(triton.cdiv(t_, _SUM_MAX_CHUNKS), chunk_bt) * chunk_bt)
    if t_ > 2 * rows:
        nch = triton.cdiv(t_, rows)
        q = torch.empty((s_, nch, c_), dtype=torch.float32, device=p.device)
        kernels.sum_partials_chunks_kernel[(triton.cdiv(c_, bc), s_, nch)](
            p, q, t_, c_, nch, rows, BLOCK_T=chunk_bt, BLOCK_C=bc, num_warps=4)
        p, t_ = q, nch
    kernels.sum_partials_kernel[(triton.cdiv(c_, bc), s_)](p, *ptrs, t_, c_, BLOCK_T=bt, BLOCK_C=bc, num_warps=4)
    return outs


class _Backward(NamedTuple):
    """What every step of one conv_backward call reads."""
    p: ConvProblem
    gp: int  # groups packed into one program
    dy: Tensor  # dense NHWC, as y
    y: Tensor
    coeffs: tuple  # (dmean, dvar, mean, 1/M) of the gradient's statistics term (placeholders without stats)
    scale: Tensor  # the forward prologue's scale and shift (placeholders without one)
    shift: Tensor
    has_pro: bool
    stats: bool
    relu: bool
    prec: str
    vdummy: Tensor  # an fp32 vector standing in for absent ones (never read)
    fmt: torch.memory_format  # the layout of the results


def _candidates(cands: list) -> list:
    """Under deterministic algorithms only the heuristic configuration (timing-independent bits)."""
    return cands[:1] if torch.are_deterministic_algorithms_enabled() else cands


def _kernel_weight_dgrad(weight: Tensor) -> Tensor:
    """[Cout, Cin/g, KH, KW] -> dense [KH, KW, Cout, Cin/g] (the dgrad GEMM's B operand,
    coalesced along input channels)."""
    return _common.permuted_weight(weight, (2, 3, 0, 1))


def _grad_vec(name: str, t: Tensor, n: int, device) -> Tensor:
    if not isinstance(t, Tensor) or t.numel() != n:
        raise ValueError(f"triton conv_backward: {name} must have {n} elements when stats=True, got "
                         f"{list(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    _common.check_device(name, t, device)
    return t.reshape(n).to(torch.float32).contiguous()


def _problem(dy: Tensor, x: Tensor, weight: Tensor, y: Tensor, stride: Sequence[int], padding: Sequence[int],
             dilation: Sequence[int], groups: int) -> ConvProblem:
    """The forward convolution's geometry, checked against dy, x, weight and y."""
    for name, t in (("x", x), ("dy", dy), ("y", y)):
        _common.check_activation(name, t)
    for name, t in (("dy", dy), ("y", y), ("weight", weight)):
        _common.check_device(name, t, x.device)
        if t.dtype != x.dtype:
            raise TypeError(f"triton conv_backward: {name} has dtype {t.dtype}, but x has {x.dtype} (they must match)")
    if weight.dim() != 4:
        raise ValueError(f"triton conv_backward: weight must be 4-D, got shape {list(weight.shape)}")
    groups = int(groups)
    n, cin, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    if groups < 1 or cin % groups or cout % groups or cin_g != cin // groups:
        raise ValueError(f"triton conv_backward: weight {list(weight.shape)} does not fit x with Cin={cin} "
                         f"and groups={groups}")
    sh, sw = _common.pair("stride", stride)
    ph, pw = _common.pair("padding", padding)
    dh, dw = _common.pair("dilation", dilation)
    ho, wo = conv_out_hw(h, w, (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    if tuple(dy.shape) != (n, cout, ho, wo) or tuple(y.shape) != (n, cout, ho, wo):
        raise ValueError(f"triton conv_backward: dy and y must have the output's shape {[n, cout, ho, wo]}, "
                         f"got {list(dy.shape)} and {list(y.shape)}")
    return ConvProblem(groups, n, cin, h, w, cout, cin_g, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)


def _empty_batch(x: Tensor, weight: Tensor, p: ConvProblem, mask: tuple[bool, ...]) -> tuple:
    """conv_backward's results for N = 0: nothing to launch; the sums over no rows are zeros."""
    need_x, need_w, need_bias, need_scale, need_shift, need_res = mask

    def vec(c, need):
        return torch.zeros(c, dtype=torch.float32, device=x.device) if need else empty_vec(x)
    return (empty_like_layout(x, x.shape) if need_x else empty_vec(x),
            torch.zeros_like(weight, memory_format=torch.contiguous_format) if need_w else empty_vec(x),
            vec(p.cout, need_bias), vec(p.cin, need_scale), vec(p.cin, need_shift),
            empty_like_layout(x, p.out_shape) if need_res else empty_vec(x))


def conv_backward(
    dy: Tensor, dmean: Tensor, dvar: Tensor, x: Tensor, weight: Tensor, y: Tensor, mean: Tensor,
    in_scale: Optional[Tensor], in_shift: Optional[Tensor], stride: Sequence[int], padding: Sequence[int],
    dilation: Sequence[int], groups: int, relu: bool, stats: bool, output_mask: Sequence[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``fused_resnet::conv_backward`` on the Triton kernels (contract: ops.py, reference.conv_backward)."""
    p = _problem(dy, x, weight, y, stride, padding, dilation, groups)
    mask = tuple(bool(b) for b in output_mask)
    need_x, need_w, need_bias, need_scale, need_shift, need_res = mask
    has_pro = in_scale is not None
    in_scale, in_shift = _common.check_pair("conv_backward", ("in_scale", "in_shift"), in_scale, in_shift, p.cin,
                                            x.device)
    if (need_scale or need_shift) and not has_pro:
        raise ValueError("triton conv_backward: in_scale/in_shift gradients asked for without a prologue")
    if p.n * p.cout * p.ho * p.wo >= _common.INT32_LIMIT or p.n * p.cin * p.h * p.w >= _common.INT32_LIMIT:
        raise ValueError("triton conv_backward: tensors of 2**31 elements or more (the kernels index with int32)")
    if p.n == 0:
        return _empty_batch(x, weight, p, mask)
    vdummy = in_scale if has_pro else torch.empty(1, dtype=torch.float32, device=x.device)
    if stats:  # the kernels scale dmean and dvar by 1/M as they load them
        coeffs = (*(_grad_vec(name, t, p.cout, x.device) for name, t in (("dmean", dmean), ("dvar", dvar),
                                                                            ("mean", mean))), 1.0 / p.m)
    else:
        coeffs = (vdummy, vdummy, vdummy, 1.0 / p.m)
    b = _Backward(p, _common.groups_per_program(p.groups, p.cin_g, p.cout_g), _common.nhwc(dy), _common.nhwc(y),
                  coeffs, in_scale if has_pro else vdummy, in_shift if has_pro else vdummy, has_pro, bool(stats),
                  bool(relu), _common.dot_precision(x.dtype), vdummy, output_format(x))
    dx = dw = dbias = dscale = dshift = dres = None
    with _common.on_device(x.device):
        if need_res or need_bias:
            dres, dbias = _output_grad(b, need_res, need_bias)
        xk = _common.nhwc(x) if (need_w or has_pro) else None
        if need_x or need_scale or need_shift:
            dx, dscale, dshift = _dgrad(b, x, xk, weight, need_x, need_scale or need_shift)
        if need_w:
            dw = _wgrad(b, x, xk)
    return tuple(t if need else empty_vec(x) for t, need in zip((dx, dw, dbias, dscale, dshift, dres), mask))


def _output_grad(b: _Backward, need_res: bool, need_bias: bool) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """(dresidual, dbias): the gradient at the conv output itself, and its per-channel sum."""
    import triton

    from ...kernels import conv_backward as kernels

    p = b.p
    bm, bc = (16, 16) if _common.interpreting() else (64, 64)
    tiles = triton.cdiv(p.m, bm)
    dres = torch.empty(p.out_shape, dtype=b.dy.dtype, device=b.dy.device,
                       memory_format=torch.channels_last) if need_res else b.dy
    psum = torch.empty((1, tiles, p.cout), dtype=torch.float32, device=b.dy.device) if need_bias else b.vdummy
    kernels.conv_output_grad_kernel[(tiles, triton.cdiv(p.cout, bc))](
        b.dy, b.y, *b.coeffs, dres, psum, p.m, p.cout,
        STATS=b.stats, RELU=b.relu, NEED_RES=need_res, NEED_SUM=need_bias,
        BLOCK_M=bm, BLOCK_C=bc, num_warps=4,
    )
    return (_common.in_format(dres, b.fmt) if need_res else None,
            sum_partials(psum)[0] if need_bias else None)


def _dgrad(b: _Backward, x: Tensor, xk: Optional[Tensor], weight: Tensor, need_x: bool,
           need_psum: bool) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """(dx, dscale, dshift): the data gradient, with the prologue's backward in its epilogue
    (dx through the prologue's ReLU and scale; per-tile partial sums for dscale, dshift)."""
    import triton

    from ...kernels import conv_backward as kernels

    p, gp = b.p, b.gp
    wd = _kernel_weight_dgrad(weight)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last) if need_x else b.dy
    # Undilated strided convolutions: one phase per (ih mod sh, iw mod sw).
    qh, qw = (p.sh, p.sw) if p.dh == 1 and p.dw == 1 else (1, 1)
    m_phase = p.n * triton.cdiv(p.h, qh) * triton.cdiv(p.w, qw)
    partials = {}  # BLOCK_M -> the [2, tiles, Cin] partial sums of that tiling

    def launch(cfg):
        bm, bn, bk, warps, stages = cfg
        nt = qh * qw * triton.cdiv(m_phase, bm)
        if need_psum and bm not in partials:
            partials[bm] = torch.empty((2, nt, p.cin), dtype=torch.float32, device=x.device)
        kernels.conv_dgrad_kernel[(triton.cdiv(m_phase, bm) * triton.cdiv(p.cin_g * gp, bn),
                                   p.groups // gp * qh * qw)](
            b.dy, b.y, wd, xk if b.has_pro else b.dy, dx, *b.coeffs, b.scale, b.shift,
            partials[bm] if need_psum else b.vdummy, m_phase, *p.channel_args(gp), nt, p.n, qh, qw, *p.geometry,
            KH=p.kh, KW=p.kw, HAS_PRO=b.has_pro, STATS=b.stats, RELU=b.relu,
            NEED_DX=need_x or not b.has_pro, NEED_PSUM=need_psum, EVEN_K=gp == 1 and p.cout_g % bk == 0,
            DOT_PRECISION=b.prec, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=kernels.GROUP_M,
            num_warps=warps, num_stages=stages,
        )

    key = ("dgrad", triton.next_power_of_2(p.n * p.h * p.w), p.cin, p.cout, p.h, p.w, p.kh, p.kw, *p.geometry,
           p.groups, x.dtype, b.has_pro, b.stats, b.relu, need_x, need_psum, b.prec)
    cfg = tuning.pick(key, _candidates(kernels.dgrad_configs(p.cin_g * gp, p.cout_g * gp, x.element_size())),
                      launch, x.device)
    launch(cfg)
    dscale, dshift = sum_partials(partials[cfg[0]]) if need_psum else (None, None)
    return _common.in_format(dx, b.fmt) if need_x else None, dscale, dshift


def _wgrad(b: _Backward, x: Tensor, xk: Tensor) -> Tensor:
    """dweight: split-K over the output rows into fp32 partials, the splits summed in order."""
    import triton

    from ...kernels import conv_backward as kernels

    p, gp = b.p, b.gp
    dw = torch.empty((p.cout, p.cin_g, p.kh, p.kw), dtype=x.dtype, device=x.device)
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.device.type == "cuda" else 132
    parts = {}  # (splits, rows per split) -> the partial weight gradients of that split

    def launch(cfg):
        bm, bci, bco, warps, stages = cfg
        tiles = p.kh * p.kw * triton.cdiv(p.cin_g * gp, bci) * triton.cdiv(p.cout_g * gp, bco)
        splits, per = kernels.wgrad_splits(p.m, tiles * (p.groups // gp), bm, sms)
        if (splits, per) not in parts:
            parts[splits, per] = torch.empty((splits, p.kh * p.kw, p.cin_g, p.cout), dtype=torch.float32,
                                             device=x.device)
        part = parts[splits, per]
        kernels.conv_wgrad_kernel[(tiles, splits, p.groups // gp)](
            b.dy, b.y, xk, part, *b.coeffs, b.scale, b.shift, p.m, *p.channel_args(gp), per, *p.geometry,
            KH=p.kh, KW=p.kw, HAS_PRO=b.has_pro, STATS=b.stats, RELU=b.relu, DOT_PRECISION=b.prec,
            BLOCK_M=bm, BLOCK_CI=bci, BLOCK_CO=bco, num_warps=warps, num_stages=stages,
        )
        # Small weights still spread over 4 x SMs programs: each loops over every split.
        e = p.kh * p.kw * p.cin_g * p.cout
        blk = 128 if _common.interpreting() else max(32, min(512, triton.next_power_of_2(triton.cdiv(e, 4 * sms))))
        kernels.wgrad_reduce_kernel[(triton.cdiv(e, blk),)](
            part, dw, splits, p.kh * p.kw, p.cin_g, p.cout, BLOCK=blk, num_warps=4 if blk >= 512 else 1)

    key = ("wgrad", triton.next_power_of_2(p.m), p.cin, p.cout, p.h, p.w, p.kh, p.kw, *p.geometry, p.groups,
           x.dtype, b.has_pro, b.stats, b.relu, b.prec)
    launch(tuning.pick(key, _candidates(kernels.wgrad_configs(p.cin_g * gp, p.cout_g * gp, x.element_size())),
                       launch, x.device))
    return dw
