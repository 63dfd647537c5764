"""torch.compile(fullgraph=True) over converted models: no graph breaks, same numbers and buffers."""
import copy

import torch

import fused_resnet
from fused_resnet.models import cifar_resnet


def _model(version):
    torch.manual_seed(0)
    return fused_resnet.convert(cifar_resnet(8, version=version, shortcut="B"))


def test_compiled_eval_matches_eager():
    model = _model(1).eval()
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


def test_compiled_train_step_matches_eager_with_buffers():
    eager = _model(2).train()
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 3, 32, 32)
    for step in range(2):
        ya, yb = eager(x + step), compiled(x + step)
        ya.square().sum().backward()
        yb.square().sum().backward()
        torch.testing.assert_close(yb, ya, rtol=1e-4, atol=1e-4)
    for (name, a), (_, b) in zip(eager.named_parameters(), model.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-3, msg=lambda m: f"grad {name}: {m}")
    for (name, a), (_, b) in zip(eager.named_buffers(), model.named_buffers()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=lambda m: f"buffer {name}: {m}")
    assert model.layer1[0].bn1.num_batches_tracked.item() == 2
