"""The op layer on the CPU: schemas and fake implementations (opcheck), fp64 gradients
(gradcheck) and the running-statistics update against nn.BatchNorm2d."""
import itertools

import pytest
import torch
from torch import nn

from fused_resnet import ops, reference

D = torch.float64


def _vec(n, seed, positive=False):
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(n, generator=g, dtype=D) + 0.5 if positive else torch.randn(n, generator=g, dtype=D)
    return v.requires_grad_()


def _t(*shape, seed=0, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g, dtype=D)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_()


def _gradcheck(op, args):
    """gradcheck ``op`` over the tensor entries of ``args``, the others held fixed."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]

    def f(*ts):
        it = iter(ts)
        return op(*[next(it) if isinstance(a, torch.Tensor) else a for a in args])

    assert torch.autograd.gradcheck(f, tensors)


CONV_CASES = [
    # (cin, cout, k, stride, pad, dil, groups, hw)
    (4, 6, 3, 1, 1, 1, 1, 5),
    (4, 6, 3, 2, 1, 1, 2, 5),
    (3, 5, 1, 1, 0, 1, 1, 4),
    (4, 4, 3, 1, 2, 2, 1, 6),
]


def _conv_args(case, prologue, bias, residual, relu, stats, channels_last=False):
    cin, cout, k, s, p, d, g, hw = case
    x = _t(2, cin, hw, hw, seed=1, channels_last=channels_last)
    w = _t(cout, cin // g, k, k, seed=2)
    ho = (hw + 2 * p - d * (k - 1) - 1) // s + 1
    return (
        x, w, _vec(cout, 3) if bias else None,
        _vec(cin, 4, positive=True) if prologue else None,
        # A positive shift makes relu(shift) > 0, so padding-after-transform matters.
        (_vec(cin, 5).detach() + 0.3).requires_grad_() if prologue else None,
        _t(2, cout, ho, ho, seed=6) if residual else None,
        [s, s], [p, p], [d, d], g, relu, stats, "reference",
    )


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("prologue,bias,residual,relu,stats", [
    (False, False, False, False, False),
    (True, True, True, True, True),
    (True, False, False, True, True),
    (False, True, True, True, False),
])
def test_conv_gradcheck(case, prologue, bias, residual, relu, stats):
    args = _conv_args(case, prologue, bias, residual, relu, stats)
    _gradcheck(ops.conv, args)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", CONV_CASES[:2])
def test_conv_opcheck(case, channels_last):
    for flags in itertools.product([False, True], repeat=2):
        args = _conv_args(case, flags[0], True, flags[1], True, True, channels_last)
        torch.library.opcheck(ops.conv, args)


def test_conv_prologue_pads_after_transform():
    # With a shift of 1 and no ReLU cut, relu(0*s + 1) = 1 inside the image, but
    # padded taps must contribute exactly 0.
    x = torch.zeros(1, 1, 3, 3, dtype=D)
    w = torch.ones(1, 1, 3, 3, dtype=D)
    one = torch.ones(1, dtype=D)
    y, _, _ = ops.conv(x, w, None, one, one, None, [1, 1], [1, 1], [1, 1], 1, False, False, "reference")
    assert y[0, 0].tolist() == [[4, 6, 4], [6, 9, 6], [4, 6, 4]]


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_output_layout_follows_input(channels_last):
    args = _conv_args(CONV_CASES[0], True, True, True, True, False, channels_last)
    y = ops.conv(*args)[0]
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("residual,scaled,relu", [(False, False, True), (True, False, True), (True, True, False)])
def test_bn_act_gradcheck_and_opcheck(residual, scaled, relu):
    y = _t(2, 3, 4, 4, seed=1)
    args = (
        y, _vec(3, 2), _vec(3, 3), _t(2, 3, 4, 4, seed=4) if residual else None,
        _vec(3, 5) if scaled else None, _vec(3, 6) if scaled else None, relu, "reference",
    )
    _gradcheck(ops.bn_act, args)
    torch.library.opcheck(ops.bn_act, args)


def test_batch_stats_gradcheck_and_opcheck():
    x = _t(3, 4, 5, 5, seed=1, channels_last=True)
    assert torch.autograd.gradcheck(lambda t: ops.batch_stats(t, "reference"), (x,))
    torch.library.opcheck(ops.batch_stats, (x, "reference"))
    mean, var = ops.batch_stats(x, "reference")
    ref_var, ref_mean = torch.var_mean(x.detach(), dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean, ref_mean)
    torch.testing.assert_close(var, ref_var)


@pytest.mark.parametrize("affine", [True, False])
def test_bn_finalize_gradcheck_and_opcheck(affine):
    args = (
        _vec(5, 1), _vec(5, 2, positive=True), _vec(5, 3) if affine else None,
        _vec(5, 4) if affine else None, 1e-5, "reference",
    )
    _gradcheck(ops.bn_finalize, args)
    torch.library.opcheck(ops.bn_finalize, args)


def test_conv_backward_and_bn_act_backward_opcheck():
    args = _conv_args(CONV_CASES[1], True, True, True, True, True)
    x, w, b, s, t, r = [a.detach() for a in args[:6]]
    y, mean, var = ops.conv(x, w, b, s, t, r, *args[6:])
    dy = torch.randn_like(y)
    torch.library.opcheck(ops.conv_backward, (
        dy, torch.randn_like(mean), torch.randn_like(var), x, w, y, mean, s, t,
        [2, 2], [1, 1], [1, 1], 2, True, True, [True] * 6, "reference",
    ))
    out = ops.bn_act(y, mean, var, r, None, None, True, "reference")
    torch.library.opcheck(ops.bn_act_backward, (
        torch.randn_like(out), out, y, mean, r, None, True, [True, True, True, True, False, False], "reference",
    ))


def test_unrequested_gradients_are_empty():
    args = _conv_args(CONV_CASES[0], True, False, False, False, False)
    x, w, _, s, t, _ = args[:6]
    y, mean, _ = ops.conv(*args)
    grads = reference.conv_backward(
        torch.ones_like(y), mean, mean, x.detach(), w.detach(), y.detach(), mean, s.detach(), t.detach(),
        [1, 1], [1, 1], [1, 1], 1, False, False, [False, True, False, False, False, False],
    )
    assert [g.numel() == 0 for g in grads] == [True, False, True, True, True, True]


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("track_nbt", [True, False])
def test_bn_update_running_matches_batchnorm(momentum, track_nbt):
    bn = nn.BatchNorm2d(4, momentum=momentum).train()
    running_mean, running_var = bn.running_mean.clone(), bn.running_var.clone()
    nbt = bn.num_batches_tracked.clone() if track_nbt else None
    if not track_nbt:
        bn.num_batches_tracked = None
    for step in range(3):
        x = torch.randn(3, 4, 5, 5) * (step + 1) + step
        bn(x)
        var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
        ops.bn_update_running(mean, var, 75, running_mean, running_var, nbt, momentum, "reference")
    torch.testing.assert_close(running_mean, bn.running_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(running_var, bn.running_var, rtol=1e-6, atol=1e-6)
    if track_nbt:
        assert nbt.item() == bn.num_batches_tracked.item() == 3


class _RawWriteBackend:
    """Writes the running statistics the way a compiled kernel does: past autograd's version counters."""
    name = "raw-write"

    @staticmethod
    def bn_update_running(mean, var, count, running_mean, running_var, num_batches_tracked, momentum):
        running_mean.data.copy_(mean)
        running_var.data.copy_(var)


