"""Launchers of ``fused_resnet::conv`` and ``fused_resnet::conv_shortcut`` on ``kernels/conv.py``'s
implicit-GEMM convolution, and the checked convolution problem both (and conv_backward) read.

The launchers bring activations to dense NHWC, convert weights to the [KH, KW, Cin/groups,
Cout] layout the kernel reads (at every call), allocate outputs in the memory format
``_layout.output_format`` prescribes and pick a tile configuration (``tuning``).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from ..._layout import conv_out_hw, empty_vec, output_format
from . import _common, tuning
from .batch_stats import merge_stats


class ConvProblem(NamedTuple):
    """A convolution's geometry: x [n, cin, h, w] * weight [cout, cin_g, kh, kw] in ``groups``
    groups, at stride (sh, sw), padding (ph, pw) and dilation (dh, dw), gives [n, cout, ho, wo]."""
    groups: int
    n: int
    cin: int
    h: int
    w: int
    cout: int
    cin_g: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    ho: int
    wo: int

    @property
    def cout_g(self) -> int:
        return self.cout // self.groups

    @property
    def m(self) -> int:
        """Rows of the output GEMM: output pixels, N*Ho*Wo."""
        return self.n * self.ho * self.wo

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return self.n, self.cout, self.ho, self.wo

    @property
    def geometry(self) -> tuple[int, int, int, int, int, int]:
        """(SH, SW, PH, PW, DH, DW), as every conv kernel takes them."""
        return self.sh, self.sw, self.ph, self.pw, self.dh, self.dw

    def channel_args(self, gp: int) -> tuple[int, ...]:
        """(H, W, CIN, HO, WO, COUT, CIN_G, COUT_G, CIN_R, COUT_R), as every conv kernel takes them,
        with ``gp`` groups packed into one program (CIN_G, COUT_G: a program's; _R: one group's)."""
        return (self.h, self.w, self.cin, self.ho, self.wo, self.cout, self.cin_g * gp, self.cout_g * gp,
                self.cin_g, self.cout_g)


def problem(op: str, x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int],
            dilation: Sequence[int], groups: int) -> ConvProblem:
    """Check the main conv's weight and geometry against ``x`` (already checked), with
    errors naming ``op``."""
    device, dtype = x.device, x.dtype
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        raise ValueError(f"triton {op}: weight must be a 4-D tensor [Cout, Cin/groups, KH, KW], got "
                         f"{list(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__}")
    _common.check_device("weight", weight, device)
    if weight.dtype != dtype:
        raise TypeError(f"triton {op}: weight has dtype {weight.dtype}, but x has {dtype} (they must match)")
    groups = int(groups)
    n, cin, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    if groups < 1 or cin % groups or cout % groups:
        raise ValueError(f"triton {op}: groups={groups} must divide Cin={cin} and Cout={cout}")
    if cin_g != cin // groups:
        raise ValueError(f"triton {op}: weight has {cin_g} input channels per group, but x has Cin={cin} "
                         f"and groups={groups} (expected {cin // groups})")
    sh, sw = _common.pair("stride", stride)
    ph, pw = _common.pair("padding", padding)
    dh, dw = _common.pair("dilation", dilation)
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"triton {op}: invalid stride {stride}, padding {padding} or dilation {dilation}")
    ho, wo = conv_out_hw(h, w, (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    if ho < 1 or wo < 1:
        raise ValueError(f"triton {op}: the output would be empty ({ho}x{wo}) for input {h}x{w}, "
                         f"kernel {kh}x{kw}")
    return ConvProblem(groups, n, cin, h, w, cout, cin_g, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)


def kernel_weight(weight: Tensor) -> Tensor:
    """[Cout, Cin/g, KH, KW] -> dense [KH, KW, Cin/g, Cout], the forward GEMM's B operand."""
    return _common.permuted_weight(weight, (2, 3, 1, 0))


def _check_output_size(op: str, p: ConvProblem) -> None:
    if p.n * p.cout * p.ho * p.wo >= _common.INT32_LIMIT:
        raise ValueError(f"triton {op}: the output has 2**31 elements or more; the kernels index with int32")


