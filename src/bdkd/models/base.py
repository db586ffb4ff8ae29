"""The model contract and the model registry.

Every model of the zoo is a :class:`ZooModel`: ``forward(x)`` gives logits, and
``forward_with_features(x)`` gives ``(feature, logits)`` with ``feature`` the global-average
pooled output of the second-to-last stage (what USKD's auxiliary head reads), of width
``feature_dim``. ``num_classes`` is an attribute.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class ZooModel(nn.Module):
    """A classifier that exposes its intermediate feature.

    Subclasses implement ``stages(x) -> (middle, pooled)``: ``middle`` the output of the
    second-to-last stage (N, D, H, W) or (N, D), ``pooled`` the final (N, F) vector that
    ``self.classifier`` maps to logits.
    """

    num_classes: int
    feature_dim: int
    classifier: nn.Module

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.stages(x)[1])

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        middle, pooled = self.stages(x)
        feature = middle.mean(dim=(2, 3)) if middle.dim() == 4 else middle
        return feature, self.classifier(pooled)


ModelFactory = Callable[..., nn.Module]


class _Entry:
    def __init__(self, factory: ModelFactory, input_size: int, task: str) -> None:
        self.factory, self.input_size, self.task = factory, input_size, task


MODELS: dict[str, _Entry] = {}


def register_model(
    name: str, *, input_size: int = 32, task: str = "classification"
) -> Callable[[ModelFactory], ModelFactory]:
    """Register a factory ``fn(num_classes, **kwargs) -> nn.Module`` under ``name``.

    ``input_size`` is the image side the model is built for (32 for the CIFAR zoo, 28 for
    the Fashion-MNIST/MNIST CNNs, 8 for the digits MLP). ``task`` names the task its logits
    serve (:mod:`bdkd.engine.tasks`): ``classification`` (logits (N, C) and
    ``forward_with_features``) or ``segmentation`` (logits (N, C, H, W)).
    """

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = _Entry(factory, input_size, task)
        return factory

    return decorate


def available_models(task: str | None = None) -> list[str]:
    """Names accepted by :func:`create_model` (plus ``timm:<name>`` and ``torchvision:<name>``),
    only those of ``task`` when given."""
    return sorted(n for n, e in MODELS.items() if task is None or e.task == task)


def model_input_size(name: str) -> int | None:
    """The image side a registered model is built for; None for timm/torchvision models."""
    entry = MODELS.get(name)
    return entry.input_size if entry else None


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convolutions, unit BN, zero biases (the zoo's usual initialisation)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def flatten_pool(x: Tensor) -> Tensor:
    """Global average pooling to (N, C)."""
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
