"""No silent wrong result: what an adversarial user can do to a fused block, on the CPU.

Each test compares with torchvision (or nn.BatchNorm2d) on the same inputs, or checks
that what cannot be served is refused with an error naming the block or tensor. The
classes checked:

* module properties the fused path assumes: the activation's type (any inplace flag:
  the fused block never writes its input, and torchvision's in-place ReLUs act on
  intermediates only), hooks and instance forwards on the submodules it computes
  itself, at convert and at every forward;
* caches and invalidation: BatchNorm folded into the conv weights at every forward
  (a ``.data`` write bumps no version counter), nothing of past forwards in a pickle,
  a deep copy or torch.save, and so a torch.jit.trace that reads the buffers at each call;
* empty batches: as nn.BatchNorm2d (an empty output, zero affine gradients, running
  statistics untouched, the batch counted in training), on both CPU backends;
* NaN and inf: ReLU keeps NaN (the triton kernels' max dropped it) and passes the gradient
  at a NaN as torch's does; the triton ops in fp32 and whole blocks on both CPU backends:
  outputs and gradients NaN/inf where torchvision's are, running statistics non-finite
  where its are;
* second derivatives: on the reference backend as torchvision's (fp64, without autograd's
  deprecated fallback for ops without a derivative); elsewhere an error naming the op when a
  second derivative is taken, while first-order gradients under create_graph=True work;
* what a backend's mode cannot compute: bf16 under the Triton interpreter, refused by
  ``not_supported_reasons`` (so "auto" passes over it) and by every triton op;
* transforms: torch.fx symbolic tracing (fused blocks are leaf modules; a block traced on
  its own is refused), torch.jit.trace (above), torch.export in eval and training mode,
  torch.jit.script (refused, with what to use). Checked by hand, not tested here:
  torch.compile (tests/test_compile.py), vmap (eval runs through PyTorch's per-sample
  fallback; training raises on the running-statistics update, as torchvision's does),
  torch.func.grad (raises: PyTorch's autograd.Function needs setup_context for it).
"""
import copy
import io
import logging
import warnings

import pytest
import torch
import torch.nn.utils.prune
from torch import nn
from torch.nn import functional as F
from torchvision.models.resnet import BasicBlock

from fused_resnet import FusedBasicBlock, backends, convert, reference
from fused_resnet import blocks
from fused_resnet.blocks import FUSED_BLOCKS, FUSED_TWIN
from fused_resnet.models import PreActBasicBlock

from helpers import assert_close_fp32, randomize_bn
from .test_blocks import BLOCKS
from .triton.test_conv import make_inputs


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- module properties


def test_convert_leaves_a_non_relu_block_unfused_under_auto(caplog):
    block = BasicBlock(8, 8).eval()
    block.relu = nn.SiLU()
    with caplog.at_level(logging.WARNING, logger="fused_resnet"):
        fused = convert(nn.Sequential(block))
    assert type(fused[0]) is BasicBlock
    assert "relu is SiLU, not nn.ReLU" in caplog.text
    x = _x(2, 8, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), block(x))


def test_convert_by_name_and_from_block_refuse_a_non_relu_block():
    block = BasicBlock(8, 8)
    block.relu = nn.LeakyReLU()
    with pytest.raises(ValueError, match="cannot fuse this BasicBlock: relu is LeakyReLU, not nn.ReLU"):
        convert(block, backend="reference")
    with pytest.raises(ValueError, match="BasicBlock cannot be fused: relu is LeakyReLU"):
        FusedBasicBlock.from_block(block)


def test_any_inplace_flag_converts():
    block = BasicBlock(8, 8).eval()
    block.relu = nn.ReLU(inplace=False)
    fused = convert(block)
    assert type(fused) is FusedBasicBlock
    x = _x(2, 8, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), block(x))


def test_a_hooked_submodule_is_refused():
    """torch.nn.utils.prune recomputes conv.weight in a forward pre-hook, which a fused block never calls."""
    block = BasicBlock(8, 8)
    torch.nn.utils.prune.l1_unstructured(block.conv1, "weight", amount=0.5)
    with pytest.raises(ValueError, match="conv1 has forward pre hooks, which the fused block would never call"):
        convert(block, backend="reference", inplace=True)  # a pruned weight cannot be deep-copied
    block = PreActBasicBlock(8, 8)
    block.bn2.register_forward_hook(lambda m, i, o: o * 2)
    with pytest.raises(ValueError, match="bn2 has forward hooks"):
        convert(block, backend="reference")
    block = BasicBlock(8, 8)
    block.bn1.forward = lambda x: x
    with pytest.raises(ValueError, match="bn1 has its own forward"):
        convert(block, backend="reference")


