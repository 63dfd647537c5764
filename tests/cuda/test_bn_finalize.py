"""fused_resnet_cuda::bn_finalize, ::bn_finalize_backward and ::bn_update_running (kernels:
csrc/bn_finalize.cu; host launchers: csrc/ops/bn_finalize.cpp), on a GPU: against
fused_resnet.reference and nn.BatchNorm2d, every momentum mode, CUDA-graph capture.
"""
from __future__ import annotations

import pytest
import torch

from fused_resnet import reference
from helpers import assert_close_fp32

from .common import DEV, _act, _vec


@pytest.mark.gpu
@pytest.mark.parametrize("affine", ["both", "weight", "none", "bf16"])
def test_bn_finalize(ns, affine):
    c = 67
    mean, var = torch.randn(c, device=DEV), _vec(c, 1, 0.0, 3.0)
    w = b = None
    if affine in ("both", "weight", "bf16"):
        w = torch.randn(c, device=DEV)
    if affine in ("both", "bf16"):
        b = torch.randn(c, device=DEV)
    if affine == "bf16":
        w, b = w.bfloat16(), b.bfloat16()
    got = ns.bn_finalize(mean, var, w, b, 1e-5)
    want = reference.bn_finalize(mean, var, w, b, 1e-5)
    for g, r, name in zip(got, want, ("scale", "shift", "invstd")):
        assert g.dtype == torch.float32
        assert_close_fp32(g, r, name, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("weight,dinvstd", [(True, True), (True, False), (False, True), (False, False)])
def test_bn_finalize_backward(ns, weight, dinvstd):
    c = 67
    mean, var = torch.randn(c, device=DEV), _vec(c, 1, 0.0, 3.0)
    w = torch.randn(c, device=DEV) if weight else None
    scale, _, invstd = reference.bn_finalize(mean, var, w, None, 1e-5)
    ds, dsh, di = (torch.randn(c, device=DEV) for _ in range(3))
    di = di if dinvstd else None
    got = ns.bn_finalize_backward(ds, dsh, di, mean, w, scale, invstd)
    want = reference.bn_finalize_backward(ds, dsh, di, mean, w, scale, invstd)
    for g, r, name in zip(got, want, ("dmean", "dvar", "dweight")):
        assert g.shape == r.shape, name
        assert_close_fp32(g, r, name, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("tracked", [True, False])
@pytest.mark.parametrize("rdtype", [torch.float32, torch.float64])
def test_bn_update_running(ns, momentum, tracked, rdtype):
    """Every momentum mode of the reference, no count and no momentum included (factor 0:
    the running statistics stay)."""
    c, count = 67, 4 * 9 * 7
    mean, var = torch.randn(c, device=DEV), _vec(c, 2, 0.1, 2.0)
    rm = torch.randn(c, device=DEV, dtype=rdtype)
    rv = _vec(c, 3).to(rdtype)
    nbt = torch.tensor(4, device=DEV) if tracked else None
    rm2, rv2 = rm.clone(), rv.clone()
    nbt2 = nbt.clone() if tracked else None
    for _ in range(3):
        ns.bn_update_running(mean, var, count, rm, rv, nbt, momentum)
        reference.bn_update_running(mean, var, count, rm2, rv2, nbt2, momentum)
    assert rm.dtype == rdtype and rv.dtype == rdtype
    torch.testing.assert_close(rm, rm2, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(rv, rv2, rtol=1e-6, atol=1e-7)
    if tracked:
        assert nbt.item() == nbt2.item() == 7


@pytest.mark.gpu
def test_bn_update_running_matches_batchnorm(ns):
    """Against nn.BatchNorm2d itself, momentum 0.1 and None, over several steps."""
    for momentum in (0.1, None):
        bn = torch.nn.BatchNorm2d(67, momentum=momentum).to(DEV).train()
        rm, rv = bn.running_mean.clone(), bn.running_var.clone()
        nbt = bn.num_batches_tracked.clone()
        for step in range(4):
            x = _act((4, 67, 9, 7), torch.float32, step % 2 == 0, seed=step, offset=step)
            bn(x)
            mean, var = ns.batch_stats(x)
            ns.bn_update_running(mean, var, x.numel() // 67, rm, rv, nbt, momentum)
        assert nbt.item() == bn.num_batches_tracked.item() == 4
        torch.testing.assert_close(rm, bn.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rv, bn.running_var, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_bn_update_running_cuda_graph(ns):
    """No host synchronisation: the update captures into a CUDA graph and replays."""
    c = 64
    mean, var = torch.randn(c, device=DEV), _vec(c)
    rm, rv = torch.zeros(c, device=DEV), torch.ones(c, device=DEV)
    nbt = torch.zeros((), dtype=torch.long, device=DEV)
    ref_rm, ref_rv, ref_nbt = rm.clone(), rv.clone(), nbt.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up (loads _C, plans) outside the capture
        ns.bn_update_running(mean, var, 100, rm.clone(), rv.clone(), nbt.clone(), None)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        ns.bn_update_running(mean, var, 100, rm, rv, nbt, None)
    for _ in range(3):
        g.replay()
        reference.bn_update_running(mean, var, 100, ref_rm, ref_rv, ref_nbt, None)
    torch.cuda.synchronize()
    assert nbt.item() == ref_nbt.item() == 3
    torch.testing.assert_close(rm, ref_rm, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(rv, ref_rv, rtol=1e-6, atol=1e-7)
