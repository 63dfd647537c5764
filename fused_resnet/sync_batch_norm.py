"""Batch statistics over a process group, for the fused blocks' ``nn.SyncBatchNorm`` layers.

A fused block computes each BatchNorm's per-channel batch statistics (mean and biased
variance of its rank's shard) in a convolution's epilogue. For a SyncBatchNorm they are
merged across the process group here, between that epilogue and the BatchNorm's
finalize, so the fused ops downstream see the global statistics and nothing else changes.

Forward, one collective: every rank contributes ``[count, mean, var]`` (an all-gather into
one tensor), and every rank merges them in rank order with Chan's formula,

    N = sum_q n_q,   M = sum_q n_q m_q / N,   V = sum_q n_q (v_q + (m_q - M)^2) / N,

which sums deviations from the global mean, never raw second moments (E[x^2] - E[x]^2
over a large batch with a large mean loses the digits this keeps). Uneven shards weigh
by their counts; an empty shard weighs nothing.

Backward, one collective. Every rank's loss depends on the same (M, V), so the gradient
at (M, V) is the sum over ranks of each rank's (all_reduce). With those sums G_M, G_V,
and since sum_q n_q (m_q - M) = 0 removes M's own dependence from dV/dm_r:

    dL/dm_r = n_r / N * (G_M + 2 (m_r - M) G_V),     dL/dv_r = n_r / N * G_V.

This is the same exchange as nn.SyncBatchNorm's backward (its all-reduced sums of dy and
dy * (x - mean) are G_M and G_V up to the factors above); the rest of the BatchNorm
backward stays in the fused ops. The merge runs in fp64 on C-element vectors.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


# torch 2.14 renamed all_gather_into_tensor (one output tensor, no per-rank list to stack).
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def process_group(bn: nn.Module):
    """The group whose batch ``bn`` normalises over, or None where it normalises its own
    shard: as nn.SyncBatchNorm decides, only a SyncBatchNorm in training mode, with
    torch.distributed initialised and more than one rank in its group (its
    ``process_group``, else the default group) synchronises. Without an initialised
    process group it is a plain BatchNorm, as nn.SyncBatchNorm is."""
    if not (isinstance(bn, nn.SyncBatchNorm) and bn.training):
        return None
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = bn.process_group or dist.group.WORLD
    if isinstance(group, int) and group == dist.GroupMember.NON_GROUP_MEMBER:
        return None  # what new_group gives a rank outside the group: it normalises its own shard
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"SyncBatchNorm.process_group must be a torch.distributed.ProcessGroup (as "
                        f"torch.distributed.new_group returns), got {type(group).__name__}: {group!r}")
    return group if dist.get_world_size(group) > 1 else None


def sync_batch_stats(mean: Tensor, var: Tensor, count: int, group) -> tuple[Tensor, Tensor, Tensor]:
    """``(mean, var, total count)`` of the whole group's batch from this rank's ``(mean,
    var)`` over ``count`` values per channel; mean and var differentiable, the count an
    fp64 scalar tensor (on the device: reading it would stall the host at every BatchNorm)."""
    mine = _pack(mean, var, count)
    rows = mine.new_empty(dist.get_world_size(group), mine.numel())
    _all_gather(rows.view(-1), mine, group=group)
    g_mean, g_var = _SyncBatchStats.apply(mean, var, rows, group)
    return g_mean, g_var, rows[:, 0].sum()


def running_var_operands(var: Tensor, total: Tensor) -> tuple[Tensor, int]:
    """``(var', count')`` that make ``bn_update_running`` store the unbiased variance
    ``var * total / (total - 1)`` of the group's batch, as nn.SyncBatchNorm does.

    The op takes the count as a host integer and multiplies by count / (count - 1); the
    total lives on the device, so the factor is applied here instead and the op gets the
    count 2, whose factor 2 (undoing the 1/2 below) is exact in every dtype.
    """
    return (var.double() * (total / (total - 1)) * 0.5).to(var.dtype), 2


def _pack(mean: Tensor, var: Tensor, count: int) -> Tensor:
    # An empty shard's statistics are 0/0; it contributes nothing, so it sends zeros.
    m, v = (mean, var) if count else (torch.zeros_like(mean), torch.zeros_like(var))
    return torch.cat([m.new_full((1,), float(count)), m.detach(), v.detach()]).double()


def _merge(rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(each rank's weight n_q / N, mean, biased var) of the group from the rows [count, mean, var]."""
    c = (rows.shape[1] - 1) // 2
    n, m, v = rows[:, :1], rows[:, 1:1 + c], rows[:, 1 + c:]
    weight = n / n.sum()
    mean = (weight * m).sum(0)
    var = (weight * (v + (m - mean).square_())).sum(0)
    return weight.view(-1), mean, var


class _SyncBatchStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mean: Tensor, var: Tensor, rows: Tensor, group):
        weight, g_mean, g_var = _merge(rows)
        ctx.group, ctx.rank = group, dist.get_rank(group)
        ctx.save_for_backward(rows, weight, g_mean)
        return g_mean.to(mean.dtype), g_var.to(var.dtype)

    @staticmethod
    def backward(ctx, d_mean: Tensor, d_var: Tensor):
        rows, weight, g_mean = ctx.saved_tensors
        c = g_mean.numel()
        d = torch.cat([d_mean, d_var]).double()
        dist.all_reduce(d, group=ctx.group)
        sum_d_mean, sum_d_var = d[:c], d[c:]
        mine = weight[ctx.rank]
        dm = mine * (sum_d_mean + 2 * (rows[ctx.rank, 1:1 + c] - g_mean) * sum_d_var)
        dv = mine * sum_d_var
        return dm.to(d_mean.dtype), dv.to(d_var.dtype), None, None
