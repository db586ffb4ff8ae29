"""Model zoo: CIFAR networks of the distillation protocol, small nets, timm/torchvision.

``create_model(name, num_classes, **kwargs)``; every zoo model has ``forward_with_features``
(see :mod:`bdkd.models.base`).
"""

from bdkd.models import mobilenetv2, resnet, shufflenet, small, vgg, wrn  # noqa: F401  (register)
from bdkd.models.base import (
    MODELS,
    ZooModel,
    available_models,
    count_parameters,
    create_model,
    model_input_size,
    register_model,
)

__all__ = [
    "MODELS",
    "ZooModel",
    "available_models",
    "count_parameters",
    "create_model",
    "model_input_size",
    "register_model",
]
