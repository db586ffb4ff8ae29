"""Model zoo: CIFAR networks of the distillation protocol, small nets, timm/torchvision.

``create_model(name, num_classes, **kwargs)``; every zoo model has ``forward_with_features``
(see :mod:`bdkd.models.base`).
"""

import importlib
import pkgutil

from bdkd.models.base import (
    MODELS,
    ZooModel,
    available_models,
    count_parameters,
    model_input_size,
    register_model,
)
from bdkd.models.create import create_model

__all__ = [
    "MODELS",
    "ZooModel",
    "available_models",
    "count_parameters",
    "create_model",
    "model_input_size",
    "register_model",
]


def _register_every_module() -> None:
    """Import every module of this package, so that a new file registers itself."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_register_every_module()
