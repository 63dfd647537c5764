"""Training data for the CIFAR ResNets: CIFAR-10 from disk, or a synthetic stand-in made in-process.

Both are held whole in memory as uint8 images (N, 3, 32, 32) and int64 labels, and
batched on the training device: a seeded permutation per epoch, then the paper's
augmentation (random horizontal flip, 4-pixel zero padding and a random 32x32
crop) and per-channel normalisation. Every random draw comes from a generator
seeded by (seed, epoch) or (seed, step), so a resumed run sees the batches the
uninterrupted run would have seen.
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional

import torch
from torch import Tensor

DATASETS = ("cifar10", "synthetic")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
SYNTHETIC_SIZES = (10000, 2000)
# The synthetic task is one fixed task: runs of different seeds differ in weights and order only.
SYNTHETIC_SEED = 20
_PAD = 4


class DataError(ValueError):
    """A dataset that cannot be loaded, with what to do about it."""


class ImageSet(NamedTuple):
    images: Tensor  # uint8 (N, 3, 32, 32)
    labels: Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: Optional[int]) -> "ImageSet":
        """The first ``n`` examples (all of them when ``n`` is None)."""
        return self if n is None else ImageSet(self.images[:n], self.labels[:n])


# ---------------------------------------------------------------- sources


def _prototypes(g: torch.Generator, classes: int) -> Tensor:
    # Smooth colour fields: structure at a scale of a few pixels, which a crop or flip keeps.
    coarse = torch.randn(classes, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(coarse, size=32, mode="bicubic", align_corners=False)


def synthetic(train_size: int = SYNTHETIC_SIZES[0], test_size: int = SYNTHETIC_SIZES[1],
              classes: int = 10) -> tuple[ImageSet, ImageSet]:
    """A learnable 10-class task of 32x32 images: each image is its class's pattern,
    shifted by up to 6 pixels (circularly) and at a random contrast, under pixel noise."""
    g = torch.Generator().manual_seed(SYNTHETIC_SEED)
    protos = _prototypes(g, classes)
    return _synthetic_split(protos, train_size, g), _synthetic_split(protos, test_size, g)


def _synthetic_split(protos: Tensor, n: int, g: torch.Generator) -> ImageSet:
    labels = torch.randint(0, len(protos), (n,), generator=g)
    shifts = torch.randint(-6, 7, (n, 2), generator=g)
    contrast = 0.5 + torch.rand(n, 1, 1, 1, generator=g)
    images = _crop(protos[labels], shifts, wrap=True) * contrast + 0.8 * torch.randn(n, 3, 32, 32, generator=g)
    return ImageSet((128 + 40 * images).clamp(0, 255).to(torch.uint8), labels)


def _cifar10(root: str, download: bool) -> tuple[ImageSet, ImageSet]:
    """CIFAR-10's training and test sets through torchvision, from ``root`` (fetched there with ``download``)."""
    import torchvision

    sets = [torchvision.datasets.CIFAR10(root, train=train, download=download) for train in (True, False)]
    return tuple(ImageSet(torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(),
                          torch.tensor(s.targets, dtype=torch.int64)) for s in sets)


def _cifar10_missing(root: str) -> str:
    """Why CIFAR-10 cannot be read from ``root`` ('' when it can), and how to get it."""
    how = (f"run with --download to fetch it there (needs network), or extract {CIFAR10_URL} "
           f"into that directory (it makes cifar-10-batches-py/)")
    if not os.path.isdir(root):
        return f"--data {root!r}: no such directory; create it and {how}"
    folder = os.path.join(root, "cifar-10-batches-py")
    needed = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    absent = [n for n in needed if not os.path.isfile(os.path.join(folder, n))]
    if absent:
        return f"--data {root!r}: CIFAR-10 is not there ({folder} lacks {', '.join(absent)}); {how}"
    return ""


def check_source(dataset: str, root: Optional[str], download: bool) -> None:
    """Raises a DataError saying what to do when ``dataset`` cannot be read (or, with
    ``download``, fetched) from ``root``."""
    if dataset not in DATASETS:
        raise DataError(f"--dataset {dataset!r} is not one of: {', '.join(DATASETS)}")
    if dataset == "synthetic":
        return
    if root is None:
        raise DataError("--dataset cifar10 needs --data DIR, the directory that holds (or, with --download, "
                        "will hold) cifar-10-batches-py/; --dataset synthetic needs no files")
    missing = "" if download else _cifar10_missing(root)
    if missing:
        raise DataError(missing)


