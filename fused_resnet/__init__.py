"""fused-resnet: ResNet blocks whose BatchNorm, ReLU and residual work is fused into the convolutions."""
from .backends import available_backends
from . import ops

__version__ = "0.1.0"
