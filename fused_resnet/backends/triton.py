"""The triton backend: fused implicit-GEMM convolutions from the repository's ``kernels/``.

The kernels (``kernels/conv.py``) never allocate or validate; the launchers here
do: they check every tensor (device, dtype, shape) and name the offending one,
bring activations to dense NHWC (channels_last), convert weights to the
[KH, KW, Cin/groups, Cout] layout the kernel reads (at every call),
allocate outputs in the memory format ``_layout.output_format`` prescribes,
pick a tile configuration (on a GPU, autotuned once per problem key and remembered
on disk: ``triton_tuning``; one small fixed one under TRITON_INTERPRET=1) and launch.

fp32 convolutions use TF32 tensor cores exactly when
``torch.backends.cudnn.allow_tf32`` is set (the flag PyTorch consults for its
own convolutions, default True), full IEEE fp32 otherwise and always under the
interpreter. fp16/bf16 run on tensor cores with fp32 accumulation.

``conv_backward`` and ``bn_act_backward`` run the kernels of ``kernels/conv_backward.py``:
the gradient at the conv output is recomputed in the operand loads of the dgrad and
wgrad implicit GEMMs (never materialised), the prologue backward is the dgrad
epilogue, and every per-channel reduction and the split-K weight gradient go
through a partials buffer and an ordered reduction (no atomics: bitwise
repeatable). Under ``torch.use_deterministic_algorithms(True)`` the backward
launchers skip autotuning and take the heuristic configuration, so the reduction
order (and the bits) do not depend on timing either.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

from .._layout import conv_out_hw, empty_like_layout, empty_vec, output_format
from . import triton_tuning
from .base import FLOAT_DTYPES, Backend

_ROOT = Path(__file__).resolve().parents[2]
_INT32_LIMIT = 2**31


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_kernels_mod = None
_bwd_kernels_mod = None


def _load_kernel_module(stem: str):
    try:
        return importlib.import_module(f"fused_resnet.kernels.{stem}")
    except ImportError:
        path = _ROOT / "kernels" / f"{stem}.py"
        if not path.exists():
            raise ImportError(f"the Triton kernels are missing: neither fused_resnet.kernels.{stem} "
                              f"nor {path} can be found") from None
        name = f"_fused_resnet_kernels_{stem}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod


def backward_kernels():
    """The Triton backward kernel module (``kernels/conv_backward.py``), imported lazily."""
    global _bwd_kernels_mod
    if _bwd_kernels_mod is None:
        _bwd_kernels_mod = _load_kernel_module("conv_backward")
    return _bwd_kernels_mod


def kernels():
    """The Triton kernel module (``kernels/conv.py``), imported lazily together with triton.

    Installed, it is ``fused_resnet.kernels.conv`` (setup.py maps ``kernels/`` there);
    in a plain source checkout it is loaded from ``<repo>/kernels/conv.py``.
    """
    global _kernels_mod
    if _kernels_mod is None:
        try:
            mod = importlib.import_module("fused_resnet.kernels.conv")
        except ImportError:
            path = _ROOT / "kernels" / "conv.py"
            if not path.exists():
                raise ImportError(f"the Triton kernels are missing: neither fused_resnet.kernels.conv "
                                  f"nor {path} can be found") from None
            name = "_fused_resnet_kernels_conv"
            spec = importlib.util.spec_from_file_location(name, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        _kernels_mod = mod
    return _kernels_mod


# ----------------------------------------------------------------------------- validation


def _check_device(name: str, t: Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"triton conv: {name} is on {t.device}, but x is on {device}")


def _check_vec(name: str, t: Optional[Tensor], n: int, device: torch.device) -> Optional[Tensor]:
    """A per-channel fp32 vector of length n (or None), checked and returned as the kernels read
    it: contiguous (autograd hands over expanded, stride-0 gradients, e.g. of a sum)."""
    if t is None:
        return None
    if not isinstance(t, Tensor):
        raise TypeError(f"triton backend: {name} must be a tensor, got {type(t).__name__}")
    _check_device(name, t, device)
    if t.dtype != torch.float32:
        raise TypeError(f"triton backend: {name} must be float32 (per-channel vectors are fp32), got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"triton backend: {name} must have shape [{n}], got {list(t.shape)}")
    return t.contiguous()


_INTERPRETER_BF16 = ("the Triton interpreter (TRITON_INTERPRET=1) computes wrongly (its bf16 products are "
                     "garbage); run bf16 on a GPU without TRITON_INTERPRET, or use float32/float16")


def _check_activation(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"triton backend: {name} must be a tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"triton backend: {name} must be 4-D (N, C, H, W), got shape {list(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"triton backend: {name} has dtype {t.dtype}; supported are float32, float16, bfloat16")
    if t.dtype == torch.bfloat16 and _interpreting():
        raise TypeError(f"triton backend: {name} is bfloat16, which {_INTERPRETER_BF16}")
    if t.device.type == "cpu" and not _interpreting():
        raise RuntimeError(f"triton backend: {name} is on the CPU, which runs only under TRITON_INTERPRET=1")
    if t.device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"triton backend: {name} is on {t.device.type}, not CUDA")
    if t.numel() >= _INT32_LIMIT:
        raise ValueError(f"triton backend: {name} has {t.numel()} elements; the kernels index with int32 (< 2**31)")


def _pair(name: str, v) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    v = tuple(int(e) for e in v)
    if len(v) == 1:
        return v[0], v[0]
    if len(v) != 2:
        raise ValueError(f"triton conv: {name} must have 1 or 2 entries, got {v}")
    return v


def _nhwc(t: Tensor) -> Tensor:
    """A dense NHWC buffer holding ``t`` (no copy when it already is one)."""
    return t.contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- weight layouts


def _permuted_weight(weight: Tensor, dims: tuple[int, int, int, int]) -> Tensor:
    """``weight.permute(dims)`` made dense, at every call: no cache could tell a weight
    written through ``.data`` (no version bump) from an unchanged one."""
    return weight.detach().permute(*dims).contiguous()


def _kernel_weight(weight: Tensor) -> Tensor:
    """[Cout, Cin/g, KH, KW] -> dense [KH, KW, Cin/g, Cout], the forward GEMM's B operand."""
    return _permuted_weight(weight, (2, 3, 1, 0))


# ----------------------------------------------------------------------------- autotuning

def _bucket(m: int) -> int:
    return 1 << max(int(m) - 1, 0).bit_length()


