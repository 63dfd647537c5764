"""The model zoo of the command line and the bench/ scripts: names of torchvision and
CIFAR models, seeded models and inputs, BatchNorm made non-trivial, the fused blocks
of a converted model."""
from __future__ import annotations

import dataclasses
import re
from typing import Optional

import torch
from torch import nn

from ..blocks import FUSED_BLOCKS
from ..convert import convert
from ..models import cifar_resnet

_CIFAR_NAME = re.compile(r"cifar_(resnet|plain|preact_resnet)(\d+)(?:_v([12]))?(?:_([abcABC]))?")


def cifar_kwargs(name: str) -> Optional[dict]:
    """The keyword arguments of ``fused_resnet.models.cifar_resnet`` that the CIFAR model
    ``name`` stands for (its depth not checked), None when ``name`` is no CIFAR name.

    ``cifar_resnet<depth>`` (v1, option-A shortcut), with optional suffixes ``_v2``
    (pre-activation) and ``_B``/``_C`` (shortcut option); ``cifar_preact_resnet<depth>``
    is ``_v2``; ``cifar_plain<depth>`` has no shortcuts.
    """
    m = _CIFAR_NAME.fullmatch(name)
    if not m:
        return None
    family, depth, version, shortcut = m.groups()
    return dict(depth=int(depth), version=int(version or (2 if family == "preact_resnet" else 1)),
                shortcut=(shortcut or "A").upper(), plain=family == "plain")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "imagenet" or "cifar"
    image_size: int
    num_classes: int
    cifar: Optional[dict] = None  # keyword arguments of fused_resnet.models.cifar_resnet


def model_spec(name: str) -> ModelSpec:
    """What ``name`` builds: any torchvision classification builder, or a CIFAR ResNet
    (``cifar_kwargs``)."""
    kwargs = cifar_kwargs(name)
    if kwargs is not None:
        return ModelSpec(name, "cifar", 32, 10, dict(kwargs, num_classes=10))
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        resnets = [n for n in available if "res" in n]
        raise ValueError(
            f"unknown model {name!r}: use a torchvision.models builder name ({', '.join(resnets)}, ...) "
            "or cifar_resnet<depth> (e.g. cifar_resnet56, cifar_resnet56_v2, cifar_resnet20_B)"
        )
    return ModelSpec(name, "imagenet", 224, 1000)


def build_model(spec: ModelSpec | str, seed: int = 0) -> nn.Module:
    """The plain PyTorch model (weights=None), its parameters drawn from ``seed``."""
    if isinstance(spec, str):
        spec = model_spec(spec)
    torch.manual_seed(seed)
    if spec.kind == "cifar":
        return cifar_resnet(**spec.cifar)
    import torchvision

    return torchvision.models.get_model(spec.name, weights=None)


def fusable_blocks(spec: ModelSpec) -> int:
    """How many blocks ``convert`` fuses in the model, counted on the meta device (no memory,
    no compute); ValueError when there is none."""
    with torch.device("meta"):
        blocks = len(fused_blocks(convert(build_model(spec), backend="auto")))
    if not blocks:
        raise ValueError(f"{spec.name} has no block that fused-resnet fuses (torchvision's BasicBlock and "
                         "Bottleneck, pre-activation and CIFAR blocks)")
    return blocks


def check_step(spec: ModelSpec, *, batch: int, image_size: int, train: bool) -> None:
    """One step of the plain model on the meta device: ValueError when it cannot take a batch
    of ``batch`` images of ``image_size`` pixels (BatchNorm needs 2 values per channel to train)."""
    with torch.device("meta"):
        model = build_model(spec).train(train)
        try:
            model(torch.empty(batch, 3, image_size, image_size))
        except Exception as e:
            mode = "training" if train else "inference"
            raise ValueError(f"{spec.name} cannot run a {mode} step on a batch of {batch} "
                             f"{image_size}x{image_size} images: {e}") from None


def perturb_batchnorm(model: nn.Module, seed: int = 1) -> nn.Module:
    """Draw BatchNorm affine parameters and running statistics away from (1, 0, 0, 1).

    At initialisation an eval-mode BatchNorm is the identity, which would hide a
    swapped scale/shift or a stale folded weight; this makes every BN distinct.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_((torch.rand(n, generator=g) - 0.5) * 0.4)
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


def calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics to the batch statistics of ``x``.

    A freshly initialised network in eval mode normalises with (0, 1), so its
    activations grow block after block (to ~1e3 at the end of a ResNet-50) and
    the comparison turns ill-conditioned (ReLU masks flip on rounding noise).
    One no-grad training-mode forward with cumulative averaging gives running
    statistics like a trained model's, after which the model is put back as it was.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    for m, (momentum, nbt) in zip(bns, saved):
        m.momentum = momentum
        m.num_batches_tracked.copy_(nbt)
    return model.train(was_training)


def make_input(batch: int, image_size: int, *, num_classes: int, seed: int = 0, device="cpu",
               dtype=torch.float32, channels_last: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random image batch (drawn in fp32 on the CPU, then moved) and labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, image_size, image_size, generator=g)
    target = torch.randint(0, num_classes, (batch,), generator=g)
    x = x.to(device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, target.to(device)


def fused_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every fused block, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FUSED_BLOCKS)]


def block_backends(model: nn.Module) -> dict[str, int]:
    """How many fused blocks run on each backend (``block.backend`` after a forward)."""
    counts: dict[str, int] = {}
    for _, m in fused_blocks(model):
        b = str(getattr(m, "backend", None))
        counts[b] = counts.get(b, 0) + 1
    return counts


def describe_backends(counts: dict[str, int]) -> str:
    return ", ".join(f"{b} x{n}" for b, n in sorted(counts.items())) or "no fused blocks"
