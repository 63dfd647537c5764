"""The residual-unit variants of He et al., "Identity Mappings in Deep Residual Networks" (2016).

Shortcut variants (section 3, Fig. 2), on the original post-activation unit
x' = relu(s(x) + F(x)), F the conv-BN-ReLU-conv-BN branch, h the unit's shortcut
(identity, or the downsampling module where the shape changes):

  identity            s = h(x)                                  (the original unit)
  constant_scaling    s = 0.5 h(x), and F scaled by 0.5 too
  exclusive_gating    s = (1 - g(x)) h(x), F scaled by g(x), g = sigmoid(1x1 conv(x) + b), b from -6
  shortcut_gating     s = (1 - g(x)) h(x), F unscaled (shortcut-only gating)
  conv_shortcut       s = BN(1x1 conv(x)) on every unit (the original paper's option C)
  dropout_shortcut    s = dropout(h(x)), ratio 0.5

Activation placements (section 4, Fig. 4), with the shortcut h as above:

  post_activation     x' = relu(h(x) + BN(conv(relu(BN(conv(x))))))      (the original unit)
  bn_after_add        x' = relu(BN(h(x) + conv(relu(BN(conv(x))))))
  relu_before_add     x' = h(x) + relu(BN(conv(relu(BN(conv(x))))))
  relu_preactivation  x' = h(x) + BN(conv(relu(BN(conv(relu(x))))))
  full_preactivation  x' = h(x) + conv(relu(BN(conv(relu(BN(x))))))      (the version-2 network)

The variants the fused blocks already compute (identity and post_activation:
torchvision's BasicBlock; conv_shortcut: BasicBlock with a conv+BN shortcut;
full_preactivation: PreActBasicBlock) are built from those blocks, so
``fused_resnet.convert`` fuses them. The others are the blocks below: subclasses
with their own forward, which ``convert`` (matching exact types) leaves unfused.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock


class ScaledShortcutBlock(BasicBlock):
    """relu(shortcut_scale * h(x) + residual_scale * F(x)): constant scaling."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 shortcut_scale: float = 0.5, residual_scale: float = 0.5) -> None:
        super().__init__(inplanes, planes, stride, downsample)
        self.shortcut_scale, self.residual_scale = shortcut_scale, residual_scale

    def forward(self, x: Tensor) -> Tensor:
        f = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(self.shortcut_scale * _shortcut(self, x) + self.residual_scale * f)

    def extra_repr(self) -> str:
        return f"shortcut_scale={self.shortcut_scale}, residual_scale={self.residual_scale}"


class GatedShortcutBlock(BasicBlock):
    """relu((1 - g) h(x) + g F(x)) (exclusive) or relu((1 - g) h(x) + F(x)) (shortcut-only),
    g = sigmoid(gate(x)), ``gate`` a 1x1 convolution with bias (initialised to ``gate_bias``)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 exclusive: bool = True, gate_bias: float = -6.0) -> None:
        super().__init__(inplanes, planes, stride, downsample)
        self.exclusive = exclusive
        self.gate = nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=True)
        # A negative bias starts the unit near the identity (g small), as the paper's best runs did.
        nn.init.constant_(self.gate.bias, gate_bias)

    def forward(self, x: Tensor) -> Tensor:
        f = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        g = torch.sigmoid(self.gate(x))
        return self.relu((1 - g) * _shortcut(self, x) + (g * f if self.exclusive else f))

    def extra_repr(self) -> str:
        return f"exclusive={self.exclusive}"


class DropoutShortcutBlock(BasicBlock):
    """relu(dropout(h(x)) + F(x))."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 p: float = 0.5) -> None:
        super().__init__(inplanes, planes, stride, downsample)
        self.dropout = nn.Dropout(p)

    def forward(self, x: Tensor) -> Tensor:
        f = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(self.dropout(_shortcut(self, x)) + f)


class BNAfterAddBlock(BasicBlock):
    """relu(bn2(h(x) + conv2(relu(bn1(conv1(x)))))): the second BatchNorm moved after the addition."""

    def forward(self, x: Tensor) -> Tensor:
        f = self.conv2(self.relu(self.bn1(self.conv1(x))))
        return self.relu(self.bn2(_shortcut(self, x) + f))


class ReLUBeforeAddBlock(BasicBlock):
    """h(x) + relu(bn2(conv2(relu(bn1(conv1(x)))))): nothing after the addition."""

    def forward(self, x: Tensor) -> Tensor:
        f = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
        return _shortcut(self, x) + f


class ReLUPreActBlock(BasicBlock):
    """h(x) + bn2(conv2(relu(bn1(conv1(relu(x)))))): ReLU-only pre-activation. As in the full
    pre-activation block, a downsampling shortcut reads the pre-activated input relu(x)."""

    def forward(self, x: Tensor) -> Tensor:
        a = nn.functional.relu(x)  # not in place: the identity shortcut is x before the ReLU
        f = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(a)))))
        return (self.downsample(a) if self.downsample is not None else x) + f


def _shortcut(block: BasicBlock, x: Tensor) -> Tensor:
    return block.downsample(x) if block.downsample is not None else x


class Variant(NamedTuple):
    """How the CIFAR ResNet builder makes a variant: its block, and the network options around it.

    ``block`` is None where the variant is the builder's own block (fused by ``convert``);
    ``shortcut`` forces the shortcut option; ``version`` 2 is the pre-activation network;
    ``preact_stem``: the stem ends in its BatchNorm (the first unit applies the ReLU) and a
    ReLU follows the last unit.
    """
    block: Optional[Callable[..., nn.Module]] = None
    shortcut: Optional[str] = None
    version: int = 1
    preact_stem: bool = False


SHORTCUT_VARIANTS: dict[str, Variant] = {
    "identity": Variant(),
    "constant_scaling": Variant(ScaledShortcutBlock),
    "exclusive_gating": Variant(functools.partial(GatedShortcutBlock, exclusive=True)),
    "shortcut_gating": Variant(functools.partial(GatedShortcutBlock, exclusive=False)),
    "conv_shortcut": Variant(shortcut="C"),
    "dropout_shortcut": Variant(DropoutShortcutBlock),
}

ACTIVATION_VARIANTS: dict[str, Variant] = {
    "post_activation": Variant(),
    "bn_after_add": Variant(BNAfterAddBlock),
    "relu_before_add": Variant(ReLUBeforeAddBlock),
    "relu_preactivation": Variant(ReLUPreActBlock, preact_stem=True),
    "full_preactivation": Variant(version=2),
}

VARIANTS: dict[str, Variant] = {**SHORTCUT_VARIANTS, **ACTIVATION_VARIANTS}


def variant(name: str) -> Variant:
    """The variant called ``name``, else a ValueError listing the names."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"variant {name!r} is not one of: {', '.join(VARIANTS)}") from None
