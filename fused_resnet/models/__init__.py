"""Network builders and unfused blocks that torchvision does not ship."""
from .cifar import CifarResNet, cifar_resnet
from .preact import PlainBasicBlock, PlainPreActBasicBlock, PreActBasicBlock, PreActBottleneck, ShortcutA
from .variants import ACTIVATION_VARIANTS, SHORTCUT_VARIANTS, VARIANTS

__all__ = [
    "CifarResNet", "cifar_resnet", "PlainBasicBlock", "PlainPreActBasicBlock",
    "PreActBasicBlock", "PreActBottleneck", "ShortcutA",
    "ACTIVATION_VARIANTS", "SHORTCUT_VARIANTS", "VARIANTS",
]
