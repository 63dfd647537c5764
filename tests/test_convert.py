"""convert/revert on whole models: every torchvision ResNet constructor, the dilated and
detection backbones built on them, the CIFAR ResNets; backend selection and its errors."""
import copy
import logging

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

import fused_resnet
from fused_resnet import backends, convert, revert
from fused_resnet.blocks import FUSED_BLOCKS, FUSED_TWIN
from fused_resnet.models import cifar_resnet

RESNETS = [
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
    "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
]


def _blocks(model):
    return [m for m in model.modules() if type(m) in FUSED_TWIN or isinstance(m, FUSED_BLOCKS)]


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _close(a, b, name, tol=1e-4):
    scale = max(b.abs().max().item(), 1.0)
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("name", RESNETS)
def test_every_torchvision_resnet_converts_and_reverts(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    fused = convert(model)
    n_blocks = len(_blocks(model))
    assert n_blocks > 0 and all(type(b) in FUSED_TWIN for b in _blocks(model)), "convert changed the original"
    assert len([m for m in fused.modules() if isinstance(m, FUSED_BLOCKS)]) == n_blocks
    _assert_same_state(model, fused)
    fused.load_state_dict(model.state_dict(), strict=True)
    model.load_state_dict(fused.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        _close(fused(x), model(x), f"{name} eval logits")
    back = revert(fused)
    assert [type(m) for m in back.modules()] == [type(m) for m in model.modules()]
    _assert_same_state(model, back)


def _train_step(model, x):
    x = x.clone().requires_grad_()
    out = model(x)
    out.square().mean().backward()
    return out.detach(), x.grad, {n: p.grad for n, p in model.named_parameters()}


def test_resnet50_train_step_equals_torchvision():
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).train()
    fused = convert(model)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    ya, dxa, ga = _train_step(model, x)
    yb, dxb, gb = _train_step(fused, x)
    _close(yb, ya, "logits")
    _close(dxb, dxa, "input grad")
    for n in ga:
        _close(gb[n], ga[n], f"grad {n}", tol=5e-4)
    for (n, a), (_, b) in zip(model.named_buffers(), fused.named_buffers()):
        _close(b.float(), a.float(), f"buffer {n}")


def test_inplace_convert_and_revert():
    model = torchvision.models.resnet18(weights=None)
    w = model.layer2[0].conv1.weight
    out = convert(model, inplace=True)
    assert out is model and isinstance(model.layer2[0], fused_resnet.FusedBasicBlock)
    assert model.layer2[0].conv1.weight is w
    revert(model, inplace=True)
    assert type(model.layer2[0]) is BasicBlock and model.layer2[0].conv1.weight is w


def test_dilated_segmentation_backbone():
    torch.manual_seed(0)
    model = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, aux_loss=False).eval()
    fused = convert(model)
    dilations = {m.conv2.dilation for m in fused.modules() if isinstance(m, fused_resnet.FusedBottleneck)}
    assert (2, 2) in dilations and (4, 4) in dilations
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        _close(fused(x)["out"], model(x)["out"], "fcn output")


