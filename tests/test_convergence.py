"""A short seeded training run: the converted CIFAR ResNet follows torchvision's loss curve.

In fp64 the two runs agree to rounding, which shows the fused blocks compute
the same function, gradients and BatchNorm updates. In fp32 they start equal
and drift apart only as SGD with momentum amplifies rounding differences.
"""
import copy

import pytest
import torch
from torch import nn

import fused_resnet
from fused_resnet.models import cifar_resnet

STEPS = 30
TOL = {torch.float64: 1e-9, torch.float32: 1e-2}


def _losses(model, data, labels):
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    losses = []
    for step in range(STEPS):
        i = step % len(data)
        loss = nn.functional.cross_entropy(model(data[i]), labels[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("version,dtype", [(1, torch.float64), (2, torch.float64), (1, torch.float32)])
def test_thirty_steps_follow_the_same_loss_curve(version, dtype):
    torch.manual_seed(0)
    model = cifar_resnet(8, version=version).train().to(dtype)
    fused = fused_resnet.convert(copy.deepcopy(model))
    g = torch.Generator().manual_seed(1)
    data = torch.randn(6, 16, 3, 32, 32, generator=g).to(dtype)
    labels = torch.randint(0, 10, (6, 16), generator=g)
    ref, got = _losses(model, data, labels), _losses(fused, data, labels)
    assert ref[-1] < 0.95 * ref[0], "the reference run did not learn; the test would prove nothing"
    tol = TOL[dtype]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(ref), rtol=tol, atol=tol)
    for (name, a), (_, b) in zip(model.named_buffers(), fused.named_buffers()):
        torch.testing.assert_close(b, a, rtol=tol, atol=tol, msg=lambda m: f"buffer {name}: {m}")
