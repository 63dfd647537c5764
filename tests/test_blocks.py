"""Fused blocks against their unfused twins (torchvision's blocks and ours), on the CPU.

Forward, input and parameter gradients and BatchNorm buffers over three SGD
steps, in train and eval mode, NCHW and channels_last, fp32 and autocast.
"""
import copy

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from fused_resnet import FusedBasicBlock, FusedBottleneck
from fused_resnet.blocks import FUSED_TWIN
from fused_resnet.models import PlainBasicBlock, PlainPreActBasicBlock, PreActBasicBlock, PreActBottleneck, ShortcutA

from helpers import assert_within_2x, randomize_bn, sgd_step


def _proj(cin, cout, stride):
    return nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


def block_zoo(w: int) -> dict:
    """Every block kind, built by a thunk, around a bottleneck width of w channels (inputs of
    2w or 4w): w = 4 keeps the CPU tests small, w = 8 makes every count a multiple of 8 (what
    the CUTLASS kernels take)."""
    return {
        "basic": lambda: BasicBlock(2 * w, 2 * w),
        "basic_s2_proj": lambda: BasicBlock(2 * w, 4 * w, 2, _proj(2 * w, 4 * w, 2)),
        "basic_optionA": lambda: BasicBlock(2 * w, 4 * w, 2, ShortcutA(2 * w, 4 * w, 2)),
        "bottleneck": lambda: Bottleneck(4 * w, w),
        "bottleneck_s2_proj": lambda: Bottleneck(2 * w, w, 2, _proj(2 * w, 4 * w, 2)),
        "resnext": lambda: Bottleneck(4 * w, 2 * w, 1, _proj(4 * w, 8 * w, 1), groups=4, base_width=16),
        "dilated": lambda: Bottleneck(4 * w, w, 1, None, dilation=2),
        "preact_basic": lambda: PreActBasicBlock(2 * w, 2 * w),
        "preact_basic_s2_conv": lambda: PreActBasicBlock(2 * w, 4 * w, 2, conv1x1(2 * w, 4 * w, 2)),
        "preact_bottleneck": lambda: PreActBottleneck(4 * w, w),
        "preact_bottleneck_s2_proj": lambda: PreActBottleneck(2 * w, w, 2, _proj(2 * w, 4 * w, 2)),
        "preact_optionA": lambda: PreActBasicBlock(2 * w, 4 * w, 2, ShortcutA(2 * w, 4 * w, 2)),
        "plain": lambda: PlainBasicBlock(2 * w, 4 * w, 2, None),
        "plain_preact": lambda: PlainPreActBasicBlock(2 * w, 2 * w),
    }


BLOCKS = block_zoo(4)


def _pair(kind, seed=0):
    torch.manual_seed(seed)
    block = randomize_bn(BLOCKS[kind](), seed)
    fused = FUSED_TWIN[type(block)].from_block(copy.deepcopy(block))
    return block, fused


def _in_channels(block):
    return block.conv1.in_channels if hasattr(block, "conv1") else block.bn1.num_features


def _input(block, n, hw, seed, channels_last):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, _in_channels(block), hw, hw, generator=g)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _close(a, b, name, tol=2e-5):
    scale = max(b.abs().max().item(), 1.0)
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale, msg=lambda m: f"{name}: {m}")


def _compare_run(block, fused, mode, n, hw, channels_last, steps=3):
    block.train(mode == "train")
    fused.train(mode == "train")
    for step in range(steps):
        x = _input(block, n, hw, 10 + step, channels_last)
        ya, dxa, ga = sgd_step(block, x, step)
        yb, dxb, gb = sgd_step(fused, x, step)
        assert yb.dtype == ya.dtype
        assert yb.is_contiguous(memory_format=torch.channels_last) == ya.is_contiguous(memory_format=torch.channels_last)
        _close(yb, ya, f"step {step} output")
        _close(dxb, dxa, f"step {step} input grad")
        for name in ga:
            _close(gb[name], ga[name], f"step {step} grad of {name}", tol=1e-4)
        for (name, a), (_, b) in zip(block.named_buffers(), fused.named_buffers()):
            _close(b.float(), a.float(), f"step {step} buffer {name}", tol=1e-5)


