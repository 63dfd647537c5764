"""Helpers shared by the Triton kernel modules: interpreter detection, autotuning-candidate
clamping, the compile check's divisibility attributes, and the device functions the kernels call
(``relu``, ``relu_passes``, ``bn_relu``, ``dot``, ``channel_tile``, ``per_channel``).

No kernels here.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def relu(x):
    """max(x, 0) keeping NaN, as torch.relu does (tl.maximum's default returns 0 for a NaN,
    which would hide a diverging activation behind finite outputs)."""
    return tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def relu_passes(v):
    """Where ReLU's gradient passes, by torch's rule (zero where v <= 0): a NaN passes it."""
    return (v > 0) | (v != v)


@triton.jit
def bn_relu(a, sc, sf, mask):
    """The prologue on a loaded operand tile: relu(a*scale + shift) per column, computed in
    fp32 and rounded once to a's dtype; zero where ``mask`` is off, so padding is applied
    after the transform (relu(0*s + t) = relu(t) is not zero)."""
    u = relu(a.to(tl.float32) * sc[None, :] + sf[None, :]).to(a.dtype)
    return tl.where(mask, u, tl.zeros_like(u))


@triton.jit
def _round_to_tf32(v):
    return tl.inline_asm_elementwise("cvt.rna.tf32.f32 $0, $1;", "=r,r", [v], dtype=tl.float32, is_pure=True,
                                     pack=1)


@triton.jit
def dot(a, b, acc, DOT_PRECISION: tl.constexpr):
    """acc + a @ b. fp32 operands of a TF32 product are first rounded to TF32 (to nearest),
    as cuBLAS and cuDNN do: the tensor cores would otherwise drop their low 13 mantissa
    bits, a truncation toward zero whose bias adds up through a network's layers (on an
    H100, without this rounding, ResNet fp32 logits came out 13-27x further from fp64
    than eager PyTorch's TF32 convolutions)."""
    if DOT_PRECISION == "tf32":
        if a.dtype == tl.float32:
            a = _round_to_tf32(a)
        if b.dtype == tl.float32:
            b = _round_to_tf32(b)
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def channel_tile(R, L, C, CHANNEL_ON_COLS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
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
def per_channel(v, CHANNEL_ON_COLS: tl.constexpr):
    """A vector over channel_tile's channels, broadcastable against its tile."""
    if CHANNEL_ON_COLS:
        return v[None, :]
    else:
        return v[:, None]


# Tiles of the implicit GEMMs (conv, dgrad) are visited GROUP_M rows of tiles at a time, so
# neighbouring programs share A rows in L2.
GROUP_M = 8


def _pow2_at_least(n: int, lo: int) -> int:
    return max(lo, triton.next_power_of_2(max(int(n), 1)))


def clamp_configs(first, configs, n_ch: int, k_ch: int, elem_size: int,
                  fp32_slot: int) -> list[tuple[int, int, int, int, int]]:
    """``(first,) + configs`` (5-tuples: three block sizes, num_warps, num_stages) with the
    second block clamped to ``n_ch`` and the third to ``k_ch`` (each rounded up to a power
    of two, at least 16); for fp32 tiles (``elem_size`` 4, twice the shared memory) block
    ``fp32_slot`` is at most 32 and num_stages at most 3. Duplicates dropped, order kept."""
    out = []
    for cfg in (first,) + tuple(configs):
        blocks = list(cfg)
        blocks[1] = min(blocks[1], _pow2_at_least(n_ch, 16))
        blocks[2] = min(blocks[2], _pow2_at_least(k_ch, 16))
        if elem_size == 4:
            blocks[fp32_slot] = min(blocks[fp32_slot], 32)
            blocks[4] = min(blocks[4], 3)
        cfg = tuple(blocks)
        if cfg not in out:
            out.append(cfg)
    return out


def divisibility_attrs(fn, names):
    """ASTSource attrs marking ``names`` 16-divisible, as the JIT does for aligned launches."""
    return {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in names}