def _pick_config(key: tuple, candidates: list, launch, device: torch.device) -> tuple:
    """The configuration to launch ``key``'s problem (``key[0]`` names the kernel) with on
    ``device``: the only candidate, or triton_tuning's choice (remembered, heuristic, shipped,
    cached on disk or timed)."""
    if len(candidates) == 1:
        return candidates[0]
    return triton_tuning.choose(key, candidates, launch, device)


# ----------------------------------------------------------------------------- launchers


def _merge_stats(pmean: Tensor, pm2: Tensor, m: int, tile_m: int, c: int, device) -> tuple[Tensor, Tensor]:
    """mean and biased var from per-tile partials: one merge launch, or two when there are
    many tiles (chunks of tiles merged in parallel, then the chunks), in a fixed order."""
    k = kernels()
    mean = torch.empty(c, dtype=torch.float32, device=device)
    var = torch.empty(c, dtype=torch.float32, device=device)
    t = pmean.shape[0]
    if _interpreting():
        block_c, block_t, per_prog, warps = 16, 4, 8, 1
    else:
        block_c, block_t, per_prog, warps = 32, 64, 128, 4
    if t > per_prog:
        chunks = triton_cdiv(t, per_prog)
        cmean = torch.empty((chunks, c), dtype=torch.float32, device=device)
        cm2 = torch.empty_like(cmean)
        k.stats_merge_kernel[(triton_cdiv(c, block_c), chunks)](
            pmean, pm2, cmean, cm2, t, c, m, tile_m, per_prog,
            FINAL=False, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=warps,
        )
        pmean, pm2, t, tile_m = cmean, cm2, chunks, tile_m * per_prog
    k.stats_merge_kernel[(triton_cdiv(c, block_c), 1)](
        pmean, pm2, mean, var, t, c, m, tile_m, t,
        FINAL=True, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=warps,
    )
    return mean, var


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _dot_precision(dtype: torch.dtype) -> str:
    if _interpreting():
        return "ieee"
    if dtype == torch.float32:
        return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    return "tf32"  # ignored for fp16/bf16 operands