@pytest.mark.parametrize("kind", sorted(BLOCKS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_parity_fp32(kind, mode):
    block, fused = _pair(kind)
    _compare_run(block, fused, mode, n=2, hw=9, channels_last=False)


@pytest.mark.parametrize("kind", ["basic_s2_proj", "bottleneck_s2_proj", "preact_bottleneck_s2_proj", "resnext"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_parity_channels_last_odd_size(kind, mode):
    block, fused = _pair(kind, seed=1)
    _compare_run(block, fused, mode, n=3, hw=7, channels_last=True, steps=2)


@pytest.mark.parametrize("kind", ["basic_s2_proj", "bottleneck", "preact_basic"])
def test_eval_batch_one_under_no_grad(kind):
    block, fused = _pair(kind)
    block.eval(), fused.eval()
    x = _input(block, 1, 9, 0, channels_last=True)
    with torch.no_grad():
        _close(fused(x), block(x), "output")
        _close(fused(x), block(x), "output of a second call")
        for b in (block, fused):
            b.conv1.weight.mul_(0.5)
        _close(fused(x), block(x), "output after a weight update")
    with torch.inference_mode():
        _close(fused(x), block(x), "output under inference_mode")


@pytest.mark.parametrize("kind", ["basic", "bottleneck_s2_proj", "preact_bottleneck_s2_proj"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_autocast_bf16_within_2x_of_plain(kind, mode):
    block, fused = _pair(kind)
    ref = copy.deepcopy(block).double()
    for m in (block, fused, ref):
        m.train(mode == "train")
    x = _input(block, 2, 9, 0, channels_last=True)
    with torch.no_grad():
        y64 = ref(x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain, out = block(x), fused(x)
    assert out.dtype == plain.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_within_2x(out, plain, y64, "autocast output")
    for (name, a), (_, b) in zip(block.named_buffers(), fused.named_buffers()):
        assert b.dtype == a.dtype, f"buffer {name} changed dtype"
        _close(b.float(), a.float(), f"buffer {name}", tol=2e-2)


def test_bn_momentum_none_and_no_running_stats():
    block = BasicBlock(8, 8, norm_layer=lambda c: nn.BatchNorm2d(c, momentum=None))
    fused = FusedBasicBlock.from_block(copy.deepcopy(block))
    _compare_run(block, fused, "train", n=2, hw=5, channels_last=False)
    block = BasicBlock(8, 8, norm_layer=lambda c: nn.BatchNorm2d(c, track_running_stats=False))
    fused = FusedBasicBlock.from_block(copy.deepcopy(block))
    for mode in ("train", "eval"):
        _compare_run(block, fused, mode, n=2, hw=5, channels_last=False, steps=2)


def test_one_value_per_channel_raises_like_torchvision():
    block, fused = _pair("bottleneck")
    x = torch.randn(1, 16, 1, 1)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training") as ref:
        block(x)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training") as got:
        fused(x)
    assert str(got.value) == str(ref.value)


def test_same_constructor_and_errors_as_torchvision():
    for args, kwargs in [((8, 8), {"groups": 2}), ((8, 8), {"base_width": 32})]:
        with pytest.raises(ValueError, match="BasicBlock only supports groups=1 and base_width=64"):
            BasicBlock(*args, **kwargs)
        with pytest.raises(ValueError, match="BasicBlock only supports groups=1 and base_width=64"):
            FusedBasicBlock(*args, **kwargs)
    with pytest.raises(NotImplementedError, match="Dilation > 1 not supported in BasicBlock"):
        FusedBasicBlock(8, 8, dilation=2)
    a, b = Bottleneck(16, 4, groups=2, base_width=32), FusedBottleneck(16, 4, groups=2, base_width=32)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert [tuple(t.shape) for t in a.state_dict().values()] == [tuple(t.shape) for t in b.state_dict().values()]
    assert isinstance(b, Bottleneck) and b.expansion == 4 and b.backend == "reference"


def test_state_dict_loads_strictly_both_ways():
    a, b = Bottleneck(8, 4, 2, _proj(8, 16, 2)), FusedBottleneck(8, 4, 2, _proj(8, 16, 2))
    b.load_state_dict(a.state_dict(), strict=True)
    a2 = Bottleneck(8, 4, 2, _proj(8, 16, 2))
    a2.load_state_dict(b.state_dict(), strict=True)
    for k, v in a.state_dict().items():
        assert torch.equal(a2.state_dict()[k], v)


def test_from_block_shares_and_to_block_restores():
    block = randomize_bn(Bottleneck(16, 4))
    fused = FusedBottleneck.from_block(block)
    assert fused.conv1.weight is block.conv1.weight and fused.bn2.running_var is block.bn2.running_var
    back = fused.to_block()
    assert type(back) is Bottleneck and back.conv3.weight is block.conv3.weight
    assert not hasattr(back, "requested_backend")
    with pytest.raises(TypeError, match="expects a BasicBlock, got Bottleneck"):
        FusedBasicBlock.from_block(block)


class TestBadInput:
    block = FusedBasicBlock(8, 8)

    def test_wrong_rank(self):
        with pytest.raises(ValueError, match=r"input x must be 4-D .* got 3-D"):
            self.block(torch.randn(8, 5, 5))

    def test_wrong_channels(self):
        with pytest.raises(ValueError, match="input x must have 8 channels, got 3"):
            self.block(torch.randn(2, 3, 5, 5))

    def test_integer_dtype(self):
        with pytest.raises(TypeError, match="input x must be a floating-point tensor, got torch.int64"):
            self.block(torch.ones(2, 8, 5, 5, dtype=torch.long))

    def test_mismatched_device(self):
        with pytest.raises(RuntimeError, match="input x is on meta but .*conv1.weight.* on cpu"):
            self.block(torch.empty(2, 8, 5, 5, device="meta"))

    def test_mismatched_dtype(self):
        with pytest.raises(TypeError, match="input x has dtype torch.float16 but conv1.weight has dtype torch.float32"):
            self.block(torch.randn(2, 8, 5, 5, dtype=torch.float16))

    def test_not_a_tensor(self):
        with pytest.raises(TypeError, match="input x must be a torch.Tensor, got list"):
            self.block([1.0])


def test_zero_init_residual_keeps_working():
    import torchvision

    m = torchvision.models.resnet18(zero_init_residual=True)
    from fused_resnet import convert

    f = convert(m)
    assert torch.count_nonzero(f.layer1[0].bn2.weight) == 0


def test_model_built_under_inference_mode_runs():
    # Its parameters are inference tensors, which have no version counter for the fold
    # cache to key on: such blocks fold on every call instead of failing.
    with torch.inference_mode():
        block = BLOCKS["bottleneck"]().eval()
        fused = FUSED_TWIN[type(block)].from_block(copy.deepcopy(block), backend="reference").eval()
        x = _input(block, 1, 7, 0, channels_last=True)
        _close(fused(x), block(x), "output of a block built under inference_mode")
        _close(fused(x), block(x), "second output")


@pytest.mark.parametrize("kind", sorted(BLOCKS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_meta_tensors_give_torchvisions_shapes(kind, mode):
    """Shape inference on the meta device (deferred initialisation, size estimates): the
    forward and backward run on the reference backend and give torchvision's output and
    gradient shapes and dtypes, with no autocast to consult on that device."""
    block, fused = _pair(kind)
    block, fused = block.to("meta").train(mode == "train"), fused.to("meta").train(mode == "train")
    x = torch.empty(2, _in_channels(block), 9, 9, device="meta").contiguous(memory_format=torch.channels_last)
    outs = {}
    for name, m in (("plain", block), ("fused", fused)):
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.backward(torch.empty_like(y))
        outs[name] = (y, xi.grad, [p.grad for p in m.parameters()])
    (y, dx, grads), (fy, fdx, fgrads) = outs["plain"], outs["fused"]
    assert fy.device.type == "meta" and fused.backend == "reference"
    assert (fy.shape, fy.dtype, fdx.shape, fdx.dtype) == (y.shape, y.dtype, dx.shape, dx.dtype)
    assert [(g.shape, g.dtype) for g in fgrads] == [(g.shape, g.dtype) for g in grads]