def _check_residual(residual: Tensor, x: Tensor, p: ConvProblem) -> None:
    _common.check_activation("residual", residual)
    _common.check_device("residual", residual, x.device)
    if residual.dtype != x.dtype:
        raise TypeError(f"triton conv: residual has dtype {residual.dtype}, but x has {x.dtype} (they must match)")
    if tuple(residual.shape) != p.out_shape:
        raise ValueError(f"triton conv: residual must have the output's shape {list(p.out_shape)}, "
                         f"got {list(residual.shape)}")


def _grid(p: ConvProblem, gp: int, bm: int, bn: int) -> tuple[int, int]:
    import triton

    return triton.cdiv(p.m, bm) * triton.cdiv(p.cout_g * gp, bn), p.groups // gp


def conv(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], in_scale: Optional[Tensor],
    in_shift: Optional[Tensor], residual: Optional[Tensor], stride: Sequence[int],
    padding: Sequence[int], dilation: Sequence[int], groups: int, relu: bool, stats: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``fused_resnet::conv`` on the Triton kernel (contract: ops.py, reference.conv)."""
    _common.check_activation("x", x)
    p = problem("conv", x, weight, stride, padding, dilation, groups)
    bias = _common.check_vec("bias", bias, p.cout, x.device)
    in_scale, in_shift = _common.check_pair("conv", ("in_scale", "in_shift"), in_scale, in_shift, p.cin, x.device)
    if residual is not None:
        _check_residual(residual, x, p)
    _check_output_size("conv", p)
    if p.n == 0:
        y = torch.empty(p.out_shape, dtype=x.dtype, device=x.device, memory_format=output_format(x))
        if not stats:
            return y, empty_vec(x), empty_vec(x)
        nan = torch.full((p.cout,), float("nan"), dtype=torch.float32, device=x.device)
        return y, nan, nan.clone()
    y, mean, var = _launch_conv(x, weight, bias, in_scale, in_shift, residual, p, bool(relu), bool(stats))
    return _common.in_format(y, output_format(x)), mean, var


def _launch_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], in_scale: Optional[Tensor],
                 in_shift: Optional[Tensor], residual: Optional[Tensor], p: ConvProblem, relu: bool,
                 stats: bool) -> tuple[Tensor, Tensor, Tensor]:
    """conv's launch on checked operands: y in dense NHWC, and its statistics merged from the
    per-tile partials of the configuration that ran (or empty vectors without ``stats``)."""
    import triton

    from ...kernels import conv as kernels

    device, dtype = x.device, x.dtype
    xk, wk = _common.nhwc(x), kernel_weight(weight)
    rk = _common.nhwc(residual) if residual is not None else None
    y = torch.empty(p.out_shape, dtype=dtype, device=device, memory_format=torch.channels_last)
    gp = _common.groups_per_program(p.groups, p.cin_g, p.cout_g)
    dummy = y  # stands in for absent optional pointers (never dereferenced)
    prec = _common.dot_precision(dtype)
    partials = {}  # BLOCK_M -> the per-tile (mean, M2) buffers of that tiling

    def launch(cfg):
        bm, bn, bk, warps, stages = cfg
        if stats and bm not in partials:
            tiles = triton.cdiv(p.m, bm)
            partials[bm] = (torch.empty((tiles, p.cout), dtype=torch.float32, device=device),
                            torch.empty((tiles, p.cout), dtype=torch.float32, device=device))
        pmean, pm2 = partials[bm] if stats else (dummy, dummy)
        kernels.conv_kernel[_grid(p, gp, bm, bn)](
            xk, wk, y, bias if bias is not None else dummy,
            in_scale if in_scale is not None else dummy, in_shift if in_shift is not None else dummy,
            rk if rk is not None else dummy, pmean, pm2, p.m, *p.channel_args(gp), *p.geometry,
            dummy, dummy, dummy, dummy, 1, 1, 1, 1, 0,  # no shortcut (conv_shortcut's operands)
            KH=p.kh, KW=p.kw, HAS_PRO=in_scale is not None, HAS_BIAS=bias is not None,
            HAS_RES=residual is not None, RELU=relu, STATS=stats,
            EVEN_K=gp == 1 and p.cin_g % bk == 0,
            SC_MODE=0, SC_PRO=False, SC_EVEN_K=True,
            DOT_PRECISION=prec, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=kernels.GROUP_M,
            num_warps=warps, num_stages=stages,
        )

    key = ("conv", triton.next_power_of_2(p.m), p.cin, p.cout, p.kh, p.kw, *p.geometry, p.groups, dtype,
           in_scale is not None, bias is not None, residual is not None, relu, stats, prec)
    candidates = kernels.conv_configs(p.cin_g * gp, p.cout_g * gp, x.element_size())
    with _common.on_device(device):
        cfg = tuning.pick(key, candidates, launch, device)
        launch(cfg)
        if not stats:
            return y, empty_vec(x), empty_vec(x)
        pmean, pm2 = partials[cfg[0]]
        return (y, *merge_stats(pmean, pm2, p.m, cfg[0], p.cout, device))


def _check_shortcut(sc_x: Tensor, sc_weight: Optional[Tensor], sc_stride: int, x: Tensor,
                    p: ConvProblem) -> int:
    """conv_shortcut's shortcut operands checked against x and the main conv; returns sc_stride."""
    import triton

    _common.check_activation("sc_x", sc_x)
    _common.check_device("sc_x", sc_x, x.device)
    if sc_x.dtype != x.dtype:
        raise TypeError(f"triton conv_shortcut: sc_x has dtype {sc_x.dtype}, but x has {x.dtype} (they must match)")
    if isinstance(sc_stride, bool) or not isinstance(sc_stride, int) or sc_stride < 1:
        raise ValueError(f"triton conv_shortcut: sc_stride must be a positive int, got {sc_stride!r}")
    sc_stride = int(sc_stride)
    sn, csc, h_sc, w_sc = sc_x.shape
    if sn != p.n:
        raise ValueError(f"triton conv_shortcut: sc_x has batch size {sn}, but x has {p.n}")
    sho, swo = triton.cdiv(h_sc, sc_stride), triton.cdiv(w_sc, sc_stride)
    if (sho, swo) != (p.ho, p.wo):
        raise ValueError(f"triton conv_shortcut: sc_x is {h_sc}x{w_sc}, which at sc_stride={sc_stride} gives "
                         f"{sho}x{swo}, but the conv's output is {p.ho}x{p.wo}")
    if sc_weight is not None:
        if not isinstance(sc_weight, Tensor):
            raise TypeError(f"triton conv_shortcut: sc_weight must be a tensor, got {type(sc_weight).__name__}")
        _common.check_device("sc_weight", sc_weight, x.device)
        if sc_weight.dtype != x.dtype:
            raise TypeError(f"triton conv_shortcut: sc_weight has dtype {sc_weight.dtype}, but x has {x.dtype} "
                            f"(they must match)")
        if tuple(sc_weight.shape) != (p.cout, csc, 1, 1):
            raise ValueError(f"triton conv_shortcut: sc_weight must have shape {[p.cout, csc, 1, 1]} "
                             f"([Cout, Csc, 1, 1]), got {list(sc_weight.shape)}")
    elif csc > p.cout:
        raise ValueError(f"triton conv_shortcut: option A (no sc_weight) pads sc_x's {csc} channels up to "
                         f"Cout={p.cout}, so sc_x must not have more channels than the output")
    return sc_stride


