"""Whole blocks through the triton backend (the interpreter on a CPU) against their unfused
twins and the reference backend: every block kind in eval mode (fp32, odd sizes, batch 1,
NCHW and channels_last), training steps triton against reference, bitwise-deterministic
training steps; on a GPU, a ResNet-50 layer1 bottleneck's bf16 training step."""
import copy

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from fused_resnet import FusedBasicBlock, FusedBottleneck, FusedPreActBottleneck
from fused_resnet.blocks import FUSED_TWIN
from fused_resnet.models import PreActBottleneck

from helpers import assert_within_2x, randomize_bn, sgd_step
from ..test_blocks import BLOCKS, _close, _input, _proj

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


pytestmark = pytest.mark.usefixtures("no_tf32", "no_autotune_on_tiny_shapes")


@pytest.mark.parametrize("kind", sorted(BLOCKS))
def test_eval_parity_with_the_unfused_block(kind):
    torch.manual_seed(0)
    block = randomize_bn(BLOCKS[kind]()).eval()
    fused = FUSED_TWIN[type(block)].from_block(copy.deepcopy(block), backend="triton").eval()
    for n, hw, channels_last in [(1, 7, True), (2, 9, False)]:
        x = _input(block, n, hw, seed=hw, channels_last=channels_last)
        with torch.no_grad():
            want, got = block(x), fused(x)
        assert fused.backend == "triton"
        assert got.is_contiguous(memory_format=torch.channels_last) == want.is_contiguous(memory_format=torch.channels_last)
        _close(got, want, f"{kind} n={n} hw={hw} output", tol=1e-4)


@pytest.mark.parametrize("kind", ["basic_s2_proj", "preact_bottleneck_s2_proj"])
def test_eval_parity_at_57x57(kind):
    torch.manual_seed(1)
    block = randomize_bn(BLOCKS[kind]()).eval()
    fused = FUSED_TWIN[type(block)].from_block(copy.deepcopy(block), backend="triton").eval()
    x = _input(block, 1, 57, seed=57, channels_last=True)
    with torch.no_grad():
        _close(fused(x), block(x), f"{kind} 57x57 output", tol=1e-4)


# ----------------------------------------------------------------------------- training


TRAIN_BLOCKS = {
    "bottleneck": (FusedBottleneck, lambda: Bottleneck(16, 4)),
    "bottleneck_s2_proj": (FusedBottleneck, lambda: Bottleneck(8, 4, 2, _proj(8, 16, 2))),
    "basic_s2_proj": (FusedBasicBlock, lambda: BasicBlock(8, 16, 2, _proj(8, 16, 2))),
    "preact_bottleneck_s2_proj": (FusedPreActBottleneck, lambda: PreActBottleneck(8, 4, 2, _proj(8, 16, 2))),
}


def _randomize_bn(block, g):
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)


@pytest.mark.parametrize("kind,cl", [("bottleneck", True), ("bottleneck_s2_proj", False),
                                     ("basic_s2_proj", True), ("preact_bottleneck_s2_proj", False)])
def test_block_train_triton_vs_reference(kind, cl):
    fused_cls, make = TRAIN_BLOCKS[kind]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    base = make()
    _randomize_bn(base, g)
    tri = fused_cls.from_block(copy.deepcopy(base), backend="triton").to(DEVICE).train()
    ref = fused_cls.from_block(copy.deepcopy(base), backend="reference").to(DEVICE).train()
    cin = base.conv1.in_channels
    for step in range(2):
        x = torch.randn(2, cin, 5, 5, generator=g).to(DEVICE)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        ya, dxa, ga = sgd_step(ref, x, 100 + step)
        yb, dxb, gb = sgd_step(tri, x, 100 + step)
        assert tri.backend == "triton"
        _close(yb, ya, f"step {step} output", 2e-5)
        _close(dxb, dxa, f"step {step} input grad", 1e-4)
        for name in ga:
            _close(gb[name], ga[name], f"step {step} grad of {name}", 1e-4)
        for (name, a), (_, b) in zip(ref.named_buffers(), tri.named_buffers()):
            _close(b.float(), a.float(), f"step {step} buffer {name}", 1e-5)


def test_block_backward_deterministic():
    torch.manual_seed(1)
    base = Bottleneck(8, 4, 2, _proj(8, 16, 2))
    x = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            blk = FusedBottleneck.from_block(copy.deepcopy(base), backend="triton").to(DEVICE).train()
            runs.append(sgd_step(blk, x, 0))
    finally:
        torch.use_deterministic_algorithms(old)
    (ya, dxa, ga), (yb, dxb, gb) = runs
    assert torch.equal(ya, yb) and torch.equal(dxa, dxb)
    for name in ga:
        assert torch.equal(ga[name], gb[name]), name


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_layer1_bottleneck_train_step_gpu_bf16():
    """Whole layer1 bottleneck (N=32) in bf16: triton vs reference gradients with the 2x rule against
    an fp64 reference; prints the N=128 training-step time (target: <= 3.0 ms on an H100)."""
    torch.manual_seed(0)
    base = Bottleneck(256, 64).cuda()
    g = torch.Generator().manual_seed(0)
    _randomize_bn(base, g)
    x = torch.randn(32, 256, 56, 56, generator=g).cuda().contiguous(memory_format=torch.channels_last)
    gout = torch.randn(32, 256, 56, 56, generator=g).cuda().contiguous(memory_format=torch.channels_last)
    results = {}
    for name, backend, dtype in (("tri", "triton", torch.bfloat16), ("plain", "reference", torch.bfloat16),
                                 ("ref64", "reference", torch.float64)):
        blk = FusedBottleneck.from_block(copy.deepcopy(base), backend=backend).to(dtype).train()
        blk = blk.to(memory_format=torch.channels_last)
        xi = x.to(dtype).requires_grad_()
        y = blk(xi)
        (y * gout.to(dtype)).sum().backward()
        results[name] = [y.detach(), xi.grad] + [p.grad for p in blk.parameters()]
    for i, (a, b, c) in enumerate(zip(results["tri"], results["plain"], results["ref64"])):
        assert_within_2x(a, b, c, f"tensor {i}")

    blk = FusedBottleneck.from_block(copy.deepcopy(base), backend="triton").to(torch.bfloat16).train()
    blk = blk.to(memory_format=torch.channels_last)
    xb = torch.randn(128, 256, 56, 56, device="cuda", dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    gb = torch.randn_like(xb)

    def step():
        blk(xb).backward(gb)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    from triton.testing import do_bench

    ms = do_bench(step, warmup=10, rep=50)
    print(f"\nlayer1 bottleneck train step, N=128 bf16, triton: {ms:.3f} ms (target <= 3.0 ms)")
