"""The cuda backend's conv_shortcut: the shortcut branch read as the epilogue residual of the
block's last CUTLASS convolution (projection, option A, pre-activation projection), on a GPU.
"""
from __future__ import annotations

import pytest
import torch

from fused_resnet import reference
from fused_resnet.backends import cuda as cuda_backend
from helpers import assert_within_2x, randn

from .common import DEV, LOWP, _cl


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", LOWP, ids=str)
@pytest.mark.parametrize("kind", ["projection", "option_a", "preact_projection"])
def test_backend_conv_shortcut(C, kind, dtype):
    """The shortcut branch read as the epilogue residual: the 2x rule against an fp64 reference."""
    n, c, hw, k, stride = 4, 64, 15, 128, 2
    x = _cl(randn(n, c, (hw + 1) // 2, (hw + 1) // 2, device=DEV, seed=1).relu().to(dtype))  # conv3's input
    weight = _cl(randn(k, c, 1, 1, device=DEV, seed=2).mul(c ** -0.5).to(dtype))
    sc_x = _cl(randn(n, c, hw, hw, device=DEV, seed=3).to(dtype))
    sc_weight = None if kind == "option_a" else _cl(randn(k, c, 1, 1, device=DEV, seed=4).mul(c ** -0.5).to(dtype))
    g = torch.Generator().manual_seed(6)
    if kind == "preact_projection":  # v2: BN + ReLU prologues on both operands, no bias, no ReLU after
        bias, relu = None, False
        pro = [(torch.rand(c, generator=g) + 0.5).to(DEV), (torch.rand(c, generator=g) - 0.5).to(DEV)]
        sc_pro = [(torch.rand(c, generator=g) + 0.5).to(DEV), (torch.rand(c, generator=g) - 0.5).to(DEV)]
    else:
        bias, relu = (torch.randn(k, generator=g) * 0.3).to(DEV), True
        pro, sc_pro = [None, None], [None, None]

    def run(fn, cast):
        t = (lambda v: None if v is None else cast(v))
        return fn(t(x), t(weight), t(bias), *map(t, pro), t(sc_x), t(sc_weight), *map(t, sc_pro), stride,
                  [1, 1], [0, 0], [1, 1], 1, relu)

    got = run(cuda_backend.CudaBackend().conv_shortcut, lambda v: v)
    plain = run(reference.conv_shortcut, lambda v: v)
    ref64 = run(reference.conv_shortcut, lambda v: v.double())
    assert got.shape == plain.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert_within_2x(got, plain, ref64, "out")