def conv_shortcut(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], in_scale: Optional[Tensor],
    in_shift: Optional[Tensor], sc_x: Tensor, sc_weight: Optional[Tensor],
    sc_in_scale: Optional[Tensor], sc_in_shift: Optional[Tensor], sc_stride: int,
    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int, relu: bool,
) -> Tensor:
    """``fused_resnet::conv_shortcut`` on one conv kernel launch (contract: ops.py, reference.conv_shortcut).

    With ``sc_weight`` the strided 1x1 projection of sc_x is a second K loop into the
    main conv's accumulator (SC_MODE=1); without, option A is read in the epilogue
    (SC_MODE=2). The shortcut never touches memory.
    """
    op = "conv_shortcut"
    _common.check_activation("x", x)
    p = problem(op, x, weight, stride, padding, dilation, groups)
    bias = _common.check_vec("bias", bias, p.cout, x.device)
    in_scale, in_shift = _common.check_pair(op, ("in_scale", "in_shift"), in_scale, in_shift, p.cin, x.device)
    sc_stride = _check_shortcut(sc_x, sc_weight, sc_stride, x, p)
    sc_in_scale, sc_in_shift = _common.check_pair(op, ("sc_in_scale", "sc_in_shift"), sc_in_scale, sc_in_shift,
                                                  sc_x.shape[1], x.device)
    _check_output_size(op, p)
    if p.n == 0:
        return torch.empty(p.out_shape, dtype=x.dtype, device=x.device, memory_format=output_format(x))
    y = _launch_shortcut(x, weight, bias, in_scale, in_shift, sc_x, sc_weight, sc_in_scale, sc_in_shift, sc_stride,
                         p, bool(relu))
    return _common.in_format(y, output_format(x))


