"""The cuda backend's Python on the CPU, with fused_resnet._C's ops computed from their contracts.

fused_resnet/backends/cuda.py decides, per convolution, between the CUTLASS kernels
and cuDNN, and assembles the gradients from several ``_C`` ops (the fused data
gradient, the mainloop weight gradient, the output gradient, bn_act passes). Here
every ``fused_resnet_cuda`` op is replaced by PyTorch code written from its contract
(csrc/cutlass_conv.h, csrc/ops.h, the fused_resnet:: op it mirrors), and the choice
is ``_C.conv_reason`` / ``_C.conv_dgrad_reason`` themselves, asked as a GPU running a bf16
channels_last model would be (``tools.traffic.gpu_reason``). Whole blocks then run in fp64
against torchvision's: output, every gradient, the BatchNorm buffers. What this
checks without a GPU is the composition: which op gets which operands and how the
pieces make the gradients; the kernels themselves are the GPU tests' part.
"""
from __future__ import annotations

import collections
import copy

import pytest
import torch
import torchvision

from fused_resnet import _ext, backends, convert, reference
from fused_resnet._layout import like_layout
from fused_resnet.backends import choice, cuda, routing
from fused_resnet.blocks import FUSED_TWIN
from fused_resnet.models import cifar_resnet
from fused_resnet.tools.models import perturb_batchnorm
from fused_resnet.tools.traffic import gpu_reason

from helpers import randomize_bn
from ..test_blocks import _in_channels, block_zoo

# Channel counts the CUTLASS kernels take (multiples of 8), so that the GPU's choice
# between them and cuDNN is the one under test.
BLOCKS = block_zoo(8)


class EmulatedC:
    """torch.ops.fused_resnet_cuda, each op computed in PyTorch from its contract and counted.

    An op with a fused_resnet:: twin has its twin's contract, so the reference computes it
    (conv included: the kernels take a ReLU with a residual only in the broadcast epilogue,
    where it comes last, as in the reference; conv_reason refuses the rest); the extra pieces
    of conv_backward are written out below.
    """

    def __init__(self):
        self.calls: collections.Counter = collections.Counter()

    def __getattr__(self, name):
        impl = getattr(type(self), "_" + name, None) or getattr(reference, name)

        def call(*args):
            self.calls[name] += 1
            return impl(*args)
        return call

    @staticmethod
    def _conv_wgrad(g, x, weight, in_scale, in_shift, stride, padding, dilation):
        a = reference.prologue(x, in_scale, in_shift)
        _, dw, _ = torch.ops.aten.convolution_backward(g, a, weight, None, stride, padding, dilation, False, [0, 0],
                                                       1, [False, True, False])
        return dw.to(weight.dtype).contiguous()

    @staticmethod
    def _conv_dgrad(g, x, weight, in_scale, in_shift, stride, padding, dilation):
        # da = g (*) W^T; g_u = da where x*s + t > 0; dx = g_u * s, dscale = sum(g_u x), dshift = sum(g_u).
        dx, _, _, dscale, dshift, _ = reference.conv_backward_from_output_grad(
            g, x, weight, in_scale, in_shift, stride, padding, dilation, 1, [True, False, False, True, True, False])
        return like_layout(dx, x), dscale, dshift

    @staticmethod
    def _conv_output_grad(dy, dmean, dvar, y, mean):
        g = reference.conv_output_grad(dy, dmean, dvar, y, mean, False, True)
        return like_layout(g.to(y.dtype), y)


class EmulatedCuda(cuda.CudaBackend):
    """The cuda backend, taking CPU tensors (its ops are EmulatedC's)."""

    def not_supported_reasons(self, device=None, dtype=None):
        return []


@pytest.fixture
def emulated(monkeypatch):
    c = EmulatedC()
    monkeypatch.setattr(cuda, "ops", lambda: c)
    monkeypatch.setattr(cuda, "conv_reason", gpu_reason(_ext.load().conv_reason))
    monkeypatch.setattr(cuda, "conv_dgrad_reason", gpu_reason(_ext.load().conv_dgrad_reason))
    monkeypatch.setitem(backends.BACKENDS, "cuda", EmulatedCuda())
    routing.clear()
    yield c
    routing.clear()


def _pair(kind, seed=0):
    torch.manual_seed(seed)
    block = randomize_bn(BLOCKS[kind](), seed).double()
    fused = FUSED_TWIN[type(block)].from_block(copy.deepcopy(block), backend="cuda")
    return block, fused


def _step(block, x, gout):
    x = x.clone().requires_grad_()
    y = block(x)
    y.backward(gout)
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in block.named_parameters()}


