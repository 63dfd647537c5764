"""Launchers of ``fused_resnet::batch_stats`` and ``fused_resnet::batch_stats_backward`` on the kernels
of ``kernels/batch_stats.py``; ``merge_stats`` also reduces the statistics conv's epilogue takes."""
from __future__ import annotations

import torch
from torch import Tensor

from ..._layout import output_format
from . import _common


def batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance (fp32): per-tile partials, then Chan's merge."""
    import triton

    from ...kernels import batch_stats as kernels

    _common.check_activation("x", x)
    n, c, h, w = x.shape
    m = n * h * w
    if m == 0:
        nan = torch.full((c,), float("nan"), dtype=torch.float32, device=x.device)
        return nan, nan.clone()
    xk = _common.nhwc(x)
    bm, bc = (32, 16) if _common.interpreting() else (128, 64)
    tiles = triton.cdiv(m, bm)
    pmean = torch.empty((tiles, c), dtype=torch.float32, device=x.device)
    pm2 = torch.empty_like(pmean)
    with _common.on_device(x.device):
        kernels.batch_stats_partial_kernel[(tiles, triton.cdiv(c, bc))](xk, pmean, pm2, m, c, BLOCK_M=bm,
                                                                       BLOCK_C=bc, num_warps=4)
        return merge_stats(pmean, pm2, m, bm, c, x.device)


def merge_stats(pmean: Tensor, pm2: Tensor, m: int, tile_m: int, c: int, device) -> tuple[Tensor, Tensor]:
    """mean and biased var from per-tile partials: one merge launch, or two when there are
    many tiles (chunks of tiles merged in parallel, then the chunks), in a fixed order."""
    import triton

    from ...kernels import batch_stats as kernels

    mean = torch.empty(c, dtype=torch.float32, device=device)
    var = torch.empty(c, dtype=torch.float32, device=device)
    t = pmean.shape[0]
    if _common.interpreting():
        block_c, block_t, per_prog, warps = 16, 4, 8, 1
    else:
        block_c, block_t, per_prog, warps = 32, 64, 128, 4
    if t > per_prog:
        chunks = triton.cdiv(t, per_prog)
        cmean = torch.empty((chunks, c), dtype=torch.float32, device=device)
        cm2 = torch.empty_like(cmean)
        kernels.batch_stats_merge_kernel[(triton.cdiv(c, block_c), chunks)](
            pmean, pm2, cmean, cm2, t, c, m, tile_m, per_prog,
            FINAL=False, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=warps,
        )
        pmean, pm2, t, tile_m = cmean, cm2, chunks, tile_m * per_prog
    kernels.batch_stats_merge_kernel[(triton.cdiv(c, block_c), 1)](
        pmean, pm2, mean, var, t, c, m, tile_m, t,
        FINAL=True, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=warps,
    )
    return mean, var


def batch_stats_backward(dmean: Tensor, dvar: Tensor, x: Tensor, mean: Tensor) -> Tensor:
    """dx of batch_stats in one pass, in x's layout (contract: reference.batch_stats_backward)."""
    from ...kernels import batch_stats as kernels

    _common.check_activation("x", x)
    device = x.device
    c = x.shape[1]
    dmean, dvar, mean = (_common.check_vec(name, t, c, device) for name, t in (("dmean", dmean), ("dvar", dvar),
                                                                                ("mean", mean)))
    fmt = output_format(x)
    dx = torch.empty(x.shape, dtype=x.dtype, device=device, memory_format=fmt)
    if x.numel() == 0:
        return dx
    on_cols, r_, l_, grid, br, bl = _common.elementwise_plan(x, fmt)
    with _common.on_device(device):
        kernels.batch_stats_backward_kernel[grid](
            x.contiguous(memory_format=fmt), dmean, dvar, mean, dx,
            r_, l_, c, x.numel() // c, CHANNEL_ON_COLS=on_cols, BLOCK_R=br, BLOCK_L=bl, num_warps=4,
        )
    return dx
