"""Model zoo: CIFAR networks of the distillation protocol, small nets, timm/torchvision.

``create_model(name, num_classes, **kwargs)``; every zoo model has ``forward_with_features``
(see :mod:`bdkd.models.base`).
"""

from bdkd.models import (  # noqa: F401  (register the models)
    mobilenetv2,
    resnet,
    segmentation,
    shufflenet,
    small,
    vgg,
    wrn,
)
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