def _conv_problem(
    op: str, x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int],
    dilation: Sequence[int], groups: int,
) -> tuple[int, ...]:
    """Check the main conv's weight and geometry against ``x`` (already checked), with
    errors naming ``op``; returns (groups, n, cin, h, w, cout, cin_g, kh, kw, sh, sw, ph,
    pw, dh, dw, ho, wo)."""
    device, dtype = x.device, x.dtype
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        raise ValueError(f"triton {op}: weight must be a 4-D tensor [Cout, Cin/groups, KH, KW], got "
                         f"{list(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__}")
    _check_device("weight", weight, device)
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
    sh, sw = _pair("stride", stride)
    ph, pw = _pair("padding", padding)
    dh, dw = _pair("dilation", dilation)
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"triton {op}: invalid stride {stride}, padding {padding} or dilation {dilation}")
    ho, wo = conv_out_hw(h, w, (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    if ho < 1 or wo < 1:
        raise ValueError(f"triton {op}: the output would be empty ({ho}x{wo}) for input {h}x{w}, "
                         f"kernel {kh}x{kw}")
    return groups, n, cin, h, w, cout, cin_g, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo


def _check_pair(op: str, names: tuple[str, str], scale: Optional[Tensor], shift: Optional[Tensor],
                n: int, device: torch.device) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """A (scale, shift) pair of per-channel vectors: both or neither, each fp32 of length n;
    returned as _check_vec returns them."""
    if (scale is None) != (shift is None):
        raise ValueError(f"triton {op}: {names[0]} and {names[1]} must be given together")
    return _check_vec(names[0], scale, n, device), _check_vec(names[1], shift, n, device)


def conv(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], in_scale: Optional[Tensor],
    in_shift: Optional[Tensor], residual: Optional[Tensor], stride: Sequence[int],
    padding: Sequence[int], dilation: Sequence[int], groups: int, relu: bool, stats: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``fused_resnet::conv`` on the Triton kernel (contract: ops.py, reference.conv)."""
    _check_activation("x", x)
    device, dtype = x.device, x.dtype
    groups, n, cin, h, w, cout, cin_g, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo = _conv_problem(
        "conv", x, weight, stride, padding, dilation, groups)
    bias = _check_vec("bias", bias, cout, device)
    in_scale, in_shift = _check_pair("conv", ("in_scale", "in_shift"), in_scale, in_shift, cin, device)
    if residual is not None:
        _check_activation("residual", residual)
        _check_device("residual", residual, device)
        if residual.dtype != dtype:
            raise TypeError(f"triton conv: residual has dtype {residual.dtype}, but x has {dtype} (they must match)")
        if tuple(residual.shape) != (n, cout, ho, wo):
            raise ValueError(f"triton conv: residual must have the output's shape {[n, cout, ho, wo]}, "
                             f"got {list(residual.shape)}")
    if n * cout * ho * wo >= _INT32_LIMIT:
        raise ValueError("triton conv: the output has 2**31 elements or more; the kernels index with int32")

    if n == 0:
        y = torch.empty((n, cout, ho, wo), dtype=dtype, device=device, memory_format=output_format(x))
        if not stats:
            return y, empty_vec(x), empty_vec(x)
        nan = torch.full((cout,), float("nan"), dtype=torch.float32, device=device)
        return y, nan, nan.clone()
    k = kernels()
    xk = _nhwc(x)
    wk = _kernel_weight(weight)
    rk = _nhwc(residual) if residual is not None else None
    y = torch.empty((n, cout, ho, wo), dtype=dtype, device=device, memory_format=torch.channels_last)
    m = n * ho * wo
    cout_g = cout // groups
    gp = _groups_per_program(groups, cin_g, cout_g)
    dummy = y  # stands in for absent optional pointers (never dereferenced)
    prec = _dot_precision(dtype)
    candidates = k.conv_configs(cin_g * gp, cout_g * gp, x.element_size())
    partials = {}

    def launch(cfg):
        bm, bn, bk, warps, stages = cfg
        if stats:
            if bm not in partials:
                tiles = triton_cdiv(m, bm)
                partials[bm] = (torch.empty((tiles, cout), dtype=torch.float32, device=device),
                                torch.empty((tiles, cout), dtype=torch.float32, device=device))
            pmean, pm2 = partials[bm]
        else:
            pmean = pm2 = dummy
        grid = (triton_cdiv(m, bm) * triton_cdiv(cout_g * gp, bn), groups // gp)
        k.conv_fwd_kernel[grid](
            xk, wk, y, bias if bias is not None else dummy,
            in_scale if in_scale is not None else dummy, in_shift if in_shift is not None else dummy,
            rk if rk is not None else dummy, pmean, pm2,
            m, h, w, cin, ho, wo, cout, cin_g * gp, cout_g * gp, cin_g, cout_g, sh, sw, ph, pw, dh, dw,
            dummy, dummy, dummy, dummy, 1, 1, 1, 1, 0,  # no shortcut (conv_shortcut's operands)
            KH=kh, KW=kw, HAS_PRO=in_scale is not None, HAS_BIAS=bias is not None,
            HAS_RES=residual is not None, RELU=bool(relu), STATS=bool(stats),
            EVEN_K=gp == 1 and cin_g % bk == 0,
            SC_MODE=0, SC_PRO=False, SC_EVEN_K=True,
            DOT_PRECISION=prec, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=k.GROUP_M,
            num_warps=warps, num_stages=stages,
        )

    key = ("conv", _bucket(m), cin, cout, kh, kw, sh, sw, ph, pw, dh, dw, groups, dtype, in_scale is not None,
           bias is not None, residual is not None, bool(relu), bool(stats), prec)
    with torch.cuda.device(device) if device.type == "cuda" else _nullcontext():
        cfg = _pick_config(key, candidates, launch, device)
        launch(cfg)
        if stats:
            pmean, pm2 = partials[cfg[0]]
            mean, var = _merge_stats(pmean, pm2, m, cfg[0], cout, device)
        else:
            mean, var = empty_vec(x), empty_vec(x)
    return _in_format(y, output_format(x)), mean, var


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
    _check_activation("x", x)
    device, dtype = x.device, x.dtype
    groups, n, cin, h, w, cout, cin_g, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo = _conv_problem(
        "conv_shortcut", x, weight, stride, padding, dilation, groups)
    bias = _check_vec("bias", bias, cout, device)
    in_scale, in_shift = _check_pair("conv_shortcut", ("in_scale", "in_shift"), in_scale, in_shift, cin, device)
    # ---- the shortcut's operands
    _check_activation("sc_x", sc_x)
    _check_device("sc_x", sc_x, device)
    if sc_x.dtype != dtype:
        raise TypeError(f"triton conv_shortcut: sc_x has dtype {sc_x.dtype}, but x has {dtype} (they must match)")
    if isinstance(sc_stride, bool) or not isinstance(sc_stride, int) or sc_stride < 1:
        raise ValueError(f"triton conv_shortcut: sc_stride must be a positive int, got {sc_stride!r}")
    sc_stride = int(sc_stride)
    sn, csc, h_sc, w_sc = sc_x.shape
    if sn != n:
        raise ValueError(f"triton conv_shortcut: sc_x has batch size {sn}, but x has {n}")
    sho, swo = triton_cdiv(h_sc, sc_stride), triton_cdiv(w_sc, sc_stride)
    if (sho, swo) != (ho, wo):
        raise ValueError(f"triton conv_shortcut: sc_x is {h_sc}x{w_sc}, which at sc_stride={sc_stride} gives "
                         f"{sho}x{swo}, but the conv's output is {ho}x{wo}")
    if sc_weight is not None:
        if not isinstance(sc_weight, Tensor):
            raise TypeError(f"triton conv_shortcut: sc_weight must be a tensor, got {type(sc_weight).__name__}")
        _check_device("sc_weight", sc_weight, device)
        if sc_weight.dtype != dtype:
            raise TypeError(f"triton conv_shortcut: sc_weight has dtype {sc_weight.dtype}, but x has {dtype} "
                            f"(they must match)")
        if tuple(sc_weight.shape) != (cout, csc, 1, 1):
            raise ValueError(f"triton conv_shortcut: sc_weight must have shape {[cout, csc, 1, 1]} "
                             f"([Cout, Csc, 1, 1]), got {list(sc_weight.shape)}")
    elif csc > cout:
        raise ValueError(f"triton conv_shortcut: option A (no sc_weight) pads sc_x's {csc} channels up to Cout={cout}, "
                         f"so sc_x must not have more channels than the output")
    sc_in_scale, sc_in_shift = _check_pair("conv_shortcut", ("sc_in_scale", "sc_in_shift"), sc_in_scale, sc_in_shift,
                                           csc, device)
    if n * cout * ho * wo >= _INT32_LIMIT:
        raise ValueError("triton conv_shortcut: the output has 2**31 elements or more; the kernels index with int32")

    if n == 0:
        return torch.empty((n, cout, ho, wo), dtype=dtype, device=device, memory_format=output_format(x))
    k = kernels()
    xk = _nhwc(x)
    wk = _kernel_weight(weight)
    sxk = _nhwc(sc_x)
    sc_mode = 1 if sc_weight is not None else 2
    y = torch.empty((n, cout, ho, wo), dtype=dtype, device=device, memory_format=torch.channels_last)
    swk = _kernel_weight(sc_weight) if sc_weight is not None else y  # [1, 1, Csc, Cout] = [Csc, Cout]
    m = n * ho * wo
    cout_g = cout // groups
    gp = _groups_per_program(groups, cin_g, cout_g)
    dummy = y  # stands in for absent optional pointers (never dereferenced)
    has_pro, sc_pro = in_scale is not None, sc_in_scale is not None
    prec = _dot_precision(dtype)
    candidates = k.conv_configs(cin_g * gp, cout_g * gp, x.element_size())

    def launch(cfg):
        bm, bn, bk, warps, stages = cfg
        grid = (triton_cdiv(m, bm) * triton_cdiv(cout_g * gp, bn), groups // gp)
        k.conv_fwd_kernel[grid](
            xk, wk, y, bias if bias is not None else dummy,
            in_scale if has_pro else dummy, in_shift if has_pro else dummy, dummy, dummy, dummy,
            m, h, w, cin, ho, wo, cout, cin_g * gp, cout_g * gp, cin_g, cout_g, sh, sw, ph, pw, dh, dw,
            sxk, swk, sc_in_scale if sc_pro else dummy, sc_in_shift if sc_pro else dummy,
            h_sc, w_sc, csc, sc_stride, (cout - csc) // 2,
            KH=kh, KW=kw, HAS_PRO=has_pro, HAS_BIAS=bias is not None, HAS_RES=False, RELU=bool(relu),
            STATS=False, EVEN_K=gp == 1 and cin_g % bk == 0, SC_MODE=sc_mode, SC_PRO=sc_pro, SC_EVEN_K=csc % bk == 0,
            DOT_PRECISION=prec, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=k.GROUP_M,
            num_warps=warps, num_stages=stages,
        )

    key = ("shortcut", _bucket(m), cin, cout, kh, kw, sh, sw, ph, pw, dh, dw, groups, dtype, has_pro,
           bias is not None, bool(relu), sc_mode, csc, sc_stride, sc_pro, prec)
    with torch.cuda.device(device) if device.type == "cuda" else _nullcontext():
        launch(_pick_config(key, candidates, launch, device))
    return _in_format(y, output_format(x))


def _groups_per_program(groups: int, cin_g: int, cout_g: int, width: int = 16) -> int:
    """How many consecutive groups one conv, dgrad or wgrad program packs (block-diagonally): the
    most, a power of two dividing ``groups``, whose channels still fit a ``width``-wide
    tensor-core tile. ResNeXt-50 32x4d: 4 in layer1 (4 channels a group), 2 in layer2."""
    gp = 1
    while groups % (2 * gp) == 0 and 2 * gp * max(cin_g, cout_g) <= width:
        gp *= 2
    return gp


def _in_format(y: Tensor, fmt: torch.memory_format) -> Tensor:
    """The dense NHWC ``y`` with exactly the strides a fresh tensor of format ``fmt`` has
    (what the op's fake implementation promises, size-1 dimensions included)."""
    if fmt == torch.channels_last:
        return y
    if y.is_contiguous():  # same memory order (size-1 dims only): relabel the strides, no copy
        return y.as_strided(y.shape, _contiguous_strides(y.shape))
    return y.contiguous(memory_format=fmt)


def _contiguous_strides(shape) -> tuple[int, ...]:
    strides, acc = [], 1
    for size in reversed(shape):
        strides.append(acc)
        acc *= max(int(size), 1)
    return tuple(reversed(strides))


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance (fp32): per-tile partials, then Chan's merge."""
    _check_activation("x", x)
    k = kernels()
    n, c, h, w = x.shape
    m = n * h * w
    if m == 0:
        nan = torch.full((c,), float("nan"), dtype=torch.float32, device=x.device)
        return nan, nan.clone()
    xk = _nhwc(x)
    bm, bc = (32, 16) if _interpreting() else (128, 64)
    tiles = triton_cdiv(m, bm)
    pmean = torch.empty((tiles, c), dtype=torch.float32, device=x.device)
    pm2 = torch.empty_like(pmean)
    with torch.cuda.device(x.device) if x.device.type == "cuda" else _nullcontext():
        k.stats_partial_kernel[(tiles, triton_cdiv(c, bc))](xk, pmean, pm2, m, c, BLOCK_M=bm, BLOCK_C=bc,
                                                           num_warps=4)
        return _merge_stats(pmean, pm2, m, bm, c, x.device)


def bn_act(
    y: Tensor, scale: Tensor, shift: Tensor, residual: Optional[Tensor],
    res_scale: Optional[Tensor], res_shift: Optional[Tensor], relu: bool,
) -> Tensor:
    """out = [relu](y*scale + shift + residual*res_scale + res_shift) in y's layout (NHWC or NCHW)."""
    _check_activation("y", y)
    device = y.device
    c = y.shape[1]
    scale, shift = _check_vec("scale", scale, c, device), _check_vec("shift", shift, c, device)
    if scale is None or shift is None:
        raise ValueError("triton bn_act: scale and shift are required")
    res_scale, res_shift = _check_pair("bn_act", ("res_scale", "res_shift"), res_scale, res_shift, c, device)
    if res_scale is not None and residual is None:
        raise ValueError("triton bn_act: res_scale/res_shift given without a residual")
    fmt = output_format(y)
    yk = y.contiguous(memory_format=fmt)
    if residual is not None:
        _check_activation("residual", residual)
        _check_device("residual", residual, device)
        if residual.dtype != y.dtype:
            raise TypeError(f"triton bn_act: residual has dtype {residual.dtype}, but y has {y.dtype}")
        if residual.shape != y.shape:
            raise ValueError(f"triton bn_act: residual must have y's shape {list(y.shape)}, got {list(residual.shape)}")
        rk = residual.contiguous(memory_format=fmt)
    out = torch.empty(y.shape, dtype=y.dtype, device=device, memory_format=fmt)
    if y.numel() == 0:
        return out
    on_cols, r_, l_, grid, br, bl = _elementwise_plan(y, fmt)
    with torch.cuda.device(device) if device.type == "cuda" else _nullcontext():
        kernels().bn_act_kernel[grid](
            yk, scale, shift, rk if residual is not None else yk,
            res_scale if res_scale is not None else scale, res_shift if res_shift is not None else shift,
            out, r_, l_, c,
            CHANNEL_ON_COLS=on_cols, HAS_RES=residual is not None, HAS_RSCALE=res_scale is not None,
            RELU=bool(relu), BLOCK_R=br, BLOCK_L=bl, num_warps=4,
        )
    return out


def _elementwise_plan(y: Tensor, fmt: torch.memory_format) -> tuple:
    """(channel_on_cols, R, L, grid, BLOCK_R, BLOCK_L) of a per-channel elementwise kernel over y
    viewed as [R, L] row-major: NHWC [N*H*W, C] (channel = column) or NCHW [N*C, H*W]."""
    n, c, h, w = y.shape
    on_cols = fmt == torch.channels_last
    r_, l_ = (n * h * w, c) if on_cols else (n * c, h * w)
    if _interpreting():
        bl = min(triton_next_pow2(l_), 64)
        br = max(1, 256 // bl)
    else:
        bl = min(triton_next_pow2(l_), 256)
        br = max(1, 4096 // bl)
    return on_cols, r_, l_, (triton_cdiv(r_, br), triton_cdiv(l_, bl)), br, bl


def batch_stats_backward(dmean: Tensor, dvar: Tensor, x: Tensor, mean: Tensor) -> Tensor:
    """dx of batch_stats in one pass, in x's layout (contract: reference.batch_stats_backward)."""
    _check_activation("x", x)
    device = x.device
    c = x.shape[1]
    dmean, dvar, mean = (_check_vec(name, t, c, device) for name, t in (("dmean", dmean), ("dvar", dvar),
                                                                         ("mean", mean)))
    fmt = output_format(x)
    dx = torch.empty(x.shape, dtype=x.dtype, device=device, memory_format=fmt)
    if x.numel() == 0:
        return dx
    on_cols, r_, l_, grid, br, bl = _elementwise_plan(x, fmt)
    with torch.cuda.device(device) if device.type == "cuda" else _nullcontext():
        kernels().batch_stats_bwd_kernel[grid](
            x.contiguous(memory_format=fmt), dmean, dvar, mean, dx,
            r_, l_, c, x.numel() // c, CHANNEL_ON_COLS=on_cols, BLOCK_R=br, BLOCK_L=bl, num_warps=4,
        )
    return dx


def _check_channel_vec(op: str, name: str, t: Optional[Tensor], n: int, device: torch.device,
                       writable: bool = False) -> Optional[Tensor]:
    """A per-channel vector of any float dtype (BatchNorm parameters and buffers keep the model's),
    returned contiguous (a writable one must be so already: it is updated in place)."""
    if t is None:
        return None
    if not isinstance(t, Tensor) or t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"triton {op}: {name} must be a vector of shape [{n}], got "
                         f"{list(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    _check_device(name, t, device)
    if t.dtype not in FLOAT_DTYPES + (torch.float64,):
        raise TypeError(f"triton {op}: {name} has dtype {t.dtype}, not a floating-point type")
    if writable and not t.is_contiguous():
        raise ValueError(f"triton {op}: {name} must be contiguous (it is updated in place)")
    return t.contiguous()


def _stats_vecs(op: str, mean: Tensor, var: Tensor) -> tuple[int, Tensor, Tensor]:
    """(channels, mean, var) of a statistics op: checked fp32 vectors, as _check_vec returns them."""
    if not isinstance(mean, Tensor) or mean.dim() != 1:
        raise ValueError(f"triton {op}: mean must be a 1-D per-channel vector, got "
                         f"{list(mean.shape) if isinstance(mean, Tensor) else type(mean).__name__}")
    c = mean.shape[0]
    return c, _check_vec("mean", mean, c, mean.device), _check_vec("var", var, c, mean.device)


def bn_finalize(mean: Tensor, var: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(scale, shift, invstd) of a batch-statistics BatchNorm in one launch (contract: reference.bn_finalize)."""
    c, mean, var = _stats_vecs("bn_finalize", mean, var)
    device = mean.device
    weight = _check_channel_vec("bn_finalize", "weight", weight, c, device)
    bias = _check_channel_vec("bn_finalize", "bias", bias, c, device)
    scale, shift, invstd = (torch.empty(c, dtype=torch.float32, device=device) for _ in range(3))
    if c == 0:
        return scale, shift, invstd
    block = 64 if _interpreting() else 1024
    with torch.cuda.device(device) if device.type == "cuda" else _nullcontext():
        kernels().bn_finalize_kernel[(triton_cdiv(c, block),)](
            mean, var, weight if weight is not None else mean,
            bias if bias is not None else mean, scale, shift, invstd, c, float(eps),
            HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, BLOCK_C=block, num_warps=4,
        )
    return scale, shift, invstd


def bn_update_running(mean: Tensor, var: Tensor, count: int, running_mean: Tensor, running_var: Tensor,
                      num_batches_tracked: Optional[Tensor], momentum: Optional[float]) -> None:
    """nn.BatchNorm2d's running-statistics update in one launch (contract: reference.bn_update_running)."""
    op = "bn_update_running"
    c, mean, var = _stats_vecs(op, mean, var)
    device = mean.device
    if count <= 1:
        raise ValueError(f"triton {op}: count (values per channel in the batch) must be > 1, got {count}")
    _check_channel_vec(op, "running_mean", running_mean, c, device, writable=True)
    _check_channel_vec(op, "running_var", running_var, c, device, writable=True)
    if num_batches_tracked is not None:
        _check_device("num_batches_tracked", num_batches_tracked, device)
        if num_batches_tracked.dtype != torch.int64 or num_batches_tracked.numel() != 1:
            raise TypeError(f"triton {op}: num_batches_tracked must be one int64 value, got "
                            f"{num_batches_tracked.dtype} of shape {list(num_batches_tracked.shape)}")
    mode = 0 if momentum is not None else (1 if num_batches_tracked is not None else 2)
    nbt = num_batches_tracked if num_batches_tracked is not None else mean
    block = 64 if _interpreting() else 1024
    with torch.cuda.device(device) if device.type == "cuda" else _nullcontext():
        kernels().bn_update_running_kernel[(1,)](
            mean, var, running_mean, running_var, nbt, c, count / (count - 1),
            float(momentum) if momentum is not None else 0.0,
            MOMENTUM_MODE=mode, HAS_NBT=num_batches_tracked is not None, BLOCK_C=block, num_warps=4,
        )


def bn_finalize_backward(dscale: Tensor, dshift: Tensor, dinvstd: Optional[Tensor], mean: Tensor,
                         weight: Optional[Tensor], scale: Tensor, invstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``fused_resnet::bn_finalize_backward`` in one launch (contract: reference.bn_finalize_backward)."""
    op = "bn_finalize_backward"
    c, mean, invstd = _stats_vecs(op, mean, invstd)
    device = mean.device
    dscale, dshift, dinvstd, scale = (_check_vec(name, t, c, device) for name, t in (
        ("dscale", dscale), ("dshift", dshift), ("dinvstd", dinvstd), ("scale", scale)))
    weight = _check_channel_vec(op, "weight", weight, c, device)
    dmean, dvar = torch.empty_like(mean), torch.empty_like(mean)
    dweight = torch.empty(c, dtype=torch.float32, device=device) if weight is not None else empty_vec(mean)
    if c == 0:
        return dmean, dvar, dweight
    block = 64 if _interpreting() else 1024
    with torch.cuda.device(device) if device.type == "cuda" else _nullcontext():
        backward_kernels().bn_finalize_bwd_kernel[(triton_cdiv(c, block),)](
            dscale, dshift, dinvstd if dinvstd is not None else mean, mean,
            weight if weight is not None else mean, scale, invstd, dmean, dvar,
            dweight if weight is not None else dmean, c,
            HAS_WEIGHT=weight is not None, HAS_DINVSTD=dinvstd is not None, BLOCK_C=block, num_warps=4,
        )
    return dmean, dvar, dweight


# ----------------------------------------------------------------------------- backward


def _kernel_weight_dgrad(weight: Tensor) -> Tensor:
    """[Cout, Cin/g, KH, KW] -> dense [KH, KW, Cout, Cin/g] (the dgrad GEMM's B operand,
    coalesced along input channels)."""
    return _permuted_weight(weight, (2, 3, 0, 1))


def _deterministic() -> bool:
    return torch.are_deterministic_algorithms_enabled()


def _bwd_candidates(cands: list) -> list:
    """Under deterministic algorithms only the heuristic configuration (timing-independent bits)."""
    return cands[:1] if _deterministic() else cands


# Partial rows per chunk of the first level of _sum_partials: at least this many, and
# enough that the second level reads at most _SUM_MAX_CHUNKS rows. Fixed numbers, not
# the GPU's size: the summation order, and so the bits, are the same on every device.
_SUM_CHUNK_ROWS = 16
_SUM_MAX_CHUNKS = 1024


def _sum_partials(p: Tensor) -> list[Tensor]:
    """[S, T, C] fp32 partials (S <= 3) -> S separate [C] vectors, summed over T in a fixed
    order (deterministic). Many rows go through two levels: chunks of rows summed on
    (C blocks x S x chunks) programs, then the chunk sums in order, so the work is spread
    over the GPU instead of a few programs looping over every row."""
    s_, t_, c_ = p.shape
    kb = backward_kernels()
    outs = [torch.empty(c_, dtype=torch.float32, device=p.device) for _ in range(s_)]
    ptrs = outs + [outs[0]] * (3 - s_)  # rows beyond S are never stored
    bt, bc = (4, 16) if _interpreting() else (32, 64)
    chunk_bt = 4 if _interpreting() else _SUM_CHUNK_ROWS
    rows = max(_SUM_CHUNK_ROWS, triton_cdiv(triton_cdiv(t_, _SUM_MAX_CHUNKS), chunk_bt) * chunk_bt)
    if t_ > 2 * rows:
        nch = triton_cdiv(t_, rows)
        q = torch.empty((s_, nch, c_), dtype=torch.float32, device=p.device)
        kb.sum_partials_chunks_kernel[(triton_cdiv(c_, bc), s_, nch)](p, q, t_, c_, nch, rows, BLOCK_T=chunk_bt,
                                                                      BLOCK_C=bc, num_warps=4)
        p, t_ = q, nch
    kb.sum_partials_kernel[(triton_cdiv(c_, bc), s_)](p, *ptrs, t_, c_, BLOCK_T=bt, BLOCK_C=bc, num_warps=4)
    return outs


def _grad_vec(name: str, t: Tensor, n: int, device) -> Tensor:
    if not isinstance(t, Tensor) or t.numel() != n:
        raise ValueError(f"triton conv_backward: {name} must have {n} elements when stats=True, got "
                         f"{list(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    _check_device(name, t, device)
    return t.reshape(n).to(torch.float32).contiguous()


def conv_backward(
    dy: Tensor, dmean: Tensor, dvar: Tensor, x: Tensor, weight: Tensor, y: Tensor, mean: Tensor,
    in_scale: Optional[Tensor], in_shift: Optional[Tensor], stride: Sequence[int], padding: Sequence[int],
    dilation: Sequence[int], groups: int, relu: bool, stats: bool, output_mask: Sequence[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``fused_resnet::conv_backward`` on the Triton kernels (contract: ops.py, reference.conv_backward)."""
    _check_activation("x", x)
    _check_activation("dy", dy)
    _check_activation("y", y)
    device, dtype = x.device, x.dtype
    for name, t in (("dy", dy), ("y", y), ("weight", weight)):
        _check_device(name, t, device)
        if t.dtype != dtype:
            raise TypeError(f"triton conv_backward: {name} has dtype {t.dtype}, but x has {dtype} (they must match)")
    if weight.dim() != 4:
        raise ValueError(f"triton conv_backward: weight must be 4-D, got shape {list(weight.shape)}")
    need_x, need_w, need_bias, need_scale, need_shift, need_res = (bool(b) for b in output_mask)
    groups = int(groups)
    n, cin, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    if groups < 1 or cin % groups or cout % groups or cin_g != cin // groups:
        raise ValueError(f"triton conv_backward: weight {list(weight.shape)} does not fit x with Cin={cin} "
                         f"and groups={groups}")
    sh, sw = _pair("stride", stride)
    ph, pw = _pair("padding", padding)
    dh, dw_ = _pair("dilation", dilation)
    ho, wo = conv_out_hw(h, w, (kh, kw), (sh, sw), (ph, pw), (dh, dw_))
    if tuple(dy.shape) != (n, cout, ho, wo) or tuple(y.shape) != (n, cout, ho, wo):
        raise ValueError(f"triton conv_backward: dy and y must have the output's shape {[n, cout, ho, wo]}, "
                         f"got {list(dy.shape)} and {list(y.shape)}")
    has_pro = in_scale is not None
    in_scale, in_shift = _check_pair("conv_backward", ("in_scale", "in_shift"), in_scale, in_shift, cin, device)
    if (need_scale or need_shift) and not has_pro:
        raise ValueError("triton conv_backward: in_scale/in_shift gradients asked for without a prologue")
    if n * cout * ho * wo >= _INT32_LIMIT or n * cin * h * w >= _INT32_LIMIT:
        raise ValueError("triton conv_backward: tensors of 2**31 elements or more (the kernels index with int32)")
    if n == 0:  # empty batch: nothing to launch; the sums over no rows are zeros
        def vec(c, m):
            return torch.zeros(c, dtype=torch.float32, device=device) if m else empty_vec(x)
        return (empty_like_layout(x, x.shape) if need_x else empty_vec(x),
                torch.zeros_like(weight, memory_format=torch.contiguous_format) if need_w else empty_vec(x),
                vec(cout, need_bias), vec(cin, need_scale), vec(cin, need_shift),
                empty_like_layout(x, (n, cout, ho, wo)) if need_res else empty_vec(x))

    kb = backward_kernels()
    fmt = output_format(x)
    m_out = n * ho * wo
    m_in = n * h * w
    cout_g = cout // groups
    gp = _groups_per_program(groups, cin_g, cout_g)
    dyk = _nhwc(dy)
    yk = _nhwc(y)
    vdummy = in_scale if has_pro else torch.empty(1, dtype=torch.float32, device=device)
    if stats:  # the kernels scale dmean and dvar by 1/M as they load them
        dm_, dv_, mu_ = (_grad_vec(name, t, cout, device) for name, t in (("dmean", dmean), ("dvar", dvar),
                                                                          ("mean", mean)))
    else:
        dm_ = dv_ = mu_ = vdummy
    inv_m = 1.0 / m_out
    sc_, sf_ = (in_scale, in_shift) if has_pro else (vdummy, vdummy)
    prec = _dot_precision(dtype)
    ctx = torch.cuda.device(device) if device.type == "cuda" else _nullcontext()
    dx = dw = dbias = dscale = dshift = dres = None
    with ctx:
        # ---- outputs that are g itself: dresidual, dbias
        if need_res or need_bias:
            bm, bc = (16, 16) if _interpreting() else (64, 64)
            tiles = triton_cdiv(m_out, bm)
            dres_k = torch.empty((n, cout, ho, wo), dtype=dtype, device=device,
                                 memory_format=torch.channels_last) if need_res else dyk
            psum = torch.empty((1, tiles, cout), dtype=torch.float32, device=device) if need_bias else vdummy
            kb.conv_grad_out_kernel[(tiles, triton_cdiv(cout, bc))](
                dyk, yk, dm_, dv_, mu_, inv_m, dres_k, psum, m_out, cout,
                STATS=bool(stats), RELU=bool(relu), NEED_RES=need_res, NEED_SUM=need_bias,
                BLOCK_M=bm, BLOCK_C=bc, num_warps=4,
            )
            if need_res:
                dres = _in_format(dres_k, fmt)
            if need_bias:
                dbias = _sum_partials(psum)[0]

        xk = _nhwc(x) if (need_w or has_pro) else None
        # ---- dgrad (+ prologue backward)
        if need_x or need_scale or need_shift:
            wd = _kernel_weight_dgrad(weight)
            dx_k = torch.empty((n, cin, h, w), dtype=dtype, device=device,
                               memory_format=torch.channels_last) if need_x else dyk
            need_psum = need_scale or need_shift
            cands = _bwd_candidates(kb.dgrad_configs(cin_g * gp, cout_g * gp, x.element_size()))
            partials = {}

            # Undilated strided convolutions: one phase per (ih mod sh, iw mod sw).
            qh, qw = (sh, sw) if dh == 1 and dw_ == 1 else (1, 1)
            m_phase = n * triton_cdiv(h, qh) * triton_cdiv(w, qw)

            def launch_d(cfg):
                bm, bn, bk, warps, stages = cfg
                nt = qh * qw * triton_cdiv(m_phase, bm)
                if need_psum and bm not in partials:
                    partials[bm] = torch.empty((2, nt, cin), dtype=torch.float32, device=device)
                ps = partials[bm] if need_psum else vdummy
                grid = (triton_cdiv(m_phase, bm) * triton_cdiv(cin_g * gp, bn), groups // gp * qh * qw)
                kb.conv_dgrad_kernel[grid](
                    dyk, yk, wd, xk if has_pro else dyk, dx_k, dm_, dv_, mu_, inv_m, sc_, sf_, ps,
                    m_phase, h, w, cin, ho, wo, cout, cin_g * gp, cout_g * gp, cin_g, cout_g, nt, n, qh, qw,
                    sh, sw, ph, pw, dh, dw_,
                    KH=kh, KW=kw, HAS_PRO=has_pro, STATS=bool(stats), RELU=bool(relu),
                    NEED_DX=need_x or not has_pro, NEED_PSUM=need_psum, EVEN_K=gp == 1 and cout_g % bk == 0,
                    DOT_PRECISION=prec, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=kb.GROUP_M,
                    num_warps=warps, num_stages=stages,
                )

            key = ("dgrad", _bucket(m_in), cin, cout, h, w, kh, kw, sh, sw, ph, pw, dh, dw_, groups, dtype, has_pro,
                   bool(stats), bool(relu), need_x, need_psum, prec)
            cfg = _pick_config(key, cands, launch_d, device)
            launch_d(cfg)
            if need_x:
                dx = _in_format(dx_k, fmt)
            if need_psum:
                dscale, dshift = _sum_partials(partials[cfg[0]])

        # ---- wgrad (split-K over rows, ordered reduce)
        if need_w:
            cands = _bwd_candidates(kb.wgrad_configs(cin_g * gp, cout_g * gp, x.element_size()))
            dw_out = torch.empty((cout, cin_g, kh, kw), dtype=dtype, device=device)
            sms = (torch.cuda.get_device_properties(device).multi_processor_count
                   if device.type == "cuda" else 132)
            parts = {}

            def launch_w(cfg, reduce=True):
                bm, bci, bco, warps, stages = cfg
                tiles = kh * kw * triton_cdiv(cin_g * gp, bci) * triton_cdiv(cout_g * gp, bco)
                splits, per = kb.wgrad_splits(m_out, tiles * (groups // gp), bm, sms)
                pk = (splits, per)
                if pk not in parts:
                    parts[pk] = torch.empty((splits, kh * kw, cin_g, cout), dtype=torch.float32, device=device)
                part = parts[pk]
                kb.conv_wgrad_kernel[(tiles, splits, groups // gp)](
                    dyk, yk, xk, part, dm_, dv_, mu_, inv_m, sc_, sf_,
                    m_out, h, w, cin, ho, wo, cout, cin_g * gp, cout_g * gp, cin_g, cout_g, per,
                    sh, sw, ph, pw, dh, dw_,
                    KH=kh, KW=kw, HAS_PRO=has_pro, STATS=bool(stats), RELU=bool(relu), DOT_PRECISION=prec,
                    BLOCK_M=bm, BLOCK_CI=bci, BLOCK_CO=bco, num_warps=warps, num_stages=stages,
                )
                if reduce:
                    # Small weights still spread over 4 x SMs programs: each loops over every split.
                    e = kh * kw * cin_g * cout
                    blk = 128 if _interpreting() else max(32, min(512, triton_next_pow2(triton_cdiv(e, 4 * sms))))
                    kb.wgrad_reduce_kernel[(triton_cdiv(e, blk),)](
                        part, dw_out, splits, kh * kw, cin_g, cout, BLOCK=blk, num_warps=4 if blk >= 512 else 1)

            key = ("wgrad", _bucket(m_out), cin, cout, h, w, kh, kw, sh, sw, ph, pw, dh, dw_, groups, dtype, has_pro,
                   bool(stats), bool(relu), prec)
            cfg = _pick_config(key, cands, launch_w, device)
            launch_w(cfg)
            dw = dw_out

    e = empty_vec(x)
    return (dx if need_x else e, dw if need_w else empty_vec(x), dbias if need_bias else empty_vec(x),
            dscale if need_scale else empty_vec(x), dshift if need_shift else empty_vec(x),
            dres if need_res else empty_vec(x))


def bn_act_backward(
    dout: Tensor, out: Tensor, y: Tensor, scale: Tensor, residual: Optional[Tensor],
    res_scale: Optional[Tensor], relu: bool, output_mask: Sequence[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``fused_resnet::bn_act_backward`` on one elementwise kernel + an ordered per-channel reduce."""
    _check_activation("y", y)
    device, dtype = y.device, y.dtype
    n, c, h, w = y.shape
    for name, t in (("dout", dout), ("out", out)):
        _check_activation(name, t)
        _check_device(name, t, device)
        if t.dtype != dtype or t.shape != y.shape:
            raise ValueError(f"triton bn_act_backward: {name} must match y ({dtype}, {list(y.shape)}), got "
                             f"{t.dtype}, {list(t.shape)}")
    scale, res_scale = _check_vec("scale", scale, c, device), _check_vec("res_scale", res_scale, c, device)
    need_y, need_scale, need_shift, need_res, need_rscale, need_rshift = (bool(b) for b in output_mask)
    if (need_res or need_rscale or need_rshift) and residual is None:
        raise ValueError("triton bn_act_backward: residual gradients asked for without a residual")
    if residual is not None:
        _check_activation("residual", residual)
        _check_device("residual", residual, device)
        if residual.dtype != dtype or residual.shape != y.shape:
            raise ValueError("triton bn_act_backward: residual must match y's dtype and shape")
    if need_rscale and res_scale is None:
        raise ValueError("triton bn_act_backward: res_scale gradient asked for without res_scale")
    fmt = output_format(y)
    e = empty_vec(y)
    if y.numel() == 0:
        from .. import reference as _ref
        return _ref.bn_act_backward(dout, out, y, scale, residual, res_scale, relu, output_mask)
    kb = backward_kernels()
    dk = dout.contiguous(memory_format=fmt)
    ok = out.contiguous(memory_format=fmt) if relu else dk
    yk = y.contiguous(memory_format=fmt) if need_scale else dk
    rk = residual.contiguous(memory_format=fmt) if (need_rscale and residual is not None) else dk
    dy = torch.empty(y.shape, dtype=dtype, device=device, memory_format=fmt) if need_y else dk
    dres = torch.empty(y.shape, dtype=dtype, device=device, memory_format=fmt) if need_res else dk
    on_cols = fmt == torch.channels_last
    r_, l_ = (n * h * w, c) if on_cols else (n * c, h * w)
    need_sum = need_shift or need_rshift
    any_sum = need_scale or need_sum or need_rscale
    if on_cols:
        if _interpreting():
            bl = min(triton_next_pow2(l_), 32)
            br = max(1, 128 // bl)
        else:
            bl = min(triton_next_pow2(l_), 128)
            br = max(1, 4096 // bl)
        t_ = triton_cdiv(r_, br)
        grid = (t_, triton_cdiv(l_, bl))
    else:
        bl = min(triton_next_pow2(l_), 32 if _interpreting() else 256)
        br = 4 if _interpreting() else 16
        t_ = n
        grid = (triton_cdiv(r_, br), 1)
    psum = torch.empty((3, t_, c), dtype=torch.float32, device=device) if any_sum else dk
    rs = res_scale if res_scale is not None else scale
    with torch.cuda.device(device) if device.type == "cuda" else _nullcontext():
        kb.bn_act_bwd_kernel[grid](
            dk, ok, yk, scale, rk, rs, dy, dres, psum, r_, l_, c, t_,
            CHANNEL_ON_COLS=on_cols, RELU=bool(relu), HAS_RSCALE=res_scale is not None,
            NEED_Y=need_y, NEED_SCALE=need_scale, NEED_SUM=need_sum, NEED_RES=need_res, NEED_RSCALE=need_rscale,
            BLOCK_R=br, BLOCK_L=bl, num_warps=4,
        )
        sums = _sum_partials(psum) if any_sum else None
    if need_res:
        dres = dres.contiguous(memory_format=output_format(residual))
    return (
        dy if need_y else e,
        sums[0] if need_scale else empty_vec(y),
        sums[1] if need_shift else empty_vec(y),
        dres if need_res else empty_vec(y),
        sums[2] if need_rscale else empty_vec(y),
        (sums[1].clone() if need_shift else sums[1]) if need_rshift else empty_vec(y),  # no two returns alias
    )


def triton_next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


class TritonBackend(Backend):
    name = "triton"

    def available(self) -> tuple[bool, str]:
        try:
            import triton  # noqa: F401
        except ImportError as e:
            return False, f"triton is not importable ({e})"
        if not _interpreting() and not torch.cuda.is_available():
            return False, "no CUDA GPU is visible and TRITON_INTERPRET=1 is not set"
        return True, ""

    def auto_reason(self, device: torch.device) -> str:
        # The interpreter is a testing tool: backend="auto" never picks it for CPU tensors.
        return "" if device.type == "cuda" else "the Triton interpreter runs only when asked for by name"

    def supports(self, device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
        if dtype not in FLOAT_DTYPES:
            return False, f"dtype {dtype} is not one of fp32/fp16/bf16"
        if dtype == torch.bfloat16 and _interpreting():
            return False, f"bfloat16 is a dtype {_INTERPRETER_BF16}"
        if device.type == "cpu" and not _interpreting():
            return False, "CPU tensors run only under TRITON_INTERPRET=1"
        if device.type not in ("cpu", "cuda"):
            return False, f"device type {device.type!r} is not CUDA"
        return True, ""

    conv = staticmethod(conv)
    conv_shortcut = staticmethod(conv_shortcut)
    batch_stats = staticmethod(batch_stats)
    batch_stats_backward = staticmethod(batch_stats_backward)
    bn_finalize = staticmethod(bn_finalize)
    bn_finalize_backward = staticmethod(bn_finalize_backward)
    bn_update_running = staticmethod(bn_update_running)
    bn_act = staticmethod(bn_act)
    conv_backward = staticmethod(conv_backward)
    bn_act_backward = staticmethod(bn_act_backward)