def test_a_block_changed_after_convert_runs_unfused_under_auto(caplog):
    blocks._logged_unfused.clear()
    block = BasicBlock(8, 8).eval()
    fused = convert(block)
    for b in (block, fused):
        b.relu = nn.SiLU()
    x = _x(2, 8, 5, 5)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="fused_resnet"):
        torch.testing.assert_close(fused(x), block(x))
        fused(x)
    assert caplog.text.count("FusedBasicBlock runs unfused: relu is SiLU, not nn.ReLU") == 1


def test_a_block_hooked_after_convert_is_refused_by_name():
    fused = convert(BasicBlock(8, 8), backend="reference")
    fused.conv2.register_forward_hook(lambda m, i, o: o + 1)
    with pytest.raises(ValueError, match="FusedBasicBlock: backend 'reference' cannot run this block: "
                                         "conv2 has forward hooks"):
        fused(_x(2, 8, 5, 5))


def test_a_hooked_shortcut_runs_as_a_module():
    """The fused path computes a conv+BN shortcut itself; with a hook it calls the module instead."""
    down = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
    block = BasicBlock(8, 16, 2, down).eval()
    down.register_forward_hook(lambda m, i, o: o * 3)
    fused = convert(block, backend="reference")
    x = _x(2, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), block(x))


# ---------------------------------------------------------------- caches and invalidation


def _data_writes(kind):
    """(block, its fused twin in eval mode, writes to apply to both through ``.data``)."""
    torch.manual_seed(0)
    block = randomize_bn(BLOCKS[kind]()).eval()
    fused = FUSED_TWIN[type(block)].from_block(copy.deepcopy(block)).eval()
    writes = [
        lambda b: b.conv1.weight.data.mul_(-2),
        lambda b: b.bn1.running_mean.data.add_(1),
        lambda b: b.bn2.weight.data.mul_(3),
        lambda b: [m.running_var.data.mul_(4) for m in b.modules() if isinstance(m, nn.BatchNorm2d)],
        lambda b: b.bn1.bias.data.sub_(1),
        lambda b: b.conv2.weight.data.copy_(b.conv2.weight.flip(0)),
    ]
    return block, fused, writes


@pytest.mark.parametrize("kind", ["basic", "bottleneck_s2_proj", "preact_basic", "preact_bottleneck_s2_proj"])
def test_a_data_write_is_never_stale(kind):
    """A ``.data`` write bumps no version counter (mean-teacher and EMA code update weights so)."""
    block, fused, writes = _data_writes(kind)
    x = _x(2, block.conv1.in_channels, 6, 6)
    with torch.no_grad():
        for i, write in enumerate(writes):
            fused(x)
            write(block), write(fused)
            torch.testing.assert_close(fused(x), block(x), msg=lambda m: f"{kind}, after write {i}: {m}")


def test_pickle_and_deepcopy_carry_no_state_of_past_forwards():
    """torch.save of a converted model after an eval forward is the size it was before, and a
    copy, saved or deep-copied, computes what the original does after both change."""
    torch.manual_seed(0)
    fused = convert(nn.Sequential(BLOCKS["bottleneck_s2_proj"](), BLOCKS["preact_bottleneck"]())).eval()
    x = _x(2, 8, 6, 6)

    def saved(m):
        buf = io.BytesIO()
        torch.save(m, buf)
        return buf.getvalue()

    before = len(saved(fused))
    with torch.no_grad():
        fused(x)
    data = saved(fused)
    assert len(data) == before
    copies = [torch.load(io.BytesIO(data), weights_only=False), copy.deepcopy(fused)]
    assert all(b._last_backend is None for b in copies[0].modules() if isinstance(b, FUSED_BLOCKS))
    for m in copies + [fused]:
        m[0].conv1.weight.data.mul_(-1)
    with torch.no_grad():
        for c in copies:
            torch.testing.assert_close(c(x), fused(x))