def test_bn_update_running_bumps_the_version_counters(monkeypatch):
    # The fold cache and autograd's saved-tensor checks read _version; a kernel
    # writing through a raw pointer does not bump it, so the op must.
    from fused_resnet import backends

    monkeypatch.setitem(backends.BACKENDS, "raw-write", _RawWriteBackend())
    rm, rv, nbt = torch.zeros(4), torch.ones(4), torch.tensor(0)
    before = (rm._version, rv._version, nbt._version)
    ops.bn_update_running(torch.randn(4), torch.rand(4), 10, rm, rv, nbt, None, "raw-write")
    assert rm._version > before[0] and rv._version > before[1] and nbt._version > before[2]


def test_batch_stats_backward_opcheck():
    x = _t(2, 3, 4, 5, seed=3, channels_last=True).detach()
    args = (torch.randn(3, dtype=D), torch.randn(3, dtype=D), x, x.mean((0, 2, 3)), "reference")
    torch.library.opcheck(ops.batch_stats_backward, args)


def test_bn_finalize_backward_opcheck():
    mean, var, w = torch.randn(5), torch.rand(5) + 0.1, torch.randn(5)
    scale, _, invstd = reference.bn_finalize(mean, var, w, None, 1e-5)
    for weight, dinvstd in ((w, torch.randn(5)), (None, None)):
        args = (torch.randn(5), torch.randn(5), dinvstd, mean, weight, scale, invstd, "reference")
        torch.library.opcheck(ops.bn_finalize_backward, args)


