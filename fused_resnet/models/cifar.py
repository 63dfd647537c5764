"""The CIFAR-10 ResNets of He et al., "Deep Residual Learning for Image Recognition" (2016), section 4.2.

depth = 6n + 2: a 3x3 stem with 16 filters, three stages of n basic blocks at
16/32/64 filters (the first block of stages 2 and 3 has stride 2), global
average pooling and a linear classifier. Shortcut options when the shape
changes: "A" zero-padding identity (no parameters), "B" 1x1 projection, and
"C" projection on every block. ``version=2`` builds the full pre-activation
network of "Identity Mappings in Deep Residual Networks"; ``plain=True`` drops
every shortcut (the degradation experiment). ``variant`` builds one of the
residual-unit variants of "Identity Mappings" (``fused_resnet.models.variants``)
on the version-1 network.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from .preact import PlainBasicBlock, PlainPreActBasicBlock, PreActBasicBlock, ShortcutA
from .variants import Variant, variant as _variant

_WIDTHS = (16, 32, 64)


def _shortcut(option: str, inplanes: int, planes: int, stride: int, preact: bool) -> Optional[nn.Module]:
    changes = stride != 1 or inplanes != planes
    if option == "C" or (option == "B" and changes):
        conv = nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False)
        return conv if preact else nn.Sequential(conv, nn.BatchNorm2d(planes))
    if option == "A" and changes:
        return ShortcutA(inplanes, planes, stride)
    return None


def _block_class(version: int, plain: bool) -> type[nn.Module]:
    if version == 1:
        return PlainBasicBlock if plain else BasicBlock
    return PlainPreActBasicBlock if plain else PreActBasicBlock


def _resolve_variant(name: Optional[str], version: int, shortcut: str, plain: bool) -> tuple[Variant, int, str]:
    """The variant called ``name`` (None: the builder's own block) and the version and shortcut it builds on."""
    if name is None:
        return Variant(), version, shortcut
    v = _variant(name)
    if version != 1 or plain:
        raise ValueError(f"variant {name!r} is a unit of the residual version-1 network; "
                         f"got version={version}, plain={plain}")
    return v, v.version, v.shortcut or shortcut


class CifarResNet(nn.Module):
    def __init__(self, depth: int, version: int = 1, shortcut: str = "A", plain: bool = False, num_classes: int = 10,
                 variant: Optional[str] = None):
        super().__init__()
        spec, version, shortcut = _resolve_variant(variant, version, shortcut, plain)
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, 1202), got {depth}")
        if version not in (1, 2):
            raise ValueError(f"version must be 1 (original) or 2 (pre-activation), got {version}")
        if shortcut not in ("A", "B", "C"):
            raise ValueError(f"shortcut must be 'A', 'B' or 'C', got {shortcut!r}")
        n = (depth - 2) // 6
        self.version, self.preact, self.variant = version, version == 2, variant
        # A ReLU-only pre-activation network ends its stem at the BatchNorm and its last unit with a ReLU.
        self.preact_stem = spec.preact_stem
        self.conv1 = nn.Conv2d(3, _WIDTHS[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = None if self.preact else nn.BatchNorm2d(_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        block = spec.block or _block_class(version, plain)
        inplanes, stages = _WIDTHS[0], []
        for i, planes in enumerate(_WIDTHS):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                down = None if plain else _shortcut(shortcut, inplanes, planes, stride, self.preact)
                blocks.append(block(inplanes, planes, stride, down))
                inplanes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn_final = nn.BatchNorm2d(inplanes) if self.preact else None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        if not self.preact:
            x = self.bn1(x) if self.preact_stem else self.relu(self.bn1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        if self.preact:
            x = self.relu(self.bn_final(x))
        elif self.preact_stem:
            x = self.relu(x)
        return self.fc(self.avgpool(x).flatten(1))


def cifar_resnet(depth: int, version: int = 1, shortcut: str = "A", plain: bool = False, num_classes: int = 10,
                 variant: Optional[str] = None) -> CifarResNet:
    """The CIFAR-10 ResNet of the given depth (see the module docstring for the options)."""
    return CifarResNet(depth, version=version, shortcut=shortcut, plain=plain, num_classes=num_classes,
                       variant=variant)