def test_detection_backbone_with_frozen_batchnorm():
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    body = model.backbone.body
    # FrozenBatchNorm2d always uses its stored statistics, in train mode too.
    for m in body.modules():
        if isinstance(m, torchvision.ops.misc.FrozenBatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    # Without batch statistics nothing renormalises the activations through 16
    # blocks, so fp32 rounding differences grow; fp64 shows the semantics exactly.
    body = body.double().train()
    fused = convert(body)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    out_a, out_b = body(x), fused(x)
    for k in out_a:
        _close(out_b[k], out_a[k], f"feature {k}")


@pytest.mark.parametrize("version,shortcut,plain", [
    (1, "A", False), (1, "B", False), (1, "C", False), (1, "A", True),
    (2, "A", False), (2, "B", False), (2, "C", False), (2, "A", True),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cifar_resnets_convert_with_parity(version, shortcut, plain, dtype):
    """Logits, BatchNorm buffers and, in fp64, every gradient of one train and one eval step.

    fp32 gradients are not compared element by element: a pre-activation within rounding
    of 0 can fall on the other side of a ReLU in one of the two models, which moves that
    element's gradient by its whole value and everything upstream with it (seen on one
    CPU: |u| = 2e-7 in ResNet-20's last block turned 0.5% of the input gradient). The
    forward and the buffers are continuous in the rounding; in fp64 the gradients are
    too, at any tolerance fp32 could be held to."""
    torch.manual_seed(0)
    model = cifar_resnet(20, version=version, shortcut=shortcut, plain=plain).to(dtype)
    fused = convert(model)
    assert len([m for m in fused.modules() if isinstance(m, FUSED_BLOCKS)]) == 9
    x = torch.randn(4, 3, 32, 32, dtype=dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    for mode in ("train", "eval"):
        model.train(mode == "train"), fused.train(mode == "train")
        ya, dxa, ga = _train_step(model, x)
        yb, dxb, gb = _train_step(fused, x)
        _close(yb, ya, f"{mode} logits", tol=tol)
        if dtype == torch.float64:
            _close(dxb, dxa, f"{mode} input grad", tol=tol)
            for n in ga:
                _close(gb[n], ga[n], f"{mode} grad {n}", tol=tol)
        model.zero_grad(), fused.zero_grad()
    for (n, a), (_, b) in zip(model.named_buffers(), fused.named_buffers()):
        _close(b.to(dtype), a.to(dtype), f"buffer {n}", tol=tol)


@pytest.mark.parametrize("depth,params_m", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7), (1202, 19.4)])
def test_cifar_parameter_counts_match_the_paper(depth, params_m):
    n = sum(p.numel() for p in cifar_resnet(depth).parameters()) / 1e6
    assert abs(n - params_m) / params_m < 0.03, f"ResNet-{depth}: {n:.3f}M parameters, paper {params_m}M"


def test_cifar_bad_arguments():
    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_resnet(21)
    with pytest.raises(ValueError, match="shortcut must be"):
        cifar_resnet(20, shortcut="D")
    with pytest.raises(ValueError, match="version must be"):
        cifar_resnet(20, version=3)


def test_user_subclass_is_left_alone():
    class MyBlock(BasicBlock):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(MyBlock(8, 8), BasicBlock(8, 8))
    fused = convert(model)
    assert type(fused[0]) is MyBlock and isinstance(fused[1], fused_resnet.FusedBasicBlock)


def test_unfusable_block_is_left_under_auto_and_refused_by_name(caplog):
    model = nn.Sequential(BasicBlock(8, 8, norm_layer=lambda c: nn.GroupNorm(2, c)))
    with caplog.at_level(logging.WARNING, logger="fused_resnet"):
        fused = convert(model)
    assert type(fused[0]) is BasicBlock
    assert "only BatchNorm2d, SyncBatchNorm and FrozenBatchNorm2d fuse" in caplog.text
    with pytest.raises(ValueError, match="cannot fuse this BasicBlock: bn1 is GroupNorm"):
        convert(model, backend="reference")


class TestBackendSelection:
    def test_available_backends_shape(self):
        table = fused_resnet.available_backends()
        assert set(table) == {"reference", "triton", "cuda"}
        assert table["reference"] == (True, "")
        for ok, reason in table.values():
            assert isinstance(ok, bool) and isinstance(reason, str) and (ok or reason)

    def test_unknown_backend_lists_valid_names(self):
        with pytest.raises(ValueError, match="unknown backend 'fast'; valid names are 'auto', 'reference', 'triton', 'cuda'"):
            convert(nn.Sequential(BasicBlock(8, 8)), backend="fast")
        with pytest.raises(ValueError, match="unknown backend"):
            fused_resnet.FusedBasicBlock(8, 8, backend="fast")

    def test_auto_on_cpu_is_reference_and_visible(self):
        block = convert(nn.Sequential(BasicBlock(8, 8)))[0]
        assert block.requested_backend == "auto" and block.backend == "reference"
        block(torch.randn(2, 8, 4, 4))
        assert block.backend == "reference"

    def test_explicit_backend_that_cannot_serve_raises_with_reason(self):
        block = fused_resnet.FusedBasicBlock(8, 8, backend="cuda")
        with pytest.raises(RuntimeError, match="backend 'cuda' cannot run a torch.float32 input on cpu: "):
            block(torch.randn(2, 8, 4, 4))

    def test_auto_fallback_is_logged_once(self, caplog):
        backends._logged_fallbacks.clear()
        with caplog.at_level(logging.INFO, logger="fused_resnet"):
            for _ in range(3):
                backends.resolve("auto", torch.device("cpu"), torch.float32)
        lines = [r for r in caplog.records if "backend='auto' runs reference" in r.getMessage()]
        assert len(lines) == 1 and "triton:" in lines[0].getMessage() and "cuda:" in lines[0].getMessage()

    def test_reconvert_changes_backend(self):
        model = convert(nn.Sequential(BasicBlock(8, 8)))
        convert(model, backend="reference", inplace=True)
        assert model[0].requested_backend == "reference"
        out = copy.deepcopy(model)[0](torch.randn(2, 8, 4, 4))
        assert out.shape == (2, 8, 4, 4)
