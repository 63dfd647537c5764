"""python -m fused_resnet {info, check, bench, train, experiment}: see fused_resnet.cli."""
import sys

from .cli import main

sys.exit(main(prog="python -m fused_resnet"))