def test_bn_update_running_opcheck():
    m, v = torch.randn(4), torch.rand(4)
    args = (m, v, 10, torch.zeros(4), torch.ones(4), torch.tensor(0), None, "reference")
    torch.library.opcheck(ops.bn_update_running, args)


@pytest.mark.parametrize("projection,prologue,sc_prologue", [
    (True, True, True), (True, False, False), (False, False, False), (False, True, True),
])
def test_conv_shortcut_gradcheck_and_opcheck(projection, prologue, sc_prologue):
    sc_c = 6 if projection else 4
    args = (
        _t(2, 4, 5, 5, seed=1), _t(8, 4, 3, 3, seed=2), _vec(8, 3),
        _vec(4, 4, positive=True) if prologue else None, _vec(4, 5) if prologue else None,
        _t(2, sc_c, 10, 10, seed=6), _t(8, sc_c, 1, 1, seed=7) if projection else None,
        _vec(sc_c, 8, positive=True) if sc_prologue else None, _vec(sc_c, 9) if sc_prologue else None,
        2, [1, 1], [1, 1], [1, 1], 1, True, "reference",
    )
    _gradcheck(ops.conv_shortcut, args)
    torch.library.opcheck(ops.conv_shortcut, args)


def test_conv_shortcut_option_a_pads_channels_centrally():
    x = torch.zeros(1, 1, 2, 2, dtype=D)
    w = torch.zeros(4, 1, 1, 1, dtype=D)
    sc = torch.arange(32, dtype=D).view(1, 2, 4, 4)
    y = ops.conv_shortcut(x, w, None, None, None, sc, None, None, None, 2, [1, 1], [0, 0], [1, 1], 1, False, "reference")
    assert y[0, :, 0, 0].tolist() == [0, 0, 16, 0]
    assert y[0, :, 1, 1].tolist() == [0, 10, 26, 0]


def test_every_op_of_the_op_list_is_defined_from_it():
    """ops.py defines each op of op_list.OPS, and only those: its schema is the op list's plus
    ``str backend``, and ops.<name> is its overload."""
    from fused_resnet import op_list

    defined = {name for name in dir(torch.ops.fused_resnet) if isinstance(getattr(torch.ops.fused_resnet, name),
                                                                          torch._ops.OpOverloadPacket)}
    assert defined == set(op_list.OPS)
    for name, op in op_list.OPS.items():
        overload = getattr(ops, name)
        assert overload is getattr(torch.ops.fused_resnet, name).default
        assert str(overload._schema) == str(torch._C.parse_schema("fused_resnet::" + op.schema(backend=True)))
        assert overload._schema.arguments[-1].name == "backend"
