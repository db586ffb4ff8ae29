"""Building a model by name: the zoo's registry, ``timm:`` / ``torchvision:`` models, or a
user's ``package.module:factory``."""

from __future__ import annotations

from torch import nn

from bdkd.models.base import MODELS, available_models
from bdkd.models.external import create_external
from bdkd.models.imported import create_imported, is_import_path

__all__ = ["create_model"]


def create_model(name: str, num_classes: int, **kwargs: object) -> nn.Module:
    """Build the model registered as ``name`` for ``num_classes`` classes.

    ``timm:<name>`` and ``torchvision:<name>`` build models of those packages when they are
    installed (``pip install bdkd[timm]`` / ``bdkd[torchvision]``); they are wrapped so that
    ``forward_with_features`` works too. ``package.module:factory`` builds any ``nn.Module``
    of the user's own (see :mod:`bdkd.models.imported`).
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if is_import_path(name):
        return create_imported(name, num_classes, **kwargs)
    if name.startswith("timm:") or name.startswith("torchvision:"):
        return create_external(name, num_classes, **kwargs)
    try:
        entry = MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; available: {available_models()} "
            "(or timm:<name>, torchvision:<name>, package.module:factory)"
        ) from None
    return entry.factory(num_classes=num_classes, **kwargs)
