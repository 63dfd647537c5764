"""Unfused pre-activation (v2) residual blocks and the shortcut modules of the CIFAR ResNets.

The pre-activation blocks follow He et al., "Identity Mappings in Deep Residual
Networks" (2016): BN -> ReLU -> conv repeated, the shortcut added with no
activation after the add. A projection shortcut (``downsample``) is applied to
the pre-activated input relu(bn1(x)); the identity shortcut is x itself.
Constructors take torchvision's block arguments so the same network builders
and ``convert`` work on both families.
"""
from __future__ import annotations

from typing import Callable, Optional

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, conv1x1, conv3x3


class ShortcutA(nn.Module):
    """Option A shortcut: subsample by ``stride``, zero-pad the new channels (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"ShortcutA pads channels: out_channels {out_channels} < in_channels {in_channels}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - self.in_channels
        return nn.functional.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def _norm(norm_layer: Optional[Callable[..., nn.Module]]) -> Callable[..., nn.Module]:
    return nn.BatchNorm2d if norm_layer is None else norm_layer


class PreActBasicBlock(nn.Module):
    expansion: int = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
        groups: int = 1, base_width: int = 64, dilation: int = 1,
        norm_layer: Optional[Callable[..., nn.Module]] = None,
    ) -> None:
        super().__init__()
        norm_layer = _norm(norm_layer)
        if groups != 1 or base_width != 64:
            raise ValueError("PreActBasicBlock only supports groups=1 and base_width=64")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in PreActBasicBlock")
        self.bn1 = norm_layer(inplanes)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        shortcut = self.downsample(out) if self.downsample is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        out += shortcut  # in place, like torchvision: under autocast the sum keeps the conv's dtype
        return out


class PreActBottleneck(nn.Module):
    expansion: int = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
        groups: int = 1, base_width: int = 64, dilation: int = 1,
        norm_layer: Optional[Callable[..., nn.Module]] = None,
    ) -> None:
        super().__init__()
        norm_layer = _norm(norm_layer)
        width = int(planes * (base_width / 64.0)) * groups
        self.bn1 = norm_layer(inplanes)
        self.conv1 = conv1x1(inplanes, width)
        self.bn2 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn3 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        shortcut = self.downsample(out) if self.downsample is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        out += shortcut
        return out


class PlainBasicBlock(BasicBlock):
    """torchvision's BasicBlock without its shortcut: the 'plain' nets of the degradation experiment."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)))


class PlainPreActBasicBlock(PreActBasicBlock):
    """PreActBasicBlock without its shortcut."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        return self.conv2(self.relu(self.bn2(out)))
