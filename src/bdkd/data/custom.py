"""Users' own datasets: ``data.dataset: "package.module:factory"``.

The factory is called as ``factory(root=data.root, **data.options)`` (``root`` only when it
takes it) and returns a mapping with ``train`` and ``test`` (and optionally ``val``, used as
the validation split instead of one carved from train). Each split is one of:

- an :class:`~bdkd.data.ArraySplit`, or a pair ``(images, labels)`` of tensors or numpy
  arrays: uint8 images (N, C, H, W) or (N, H, W), integer labels (N,), held in memory;
- a ``torch.utils.data.Dataset`` whose items are ``(image, label)`` with a uint8 image
  (C, H, W) tensor: decoded batch by batch (streamed).

Optional keys: ``num_classes`` (required for Dataset splits), ``class_names``, ``mean`` and
``std`` (per channel, in [0, 1] units; else measured on the training images),
``crop_padding``, ``flip``, ``random_resized_crop`` (the augmentation; by default crop with
padding side/8 below 64 pixels, RandomResizedCrop from 64 on, no flip).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from bdkd.data.base import ArraySplit, DataError, DatasetInfo
from bdkd.plugins import load_object

STAT_SAMPLE = 2000


class DatasetSplit(Dataset):
    """A user's ``Dataset`` (or a subset of it), checked item by item as it is read."""

    def __init__(self, dataset: Any, indices: list[int] | None = None, name: str = "") -> None:
        self.dataset, self.name = dataset, name
        self.indices = list(range(len(dataset))) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        item = self.dataset[self.indices[i]]
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise DataError(f"dataset {self.name}: items must be (image, label) pairs")
        image, label = item
        image = torch.as_tensor(image)
        if image.dtype != torch.uint8 or image.dim() != 3:
            raise DataError(
                f"dataset {self.name}: images must be uint8 (C, H, W) tensors, got "
                f"{image.dtype} {tuple(image.shape)}"
            )
        return image, torch.as_tensor(int(label))

    def subset(self, index: Tensor) -> DatasetSplit:
        return DatasetSplit(self.dataset, [self.indices[i] for i in index.tolist()], self.name)


def _array_split(obj: Any, where: str) -> ArraySplit:
    images, labels = (torch.as_tensor(np.asarray(x)) for x in obj)
    if images.dim() == 3:
        images = images[:, None]
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise DataError(f"{where}: images must be uint8 (N, C, H, W) or (N, H, W)")
    if labels.dim() != 1 or labels.is_floating_point():
        raise DataError(f"{where}: labels must be integers of shape (N,)")
    return ArraySplit(images.contiguous(), labels.long())


def _split(obj: Any, where: str) -> ArraySplit | DatasetSplit:
    if isinstance(obj, ArraySplit):
        return obj
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return _array_split(obj, where)
    if hasattr(obj, "__len__") and hasattr(obj, "__getitem__"):
        return DatasetSplit(obj, name=where)
    raise DataError(
        f"{where}: expected an ArraySplit, an (images, labels) pair or a torch Dataset, got "
        f"{type(obj).__name__}"
    )


def _first_image(split: ArraySplit | DatasetSplit) -> Tensor:
    return split.images[0] if isinstance(split, ArraySplit) else split[0][0]


def _stats(split: ArraySplit | DatasetSplit) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if isinstance(split, ArraySplit):
        images = split.images
    else:
        images = torch.stack([split[i][0] for i in range(min(STAT_SAMPLE, len(split)))])
    x = images.double() / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def load_custom(
    path: str, root: str | Path | None = None, **options: object
) -> tuple[Any, Any, Any, DatasetInfo]:
    """(train, val or None, test, info) from the dataset factory at import path ``path``."""
    factory = load_object(path, what="dataset")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs = dict(options)
    if "root" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        kwargs["root"] = None if root is None else str(root)
    try:
        result = factory(**kwargs)
    except Exception as err:  # the user's own code: any exception is one line
        first = (str(err).strip().splitlines() or [""])[0]
        raise DataError(
            f"dataset {path!r}: calling it with {sorted(kwargs)} failed ({type(err).__name__}: "
            f"{first}); BDKD_TRACEBACK=1 shows where"
        ) from err
    if not isinstance(result, Mapping) or "train" not in result or "test" not in result:
        raise DataError(f"dataset {path!r} must return a mapping with 'train' and 'test'")
    splits = {
        k: _split(result[k], f"dataset {path!r}, {k}")
        for k in ("train", "val", "test")
        if result.get(k) is not None
    }
    train = splits["train"]
    first = _first_image(train)
    channels, size = int(first.shape[0]), int(first.shape[-1])
    if first.shape[-2] != first.shape[-1]:
        raise DataError(f"dataset {path!r}: images must be square, got {tuple(first.shape)}")
    num_classes = result.get("num_classes")
    if num_classes is None:
        if not isinstance(train, ArraySplit):
            raise DataError(f"dataset {path!r}: give 'num_classes' (its splits are Datasets)")
        num_classes = (
            int(max(int(s.labels.max()) for s in splits.values() if isinstance(s, ArraySplit))) + 1
        )
    mean, std = result.get("mean"), result.get("std")
    if mean is None or std is None:
        mean, std = _stats(train)
    if len(mean) != channels or len(std) != channels:
        raise DataError(f"dataset {path!r}: mean and std need {channels} values (one per channel)")
    rrc = bool(result.get("random_resized_crop", size >= 64))
    info = DatasetInfo(
        name=path,
        num_classes=int(num_classes),
        channels=channels,
        image_size=size,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        crop_padding=int(result.get("crop_padding", 0 if rrc else max(1, size // 8))),
        flip=bool(result.get("flip", False)),
        class_names=[str(c) for c in result.get("class_names", [])],
        random_resized_crop=rrc,
    )
    return train, splits.get("val"), splits["test"], info
