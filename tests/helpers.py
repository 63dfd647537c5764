"""Shared test helpers: seeded inputs, and assertions of the tolerance rule
(fused_resnet.tolerance, which ``fused-resnet check`` judges by too).
"""
from __future__ import annotations

import torch
from torch import nn

from fused_resnet.tolerance import FP32_ATOL, FP32_RTOL, LOWP_ATOL, REL_ATOL, bound_2x, max_err, rel_err, within


def seeded(seed: int = 0) -> torch.Generator:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return g


def randn(*shape, dtype=torch.float32, device="cpu", channels_last=False, seed=None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    t = torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def assert_close_fp32(actual, expected, name="tensor", rtol=FP32_RTOL, atol=FP32_ATOL):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def assert_within_2x(fused, plain, ref64, name="tensor"):
    """fused (low precision) vs fp64 reference, against plain PyTorch in the same dtype."""
    assert fused.dtype == plain.dtype, f"{name}: dtype {fused.dtype} != plain PyTorch's {plain.dtype}"
    assert torch.isfinite(fused).all(), f"{name}: non-finite values"
    err_fused, err_plain = max_err(fused, ref64), max_err(plain, ref64)
    bound = bound_2x(err_plain, LOWP_ATOL[fused.dtype])
    assert within(err_fused, bound), f"{name}: error {err_fused:.3g} > 2 x plain PyTorch's {err_plain:.3g} + atol"


def assert_rel_within_2x(fused, plain, ref64, name="tensor", atol=REL_ATOL):
    """The 2x rule on relative L2 error, for whole-model outputs and gradients."""
    assert torch.isfinite(fused).all(), f"{name}: non-finite values"
    err_fused, err_plain = rel_err(fused, ref64), rel_err(plain, ref64)
    assert within(err_fused, bound_2x(err_plain, atol)), (
        f"{name}: relative error {err_fused:.3g} > 2 x plain PyTorch's {err_plain:.3g} + {atol}"
    )


def randomize_bn(block, seed=0):
    """Non-trivial BatchNorm affine parameters and running statistics (else eval BN is the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return block


def sgd_step(block, x, seed, lr=0.1):
    """Forward, backward of a seeded random output gradient, plain SGD update.

    Returns (output, input gradient, {name: parameter gradient}).
    """
    x = x.clone().requires_grad_()
    y = block(x)
    gout = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.device, y.dtype)
    (y * gout).sum().backward()
    grads = {n: p.grad.clone() for n, p in block.named_parameters()}
    with torch.no_grad():
        for p in block.parameters():
            p -= lr * p.grad
            p.grad = None
    return y.detach(), x.grad, grads


def load_bench_script(name: str):
    """bench/<name>.py as a module (bench/ is no package; its scripts import each other, so
    the folder is on sys.path while the script loads), registered in sys.modules as ``name``
    (dataclasses look their module up there)."""
    import importlib.util
    import os
    import sys

    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
    spec = importlib.util.spec_from_file_location(name, os.path.join(bench, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    sys.path.insert(0, bench)
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(bench)
    return mod