def _launch_shortcut(x: Tensor, weight: Tensor, bias: Optional[Tensor], in_scale: Optional[Tensor],
                     in_shift: Optional[Tensor], sc_x: Tensor, sc_weight: Optional[Tensor],
                     sc_in_scale: Optional[Tensor], sc_in_shift: Optional[Tensor], sc_stride: int,
                     p: ConvProblem, relu: bool) -> Tensor:
    """conv_shortcut's launch on checked operands: y in dense NHWC."""
    import triton

    from ...kernels import conv as kernels

    device, dtype = x.device, x.dtype
    xk, wk, sxk = _common.nhwc(x), kernel_weight(weight), _common.nhwc(sc_x)
    _, csc, h_sc, w_sc = sc_x.shape
    sc_mode = 1 if sc_weight is not None else 2
    y = torch.empty(p.out_shape, dtype=dtype, device=device, memory_format=torch.channels_last)
    swk = kernel_weight(sc_weight) if sc_weight is not None else y  # [1, 1, Csc, Cout] = [Csc, Cout]
    gp = _common.groups_per_program(p.groups, p.cin_g, p.cout_g)
    dummy = y  # stands in for absent optional pointers (never dereferenced)
    has_pro, sc_pro = in_scale is not None, sc_in_scale is not None
    prec = _common.dot_precision(dtype)

    def launch(cfg):
        bm, bn, bk, warps, stages = cfg
        kernels.conv_kernel[_grid(p, gp, bm, bn)](
            xk, wk, y, bias if bias is not None else dummy,
            in_scale if has_pro else dummy, in_shift if has_pro else dummy, dummy, dummy, dummy,
            p.m, *p.channel_args(gp), *p.geometry,
            sxk, swk, sc_in_scale if sc_pro else dummy, sc_in_shift if sc_pro else dummy,
            h_sc, w_sc, csc, sc_stride, (p.cout - csc) // 2,
            KH=p.kh, KW=p.kw, HAS_PRO=has_pro, HAS_BIAS=bias is not None, HAS_RES=False, RELU=relu,
            STATS=False, EVEN_K=gp == 1 and p.cin_g % bk == 0, SC_MODE=sc_mode, SC_PRO=sc_pro,
            SC_EVEN_K=csc % bk == 0, DOT_PRECISION=prec, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
            GROUP_M=kernels.GROUP_M, num_warps=warps, num_stages=stages,
        )

    key = ("shortcut", triton.next_power_of_2(p.m), p.cin, p.cout, p.kh, p.kw, *p.geometry, p.groups, dtype, has_pro,
           bias is not None, relu, sc_mode, csc, sc_stride, sc_pro, prec)
    candidates = kernels.conv_configs(p.cin_g * gp, p.cout_g * gp, x.element_size())
    with _common.on_device(device):
        launch(tuning.pick(key, candidates, launch, device))
    return y
