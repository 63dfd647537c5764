"""Gradient checkpointing over fused blocks behaves as over torchvision's blocks."""
import copy

import pytest
import torch
from torch.utils.checkpoint import checkpoint
from torchvision.models.resnet import Bottleneck, conv1x1

import fused_resnet


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointed_block_matches_torchvision(use_reentrant):
    torch.manual_seed(0)
    down = torch.nn.Sequential(conv1x1(8, 16, 2), torch.nn.BatchNorm2d(16))
    block = Bottleneck(8, 4, 2, down).train()
    fused = fused_resnet.FusedBottleneck.from_block(copy.deepcopy(block))
    x = torch.randn(2, 8, 9, 9)
    results = []
    for m in (block, fused):
        xi = x.clone().requires_grad_()
        y = checkpoint(m, xi, use_reentrant=use_reentrant)
        y.square().sum().backward()
        results.append((y.detach(), xi.grad, [p.grad for p in m.parameters()], [b.clone() for b in m.buffers()]))
    (ya, dxa, ga, ba), (yb, dxb, gb, bb) = results
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dxb, dxa, rtol=1e-4, atol=1e-4)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-3)
    # The recomputation updates the running statistics a second time, exactly as
    # it does for torchvision's BatchNorm2d.
    for a, b in zip(ba, bb):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert fused.bn1.num_batches_tracked.item() == block.bn1.num_batches_tracked.item() == 2
