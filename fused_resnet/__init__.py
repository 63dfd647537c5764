"""fused-resnet: ResNet blocks whose BatchNorm, ReLU and residual work is fused into the convolutions.

    import fused_resnet
    model = fused_resnet.convert(torchvision.models.resnet50())   # same weights, fused blocks
    fused_resnet.available_backends()                              # {name: (available, reason)}

Importing needs neither a GPU nor the compiled extension (``fused_resnet._C``
is loaded lazily, on first use of the cuda backend).
"""
from . import models, ops
from .backends import available_backends
from .blocks import (
    FusedBasicBlock,
    FusedBottleneck,
    FusedPlainBasicBlock,
    FusedPlainPreActBasicBlock,
    FusedPreActBasicBlock,
    FusedPreActBottleneck,
)
from .convert import convert, revert

__version__ = "0.1.0"

__all__ = [
    "FusedBasicBlock", "FusedBottleneck", "FusedPlainBasicBlock", "FusedPlainPreActBasicBlock",
    "FusedPreActBasicBlock", "FusedPreActBottleneck", "available_backends", "convert", "models",
    "ops", "revert", "__version__",
]