def test_jit_trace_under_no_grad_follows_the_running_statistics():
    torch.manual_seed(0)
    block = randomize_bn(BLOCKS["basic_s2_proj"]()).eval()
    fused = convert(block)
    x = _x(2, 8, 6, 6)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit.trace's deprecation and shape-to-Python warnings
        traced = torch.jit.trace(fused, x)  # its sanity check runs the trace twice
        torch.testing.assert_close(traced(x), block(x))
        for m in (block, fused):
            m.bn2.running_mean.add_(1)
            m.downsample[1].running_var.mul_(2)
        torch.testing.assert_close(traced(x), block(x))


@pytest.mark.usefixtures("no_tf32", "no_autotune_on_tiny_shapes")
def test_triton_sees_a_data_write_to_a_weight_it_reads_unfolded():
    """A pre-activation block's last conv has no BatchNorm after it: its weight reaches the kernels as it is."""
    torch.manual_seed(0)
    block = randomize_bn(BLOCKS["preact_basic"]()).eval()
    fused = FUSED_TWIN[type(block)].from_block(copy.deepcopy(block), backend="triton")
    x = _x(1, 8, 5, 5)
    with torch.no_grad():
        fused(x)
        for b in (block, fused):
            b.conv2.weight.data.mul_(-1)
        torch.testing.assert_close(fused(x), block(x), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- empty batches


def _step(block, x):
    """(output, input gradient, parameter gradients) of one backward of the output's sum."""
    x = x.clone().requires_grad_()
    y = block(x)
    y.sum().backward()
    return y.detach(), x.grad, {n: p.grad for n, p in block.named_parameters()}


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("kind", ["basic_s2_proj", "bottleneck", "preact_optionA"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.usefixtures("no_tf32", "no_autotune_on_tiny_shapes")
def test_an_empty_batch_behaves_like_torchvision(mode, kind, backend):
    """An empty output, zero parameter gradients, running statistics untouched, batches counted in training."""
    torch.manual_seed(0)
    block = randomize_bn(BLOCKS[kind]()).train(mode == "train")
    fused = FUSED_TWIN[type(block)].from_block(copy.deepcopy(block), backend=backend)
    x = _x(0, block.conv1.in_channels, 6, 6)
    (ya, dxa, ga), (yb, dxb, gb) = _step(block, x), _step(fused, x)
    assert yb.shape == ya.shape and dxb.shape == dxa.shape
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], msg=lambda m: f"grad of {name}: {m}")
    for (name, a), (_, b) in zip(block.named_buffers(), fused.named_buffers()):
        torch.testing.assert_close(b, a, msg=lambda m: f"buffer {name}: {m}")


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("kind", ["preact_basic", "preact_bottleneck_s2_proj", "preact_optionA", "plain_preact"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.usefixtures("no_tf32", "no_autotune_on_tiny_shapes")
def test_an_inplace_op_on_a_block_output_works_as_after_torchvision(mode, kind, backend):
    """A block whose output is not a ReLU's (pre-activation: the add is last) may be
    modified in place by what follows, as torchvision's may: its gradient reads no value
    of that output, so the fused ops do not keep it for backward."""
    torch.manual_seed(0)
    block = randomize_bn(BLOCKS[kind]()).train(mode == "train")
    fused = FUSED_TWIN[type(block)].from_block(copy.deepcopy(block), backend=backend)
    x = _x(2, block.conv1.in_channels, 6, 6)
    inplace = nn.ReLU(inplace=True)
    (ya, dxa, ga), (yb, dxb, gb) = (_step(nn.Sequential(b, inplace), x) for b in (block, fused))
    assert_close_fp32(yb, ya, "output")
    assert_close_fp32(dxb, dxa, "input gradient")
    for name in ga:
        assert_close_fp32(gb[name], ga[name], f"grad of {name}")


# ---------------------------------------------------------------- NaN and inf


# The interpreter computes with numpy, which warns of each NaN it makes.
_NUMPY_NAN_WARNINGS = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def _poison(t):
    """``t`` with a NaN, a +inf and a -inf (a diverging activation)."""
    t = t.clone()
    t[0, 0, 1, 1], t[0, -1, 2, 3], t[-1, 1, 0, 0] = float("nan"), float("inf"), float("-inf")
    return t


def _assert_same_non_finite(got, want, name):
    for what, test in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        same = torch.equal(test(got), test(want))
        assert same, f"{name}: {what} at {test(got).sum().item()} places, expected at {test(want).sum().item()}"


@_NUMPY_NAN_WARNINGS
@pytest.mark.usefixtures("no_tf32", "no_autotune_on_tiny_shapes")
def test_triton_ops_keep_nan_and_inf_where_torch_does():
    """conv (prologue, residual, ReLU, statistics), conv_shortcut and bn_act in fp32 against the
    reference, itself checked against plain PyTorch."""
    x, w, b, sc, sf, r, stride, pad, dil, groups = make_inputs(2, 4, 5, 5, 6, 3, 1, 1, pro=True, bias=True, res=True)
    x, r = _poison(x), _poison(r)
    args = (x, w, b, sc, sf, r, stride, pad, dil, groups, True, True)
    y, mean, var = backends.get("triton").conv(*args)
    yr, mr, vr = reference.conv(*args)
    plain = torch.relu(F.conv2d(torch.relu(x * sc.view(1, -1, 1, 1) + sf.view(1, -1, 1, 1)), w, b, 1, 1) + r)
    _assert_same_non_finite(yr, plain, "reference conv y")
    for name, got, want in (("y", y, yr), ("mean", mean, mr), ("var", var, vr)):
        _assert_same_non_finite(got, want, f"triton conv {name}")
    sc_x = _poison(_x(2, 6, 5, 5, seed=3))
    ys = backends.get("triton").conv_shortcut(x, w, b, sc, sf, sc_x, None, None, None, 1, stride, pad, dil, 1, True)
    _assert_same_non_finite(ys, reference.conv_shortcut(x, w, b, sc, sf, sc_x, None, None, None, 1, stride, pad, dil,
                                                        1, True), "triton conv_shortcut y")
    yb = backends.get("triton").bn_act(x, sc, sf, x, None, None, True)
    _assert_same_non_finite(yb, reference.bn_act(x, sc, sf, x, None, None, True), "triton bn_act out")


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("kind", ["basic_s2_proj", "preact_basic", "preact_optionA"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@_NUMPY_NAN_WARNINGS
@pytest.mark.usefixtures("no_tf32", "no_autotune_on_tiny_shapes")
def test_a_block_keeps_nan_and_inf_where_torchvision_does(kind, mode, backend):
    """Output, input and parameter gradients and running statistics: NaN and inf at the same places."""
    torch.manual_seed(0)
    block = randomize_bn(BLOCKS[kind]()).train(mode == "train")
    fused = FUSED_TWIN[type(block)].from_block(copy.deepcopy(block), backend=backend)
    x = _poison(_x(2, block.conv1.in_channels, 6, 6))
    (ya, dxa, ga), (yb, dxb, gb) = (_step(m, x) for m in (block, fused))
    _assert_same_non_finite(yb, ya, "output")
    _assert_same_non_finite(dxb, dxa, "input gradient")
    for name in ga:
        _assert_same_non_finite(gb[name], ga[name], f"gradient of {name}")
    for (name, a), (_, b) in zip(block.named_buffers(), fused.named_buffers()):
        # Non-finite where torch's are: the reference's statistics (var_mean, whose rounding the
        # parity tests pin) make a channel's mean of an inf NaN where nn.BatchNorm2d's is inf.
        same = torch.equal(torch.isfinite(b), torch.isfinite(a))
        assert same, f"buffer {name}: {(~torch.isfinite(b)).sum()} non-finite, expected {(~torch.isfinite(a)).sum()}"


# ---------------------------------------------------------------- second derivatives


def _grad_of_grad_norm(block, x):
    """d/d(x, params) of |d sum(block(x)^2) / dx|^2: a gradient penalty's double backward."""
    x = x.clone().requires_grad_()
    params = list(block.parameters())
    (gx,) = torch.autograd.grad(block(x).square().sum(), x, create_graph=True)
    return torch.autograd.grad(gx.square().sum(), [x] + params, allow_unused=True)


@pytest.mark.parametrize("kind", ["basic_s2_proj", "preact_bottleneck_s2_proj", "basic_optionA"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_reference_double_backward_equals_torchvision(kind, mode):
    """fp64, with no warning: the deprecated autograd fallback for ops without a derivative warns."""
    torch.manual_seed(0)
    block = randomize_bn(BLOCKS[kind]()).double().train(mode == "train")
    fused = FUSED_TWIN[type(block)].from_block(copy.deepcopy(block), backend="reference")
    x = _x(2, block.conv1.in_channels, 6, 6).double()
    want = _grad_of_grad_norm(block, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _grad_of_grad_norm(fused, x)
    names = ["x"] + [n for n, _ in block.named_parameters()]
    for name, a, b in zip(names, want, got):
        if a is None:
            assert b is None or not b.any(), f"{name}: a second derivative where torchvision has none"
            continue
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9, msg=lambda m: f"d/d{name}: {m}")


@pytest.mark.usefixtures("no_tf32", "no_autotune_on_tiny_shapes")
def test_triton_double_backward_raises_and_first_order_with_create_graph_works():
    torch.manual_seed(0)
    block = randomize_bn(BLOCKS["basic_s2_proj"]()).train()
    fused = FUSED_TWIN[type(block)].from_block(copy.deepcopy(block), backend="triton")
    x = _x(2, 8, 6, 6).requires_grad_()
    (gx,) = torch.autograd.grad(fused(x).square().sum(), x, create_graph=True)
    (want,) = torch.autograd.grad(block(x).square().sum(), x)
    torch.testing.assert_close(gx, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError, match=r"fused_resnet::\w+ on the triton backend has no double backward.*"
                                           r"fused_resnet.revert\(model\)"):
        gx.square().sum().backward()


# ---------------------------------------------------------------- what a backend's mode cannot compute


def test_triton_refuses_bfloat16_under_the_interpreter():
    """The interpreter's bf16 products are garbage (|out| ~1e10 for 4): refused, with the reason."""
    triton_backend = backends.get("triton")
    reasons = triton_backend.not_supported_reasons(torch.device("cpu"), torch.bfloat16)
    assert any("TRITON_INTERPRET=1" in reason for reason in reasons), reasons
    block = FusedBasicBlock(8, 8, backend="triton").bfloat16()
    with pytest.raises(RuntimeError, match="backend 'triton' cannot run a torch.bfloat16 input on cpu: .*interpreter"):
        block(_x(1, 8, 4, 4).bfloat16())
    x, w = _x(1, 4, 5, 5).bfloat16(), _x(4, 4, 3, 3).bfloat16()
    with pytest.raises(TypeError, match="triton backend: x is bfloat16, which the Triton interpreter"):
        triton_backend.conv(x, w, None, None, None, None, [1, 1], [1, 1], [1, 1], 1, False, False)


# ---------------------------------------------------------------- transforms


def test_fx_symbolic_trace_keeps_fused_blocks_as_leaf_modules():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), BLOCKS["basic_s2_proj"](), nn.Flatten()).eval()
    fused = convert(model)
    traced = torch.fx.symbolic_trace(fused)
    calls = [n.target for n in traced.graph.nodes if n.op == "call_module"]
    assert calls == ["0", "1", "2"]
    assert isinstance(traced.get_submodule("1"), FUSED_BLOCKS)
    x = _x(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


def test_fx_symbolic_trace_of_a_fused_block_itself_is_refused():
    with pytest.raises(TypeError, match="FusedBasicBlock: torch.fx traces a fused block as a leaf module.*revert"):
        torch.fx.symbolic_trace(FusedBasicBlock(8, 8))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_torch_export_computes_and_updates_what_torchvision_does(mode):
    torch.manual_seed(0)
    block = randomize_bn(BLOCKS["basic_s2_proj"]()).train(mode == "train")
    fused = convert(block)
    x = _x(2, 8, 6, 6)
    exported = [torch.export.export(m, (x,)).module() for m in (block, fused)]  # in the mode exported
    with torch.no_grad():
        torch.testing.assert_close(exported[1](x), exported[0](x))
    assert exported[1].bn1.num_batches_tracked.item() == (mode == "train")
    for (name, a), (_, b) in zip(exported[0].named_buffers(), exported[1].named_buffers()):
        torch.testing.assert_close(b, a, msg=lambda m: f"buffer {name}: {m}")


def test_torch_jit_script_is_refused_with_what_to_use():
    with warnings.catch_warnings(), pytest.raises(TypeError, match="FusedBasicBlock: TorchScript cannot compile"):
        warnings.simplefilter("ignore")  # script's deprecation
        torch.jit.script(convert(nn.Sequential(BasicBlock(8, 8))))
