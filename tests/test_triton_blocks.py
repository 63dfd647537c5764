"""Every block kind through the triton backend (the interpreter on a CPU) against its
unfused twin: eval mode, fp32, odd sizes, batch 1, NCHW and channels_last."""
import copy

import pytest
import torch

from fused_resnet.blocks import FUSED_TWIN

from helpers import randomize_bn
from test_blocks import BLOCKS, _close, _input


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