def load(dataset: str, root: Optional[str] = None, download: bool = False,
         train_size: Optional[int] = None, test_size: Optional[int] = None) -> tuple[ImageSet, ImageSet]:
    """(train, test) of ``dataset`` ("cifar10" or "synthetic"), each cut to its first
    ``train_size`` / ``test_size`` examples when given."""
    check_source(dataset, root, download)
    if dataset == "synthetic":
        return synthetic(train_size or SYNTHETIC_SIZES[0], test_size or SYNTHETIC_SIZES[1])
    train, test = _cifar10(root, download)
    return train.head(train_size), test.head(test_size)


# ---------------------------------------------------------------- batches


def generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded by ``seed`` and ``keys`` together (distinct keys, distinct streams)."""
    mixed = seed
    for k in keys:
        mixed = (mixed * 1_000_003 + k + 1) % 2**63
    return torch.Generator().manual_seed(mixed)


class Normalizer:
    """Per-channel standardisation with the training set's mean and standard deviation."""

    def __init__(self, train: ImageSet, device: torch.device) -> None:
        x = train.images.to(torch.float32)
        self.mean = x.mean(dim=(0, 2, 3)).view(1, 3, 1, 1).to(device)
        self.std = x.std(dim=(0, 2, 3)).clamp_min(1.0).view(1, 3, 1, 1).to(device)

    def __call__(self, images: Tensor) -> Tensor:
        return (images.to(torch.float32) - self.mean) / self.std


def augment(images: Tensor, g: torch.Generator) -> Tensor:
    """Random horizontal flip, then a random 32x32 crop of the image zero-padded by 4 pixels."""
    n = len(images)
    flip = (torch.rand(n, generator=g) < 0.5).to(images.device)
    offsets = torch.randint(-_PAD, _PAD + 1, (n, 2), generator=g).to(images.device)
    images = torch.where(flip.view(n, 1, 1, 1), images.flip(3), images)
    return _crop(images, offsets, wrap=False)


def _crop(images: Tensor, offsets: Tensor, wrap: bool) -> Tensor:
    """Each image moved by its (rows, columns) offset: circularly (``wrap``) or with zeros shifted in."""
    n, _, h, w = images.shape
    pad = 0 if wrap else int(offsets.abs().max()) if n else 0
    padded = torch.nn.functional.pad(images, (pad,) * 4)
    rows = pad + offsets[:, 0, None] + torch.arange(h, device=images.device)  # (n, h)
    cols = pad + offsets[:, 1, None] + torch.arange(w, device=images.device)  # (n, w)
    if wrap:
        rows, cols = rows % h, cols % w
    batch = torch.arange(n, device=images.device).view(n, 1, 1)
    # Advanced indexing over (batch, rows, cols) puts the channel axis last.
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class Batches:
    """The training batches of one run: step ``s`` reads batch ``s % steps_per_epoch`` of
    epoch ``s // steps_per_epoch``'s permutation (the last partial batch of an epoch is dropped)."""

    def __init__(self, train: ImageSet, batch: int, seed: int, device: torch.device) -> None:
        if len(train) < batch:
            raise DataError(f"--batch {batch}: the training set has only {len(train)} images; "
                            "use a batch of at most that many")
        self.images, self.labels = train.images.to(device), train.labels.to(device)
        self.batch, self.seed = batch, seed
        self.steps_per_epoch = len(train) // batch
        self._epoch, self._order = -1, None

    def __call__(self, step: int) -> tuple[Tensor, Tensor]:
        """(uint8 augmented images, labels) of training step ``step``."""
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = torch.randperm(len(self.labels), generator=generator(self.seed, 0, epoch))
            self._order = self._order.to(self.images.device)
        idx = self._order[i * self.batch:(i + 1) * self.batch]
        return augment(self.images[idx], generator(self.seed, 1, step)), self.labels[idx]
