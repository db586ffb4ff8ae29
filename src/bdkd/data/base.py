"""Datasets as uint8 image tensors with deterministic train / val / test splits.

A source returns the *official* train and test parts; :func:`make_splits` carves the
validation split out of train with a seeded permutation (the test part is never touched
and never used to choose anything).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor


class DataError(ValueError):
    """A dataset is missing, truncated, corrupt or inconsistent (the message says which)."""


@dataclass
class ArraySplit:
    """One split held in memory: ``images`` uint8 (N, C, H, W) and ``labels``: int64 class
    indices (N,) for classification, or uint8 label maps (N, H, W) for segmentation (class
    per pixel, 255 for pixels to ignore)."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        n = self.images.shape[0]
        if self.labels.dim() == 1:
            if self.labels.shape != (n,):
                raise DataError(f"{n} images but labels of shape {tuple(self.labels.shape)}")
            self.labels = self.labels.long()
        elif self.labels.shape != (n, *self.images.shape[2:]):
            raise DataError(
                f"label maps must be (N, H, W) = {(n, *self.images.shape[2:])}, got "
                f"{tuple(self.labels.shape)}"
            )
        elif self.labels.dtype != torch.uint8:
            raise DataError(f"label maps must be uint8 (255 = ignore), got {self.labels.dtype}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: Tensor) -> ArraySplit:
        return ArraySplit(self.images[index], self.labels[index])


@dataclass
class DatasetInfo:
    """What a model and the augmentation need to know about a dataset."""

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0
    flip: bool = False
    class_names: list[str] = field(default_factory=list)
    random_resized_crop: bool = False
    task: str = "classification"
    ignore_index: int = 255
    scale_range: tuple[float, float] = (0.5, 2.0)


@dataclass
class Splits:
    """train / val / test of one dataset, with its :class:`DatasetInfo`; ``val`` is None
    when no validation split is held out (``val_size=0``: train on the whole train part)."""

    info: DatasetInfo
    train: ArraySplit
    val: ArraySplit | None
    test: ArraySplit


Loader = Callable[..., tuple[ArraySplit, ArraySplit, DatasetInfo]]


@dataclass
class _Source:
    loader: Loader
    default_root: str | None
    how_to_get: str


SOURCES: dict[str, _Source] = {}


def register_dataset(
    name: str, *, default_root: str | None = None, how_to_get: str = ""
) -> Callable[[Loader], Loader]:
    """Register ``loader(root, **kwargs) -> (train, test, info)`` under ``name``."""

    def decorate(loader: Loader) -> Loader:
        if name in SOURCES:
            raise ValueError(f"dataset {name!r} is already registered")
        SOURCES[name] = _Source(loader, default_root, how_to_get)
        return loader

    return decorate


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return sorted(SOURCES)


def make_splits(
    train: ArraySplit, test: ArraySplit, info: DatasetInfo, *, val_size: float | int, seed: int
) -> Splits:
    """Carve ``val_size`` (a count, or a fraction of train) out of train, by ``seed``;
    ``val_size=0`` keeps all of train and no validation split."""
    n = len(train)
    if isinstance(val_size, float) and not isinstance(val_size, bool):
        if not 0.0 <= val_size < 1.0:
            raise DataError(f"data.val_size as a fraction must be in [0, 1), got {val_size}")
        count = int(round(n * val_size))
    elif isinstance(val_size, int) and not isinstance(val_size, bool):
        count = val_size
    else:
        raise DataError(f"data.val_size must be an int or a float, got {val_size!r}")
    if count < 0 or count >= n or (count == 0 and val_size != 0):
        raise DataError(f"data.val_size={val_size} leaves an empty split: train has {n} images")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    check_labels(info, ("train", train), ("test", test))
    if count == 0:
        return Splits(info, train, None, test)
    return Splits(info, train.subset(order[count:]), train.subset(order[:count]), test)


def check_labels(info: DatasetInfo, *splits: tuple[str, object]) -> None:
    """Every split non-empty, every label in [0, num_classes) (label maps: besides the
    ignore index)."""
    for split_name, split in splits:
        if len(split) == 0:  # type: ignore[arg-type]
            raise DataError(f"{info.name}: the {split_name} split is empty")
        labels = getattr(split, "labels", None)
        if isinstance(labels, Tensor) and labels.dim() > 1:
            labels = labels[labels != info.ignore_index]
        if isinstance(labels, Tensor) and labels.numel():
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= info.num_classes:
                raise DataError(
                    f"{info.name}: {split_name} labels lie in [{lo}, {hi}], outside "
                    f"[0, {info.num_classes - 1}]"
                )


def missing_directory(name: str, root: Path, expected: str, how_to_get: str) -> DataError:
    """The error for a dataset directory that is absent or incomplete."""
    return DataError(
        f"{name}: {root} does not hold the dataset (expected {expected}); {how_to_get}"
    )
