"""What a step costs, counted rather than timed: FLOPs, weight bytes, the bytes every
operator reads and writes, and ``gpu_reason`` (the extension's answers for a GPU, asked
on any machine), for the launch counts and traffic of bench/."""
from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode


def conv_flops(module: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-add FLOPs (2 per MAC) of every Conv2d/Linear in one forward of ``module``.

    Runs the module once on the CPU in fp32, batch 1, and scales by the batch size.
    """
    total = [0]

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total[0] += 2 * out.numel() * (m.in_channels // m.groups) * kh * kw
        elif isinstance(m, nn.Linear):
            total[0] += 2 * out.numel() * m.in_features

    m = copy.deepcopy(module).float().cpu().eval()
    handles = [c.register_forward_hook(hook) for c in m.modules() if isinstance(c, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        m(torch.randn(1, *input_shape[1:]))
    for h in handles:
        h.remove()
    return total[0] * int(input_shape[0])


def weight_bytes(module: nn.Module, dtype: torch.dtype) -> int:
    """Bytes of the weights a fused inference kernel must read once: conv/linear weights in
    ``dtype`` and a folded fp32 bias per output channel of every BatchNorm."""
    item = torch.empty((), dtype=dtype).element_size()
    n = 0
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            n += m.weight.numel() * item
            if m.bias is not None:
                n += m.bias.numel() * 4
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            n += m.num_features * 4
    return n


# aten operators that launch no kernel on a GPU (allocations, aliases) besides views.
NO_KERNEL_OPS = frozenset(("empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach",
                           "lift_fresh", "alias"))


# In-place operators that overwrite their first argument without reading it.
_WRITE_ONLY_OPS = frozenset(("copy_", "fill_", "zero_"))


class _OpTraffic(TorchDispatchMode):
    """Counts, per operator that runs a kernel, the bytes of its tensor inputs and outputs.

    A fused_resnet op counts as one operator and is not looked into: the count is
    that of the fused dataflow, each op reading its inputs once and writing its
    outputs once, whatever its backend launches for it.
    """

    def __init__(self):
        super().__init__()
        self.ops: dict[str, list[int]] = {}  # name -> [calls, bytes]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.namespace == "fused_resnet" or runs_kernel(func):
            entry = self.ops.setdefault(f"{func.namespace}::{func.overloadpacket.__name__}", [0, 0])
            entry[0] += 1
            entry[1] += op_bytes(func, args, kwargs, out)
        return out


def runs_kernel(func) -> bool:
    """Whether the aten operator ``func`` launches a kernel on a GPU (not a view, not an allocation)."""
    return not (func.is_view or func.overloadpacket.__name__ in NO_KERNEL_OPS)


def op_bytes(func, args, kwargs, out) -> int:
    """The bytes one call of ``func`` moves: its tensor inputs read once and its outputs written
    once (the destination of a copy or fill is written, not read)."""
    read = args[1:] if func.overloadpacket.__name__ in _WRITE_ONLY_OPS else args
    return sum(tensor_bytes(t) for t in pytree.tree_leaves((read, kwargs, out)) if isinstance(t, torch.Tensor))


def tensor_bytes(t: torch.Tensor) -> int:
    """The bytes a kernel moves reading or writing ``t`` once."""
    # An expanded tensor (autograd's broadcast gradients) moves its storage, not its view.
    return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())


def op_traffic(step: Callable[[], Any]) -> dict:
    """One call of ``step`` with every operator's bytes counted (_OpTraffic):
    ``{"bytes": total, "ops": calls, "by_op": {name: [calls, bytes]}}``. Backward
    operators count too: the autograd engine carries the mode into its thread."""
    with _OpTraffic() as mode:
        step()
    by_op = dict(sorted(mode.ops.items(), key=lambda kv: -kv[1][1]))
    return {"bytes": sum(b for _, b in by_op.values()), "ops": sum(c for c, _ in by_op.values()), "by_op": by_op}


def gpu_reason(real_reason: Callable[..., str]) -> Callable[..., str]:
    """``real_reason`` (a ``_C`` reason function: ``conv_reason``, ``conv_dgrad_reason``) asked about
    meta copies of the operands as a bf16 channels_last model has them on a GPU (4-D
    tensors bf16 channels_last, floating vectors fp32), so that it answers for the GPU
    on any machine: the device, its only other objection, is dropped. Answers are kept
    per signature, so a block step pays for each question once."""
    memo: dict = {}

    def as_meta(t):
        if not isinstance(t, torch.Tensor):
            return t
        if t.dim() == 4:
            return torch.empty(t.shape, dtype=torch.bfloat16, device="meta", memory_format=torch.channels_last)
        return torch.empty(t.shape, dtype=torch.float32 if t.is_floating_point() else t.dtype, device="meta")

    def reason(*args):
        key = tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else
                    (tuple(a) if isinstance(a, (list, tuple)) else a) for a in args)
        if key not in memo:
            answer = real_reason(*map(as_meta, args))
            memo[key] = "" if answer.startswith("x is on meta") else answer
        return memo[key]
    return reason
