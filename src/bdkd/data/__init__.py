"""Datasets by name, deterministic splits, tensor augmentation and in-memory loading.

``load_dataset(name, root=None, val_size=0.1, seed=0) -> Splits`` with ``train``, ``val``
(carved from the official train part by ``seed``) and ``test`` (the official test part,
untouched).
"""

from bdkd.data import folders, sources  # noqa: F401  (registers the datasets)
from bdkd.data.augment import Augment, hflip, normalize, random_crop, random_flip
from bdkd.data.base import (
    SOURCES,
    ArraySplit,
    DataError,
    DatasetInfo,
    Splits,
    available_datasets,
    load_dataset,
    make_splits,
    register_dataset,
)
from bdkd.data.folders import ImageFolderSplit
from bdkd.data.loader import InMemoryLoader
from bdkd.data.sources import read_idx, safe_unpickle

__all__ = [
    "SOURCES",
    "ArraySplit",
    "Augment",
    "DataError",
    "DatasetInfo",
    "ImageFolderSplit",
    "InMemoryLoader",
    "Splits",
    "available_datasets",
    "hflip",
    "load_dataset",
    "make_splits",
    "normalize",
    "random_crop",
    "random_flip",
    "read_idx",
    "register_dataset",
    "safe_unpickle",
]
