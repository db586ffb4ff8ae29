"""Loading a dataset by name: a registered source or a user's ``package.module:factory``."""

from __future__ import annotations

import inspect
from pathlib import Path

from bdkd.data.base import SOURCES, DataError, Splits, available_datasets, check_labels, make_splits
from bdkd.data.custom import load_custom

__all__ = ["load_dataset"]


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    val_size: float | int = 0.1,
    seed: int = 0,
    **options: object,
) -> Splits:
    """Load dataset ``name`` from ``root`` (or its default place) into train/val/test.

    ``name`` is a registered dataset or ``package.module:factory`` (see
    :func:`bdkd.data.custom.load_custom`). ``options`` go to the loader; one it does not
    take is an error naming it. A loader that returns its own validation split (an
    ``image_folder`` with ``val/``) has it used instead of carving ``val_size`` from train.
    """
    if ":" in name:
        parts = load_custom(name, root, **options)
    else:
        try:
            source = SOURCES[name]
        except KeyError:
            raise DataError(
                f"unknown dataset {name!r}; available: {available_datasets()} (or "
                "package.module:factory)"
            ) from None
        params = inspect.signature(source.loader).parameters
        unknown = sorted(k for k in options if k not in params)
        if unknown:
            raise DataError(
                f"dataset {name!r} does not take {unknown} (its images have a fixed size and "
                f"format); it takes {sorted(k for k in params if k != 'root') or 'no options'}"
            )
        root = root if root is not None else source.default_root
        parts = source.loader(None if root is None else Path(root), **options)
    if len(parts) == 4:
        train, val, test, info = parts
    else:
        (train, test, info), val = parts, None
    if val is not None:
        check_labels(info, ("train", train), ("val", val), ("test", test))
        return Splits(info, train, val, test)
    return make_splits(train, test, info, val_size=val_size, seed=seed)
