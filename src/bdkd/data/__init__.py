"""Datasets by name, deterministic splits, tensor augmentation and in-memory loading.

``load_dataset(name, root=None, val_size=0.1, seed=0) -> Splits`` with ``train``, ``val``
(carved from the official train part by ``seed``) and ``test`` (the official test part,
untouched).
"""

import importlib
import pkgutil

from bdkd.data.augment import (
    Augment,
    epoch_generator,
    epoch_seed,
    hflip,
    normalize,
    random_crop,
    random_flip,
    resized_crop,
    resized_crop_boxes,
)
from bdkd.data.base import (
    SOURCES,
    ArraySplit,
    DataError,
    DatasetInfo,
    Splits,
    available_datasets,
    make_splits,
    register_dataset,
)
from bdkd.data.folders import ImageFolderSplit
from bdkd.data.load import load_dataset
from bdkd.data.loader import InMemoryLoader, StreamedLoader
from bdkd.data.segmentation import SegAugment, compose_scenes
from bdkd.data.sources import read_idx, safe_unpickle

__all__ = [
    "SOURCES",
    "ArraySplit",
    "Augment",
    "DataError",
    "DatasetInfo",
    "ImageFolderSplit",
    "InMemoryLoader",
    "StreamedLoader",
    "SegAugment",
    "Splits",
    "available_datasets",
    "compose_scenes",
    "epoch_generator",
    "epoch_seed",
    "hflip",
    "load_dataset",
    "make_splits",
    "normalize",
    "random_crop",
    "random_flip",
    "resized_crop",
    "resized_crop_boxes",
    "read_idx",
    "register_dataset",
    "safe_unpickle",
]


def _register_every_module() -> None:
    """Import every module of this package, so that a new file registers itself."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_register_every_module()