def _close(a, b, name):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * max(b.abs().max().item(), 1.0), msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("kind", sorted(BLOCKS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_blocks_match_torchvision_in_fp64(emulated, kind, mode):
    block, fused = _pair(kind)
    block.train(mode == "train"), fused.train(mode == "train")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, _in_channels(block), 9, 9, generator=g, dtype=torch.float64)
    x = x.contiguous(memory_format=torch.channels_last)
    gout = torch.randn(block(x).shape, generator=g, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    block.load_state_dict(fused.state_dict())  # the probe forward above moved the running statistics
    want, got = _step(block, x, gout), _step(fused, x, gout)
    assert fused.backend == "cuda" and emulated.calls, "the block did not run on the (emulated) cuda backend"
    _close(got[0], want[0], "output")
    _close(got[1], want[1], "input gradient")
    for n in want[2]:
        _close(got[2][n], want[2][n], f"gradient of {n}")
    for (n, a), (_, b) in zip(block.named_buffers(), fused.named_buffers()):
        _close(b.double(), a.double(), f"buffer {n}")


@pytest.mark.parametrize("kind,calls", [
    ("bottleneck", (3, 2, 2, 3)),
    # conv2's stride-2 data gradient is not instantiated: cuDNN and a bn_act_backward pass take it.
    ("bottleneck_s2_proj", (4, 1, 2, 4)),
])
def test_a_training_step_takes_the_fused_kernels_a_gpu_would(emulated, kind, calls):
    """CUTLASS convolutions with statistics in the epilogue, fused data gradients and mainloop
    weight gradients for the prologue convolutions, wherever a GPU would take them."""
    block, fused = _pair(kind)
    fused.train()
    x = torch.randn(2, _in_channels(block), 9, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    gout = torch.randn_like(fused(x))
    emulated.calls.clear()
    _step(fused, x, gout)
    c = emulated.calls
    assert (c["conv"], c["conv_dgrad"], c["conv_wgrad"], c["conv_output_grad"]) == calls, c


@pytest.mark.parametrize("name", ["resnet18", "cifar_resnet20_A", "cifar_resnet20_v2_B"])
def test_models_match_torchvision_in_fp64(emulated, name):
    """Whole converted models on the emulated cuda backend: a training step, then an eval step
    (BN folded), each one's logits and every gradient against the unconverted model in fp64."""
    torch.manual_seed(0)
    if name == "resnet18":
        model, size = torchvision.models.resnet18(weights=None, num_classes=10), 48
    else:
        model, size = cifar_resnet(20, version=2 if "v2" in name else 1, shortcut=name[-1]), 32
    model = perturb_batchnorm(model, 1).double()
    fused = convert(model, backend="cuda")
    x = torch.randn(2, 3, size, size, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    for mode in ("train", "eval"):
        model.train(mode == "train"), fused.train(mode == "train")
        gout = torch.randn(2, 10, dtype=torch.float64)
        want, got = _step(model, x, gout), _step(fused, x, gout)
        _close(got[0], want[0], f"{mode} logits")
        _close(got[1], want[1], f"{mode} input gradient")
        for n in want[2]:
            _close(got[2][n], want[2][n], f"{mode} gradient of {n}")
        model.zero_grad(), fused.zero_grad()
    assert emulated.calls["conv_dgrad"] > 0 and emulated.calls["conv_wgrad"] > 0


@pytest.fixture
def timed(monkeypatch):
    """choice.py times on the CPU: each candidate runs once and 'takes' FAKE_MS[its name] ms;
    returns the list of timed problems."""
    timed_keys = []
    monkeypatch.setattr(choice, "measurable", lambda device: True)

    def fake_time(candidates):
        timed_keys.append(sorted(candidates))
        return {name: (run(), FAKE_MS[name])[1] for name, run in candidates.items()}

    monkeypatch.setattr(choice, "_time_candidates", fake_time)
    choice.clear()
    yield timed_keys
    choice.clear()


FAKE_MS = {}


@pytest.mark.parametrize("faster,calls", [("fused", (3, 2, 2, 3)), ("unfused", (0, 0, 0, 3))])
def test_a_training_step_takes_the_faster_of_fused_and_unfused(emulated, timed, monkeypatch, faster, calls):
    """Each fused convolution is timed against cuDNN plus its separate passes once per problem
    and the faster runs; either way the step matches torchvision in fp64."""
    monkeypatch.setitem(FAKE_MS, "fused", 1.0 if faster == "fused" else 2.0)
    monkeypatch.setitem(FAKE_MS, "unfused", 3.0 - FAKE_MS["fused"])
    block, fused = _pair("bottleneck")
    block.train(), fused.train()
    x = torch.randn(2, _in_channels(block), 9, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    gout = torch.randn_like(block(x))
    block.load_state_dict(fused.state_dict())
    _step(fused, x, gout)  # the first step times each problem
    fused.zero_grad()
    emulated.calls.clear()
    want, got = _step(block, x, gout), _step(fused, x, gout)
    c = emulated.calls
    assert (c["conv"], c["conv_dgrad"], c["conv_wgrad"], c["conv_output_grad"]) == calls, c
    _close(got[0], want[0], "output")
    _close(got[1], want[1], "input gradient")
    for n in want[2]:
        _close(got[2][n], want[2][n], f"gradient of {n}")
    taken = choice.choices()
    assert {key[0] for key in taken} == {"conv", "conv_dgrad", "conv_wgrad"}, taken
    assert all(t == faster and set(ms) == {"fused", "unfused"} for t, ms in taken.values()), taken
    # 3 convolutions (conv1 and conv3 share no shape) + 2 data and 2 weight gradients, timed once each.
    assert len(timed) == len(taken) == 7, (timed, taken)


def test_no_choice_is_timed_where_the_clock_must_not_decide(monkeypatch):
    """Deterministic algorithms (the candidate decides the rounding), FUSED_RESNET_CHOOSE=0 and
    CPU tensors take the fused kernel untimed."""
    cuda_dev = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert choice.measurable(cuda_dev) and not choice.measurable(torch.device("cpu"))
    monkeypatch.setenv("FUSED_RESNET_CHOOSE", "0")
    assert not choice.measurable(cuda_dev)
    monkeypatch.delenv("FUSED_RESNET_CHOOSE")
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    assert not choice.measurable(cuda_dev)
    choice.clear()
    ran = []
    taken = choice.choose(("k",), {"fused": lambda: ran.append("f"), "unfused": lambda: ran.append("u")}, "fused",
                          cuda_dev)
    assert taken == "fused" and not ran and not choice.choices()


def test_routes_name_what_cutlass_refused_and_why(emulated):
    """A block whose channel counts the CUTLASS kernels refuse still says backend 'cuda'; the
    routes say its convolutions ran on cuDNN with bn_act passes (training) and its last
    convolution with the shortcut on the reference (eval), each with the reason the kernels gave."""
    torch.manual_seed(0)
    block = randomize_bn(block_zoo(3)["basic_optionA"](), 0).double()  # 6 -> 12 channels
    fused = FUSED_TWIN[type(block)].from_block(copy.deepcopy(block), backend="cuda")
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        _close(fused.train()(x), block.train()(x), "training output")
        _close(fused.eval()(x), block.eval()(x), "eval output")
    assert fused.backend == "cuda"
    rows = backends.routes()
    conv1 = [r for r in rows if r.op == "conv" and r.problem.startswith("fp64[2,6,9,9]cl")]
    assert len(conv1) == 2, rows  # training (statistics), eval (BatchNorm folded)
    for r in conv1:
        assert r.backend == "cuda" and r.implementation == "cuDNN conv + bn_act passes", rows
        assert r.reason.startswith("channels in=6, out=12: both must be multiples of 8"), rows
    (conv2,) = [r for r in rows if r.op == "conv_shortcut"]
    assert conv2.backend == "cuda" and conv2.implementation.startswith("reference"), rows
    assert conv2.reason.startswith("channels in=12, out=12: both must be multiples of 8"), rows
    table = backends.routes_table().splitlines()
    assert table[0].split() == ["backend", "op", "problem", "implementation", "reason"]
    assert len(table) == len(rows) + 1 and any(line.endswith(conv2.reason) for line in table), table


def test_routes_name_a_reference_gradient(emulated):
    """conv_backward's reference fallback (a ReLU with batch statistics) is listed with its reason."""
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 8, 3, 3, dtype=torch.float64)
    backend = backends.get("cuda")
    y, mean, var = backend.conv(x, w, None, None, None, None, (1, 1), (1, 1), (1, 1), 1, True, True)
    backend.conv_backward(torch.ones_like(y), torch.zeros_like(mean), torch.zeros_like(var), x, w, y, mean, None,
                          None, (1, 1), (1, 1), (1, 1), 1, True, True, [True, True, False, False, False, False])
    (route,) = [r for r in backends.routes() if r.op == "conv_backward"]
    assert route.backend == "cuda" and route.implementation == "reference conv_backward", route
    assert route.reason.startswith("ReLU and batch statistics together"), route

