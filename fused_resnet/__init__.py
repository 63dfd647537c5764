"""fused-resnet: ResNet blocks whose BatchNorm, ReLU and residual work is fused into the convolutions.

    import fused_resnet
    model = fused_resnet.convert(torchvision.models.resnet50())   # same weights, fused blocks
    fused_resnet.available_backends()                              # {name: (available, reason)}

Importing needs neither a GPU nor the compiled extension (``fused_resnet._C``
is loaded lazily, on first use of the cuda backend).
"""
import importlib.util
import os
import sys

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


def _register_source_tree_kernels() -> None:
    """In a source tree (a plain checkout on PYTHONPATH, or the editable install) the Triton
    kernels are ``<tree>/kernels/``, which setup.py installs as ``fused_resnet.kernels``:
    register that directory under the installed name, so that every layout imports them one
    way. Only its ``__init__`` runs here; the kernel modules (and triton) load on first use."""
    package = os.path.dirname(os.path.abspath(__file__))
    tree = os.path.dirname(package)
    init = os.path.join(tree, "kernels", "__init__.py")
    if os.path.isdir(os.path.join(package, "kernels")) or not (
            os.path.isfile(init) and os.path.isfile(os.path.join(tree, "setup.py"))):
        return  # installed: the kernels are fused_resnet/kernels/
    spec = importlib.util.spec_from_file_location(f"{__name__}.kernels", init,
                                                  submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    globals()["kernels"] = module


_register_source_tree_kernels()
