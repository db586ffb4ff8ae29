"""Small models for 28x28 grey images (Fashion-MNIST, MNIST) and 8x8 digits.

``cnn_{tiny,small,medium,large,xlarge}`` (and ``cnn`` with any ``width``): two conv stages (conv-BN-ReLU twice, max-pool) and
a conv head stage, then global average pooling and a linear classifier; the width multiplies
every layer. ``mlp`` / ``mlp_{small,large}``: flatten, two hidden layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bdkd.models.base import ZooModel, flatten_pool, init_weights, register_model

CNN_WIDTHS = {"cnn_tiny": 4, "cnn_small": 8, "cnn_medium": 16, "cnn_large": 32, "cnn_xlarge": 64}


def _stage(inp: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
        nn.Conv2d(out, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
    )  # fmt: skip


class SmallCNN(ZooModel):
    """A three-stage CNN of width ``w``: channels w, 2w, 4w; any input size >= 8."""

    feature_stages = ("stage1", "stage2", "stage3")

    def __init__(self, num_classes: int = 10, width: int = 16, in_channels: int = 1) -> None:
        super().__init__()
        self.stage1 = _stage(in_channels, width)
        self.stage2 = _stage(width, 2 * width)
        self.stage3 = _stage(2 * width, 4 * width)
        self.classifier = nn.Linear(4 * width, num_classes)
        self.num_classes, self.feature_dim = num_classes, 2 * width
        init_weights(self)

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.max_pool2d(self.stage1(x), 2)
        middle = self.stage2(x)
        return middle, flatten_pool(self.stage3(F.max_pool2d(middle, 2)))


class MLP(ZooModel):
    """``flatten -> Linear(hidden) -> ReLU -> Linear(hidden) -> ReLU -> Linear(classes)``."""

    feature_stages = ("fc1", "fc2")

    def __init__(self, num_classes: int = 10, hidden: int = 128, in_features: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, num_classes)
        self.num_classes, self.feature_dim = num_classes, hidden

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor]:
        middle = F.relu(self.fc1(torch.flatten(x, 1)))
        return middle, F.relu(self.fc2(middle))


def _register_cnn(name: str, width: int) -> None:
    @register_model(name, input_size=28)
    def build(num_classes: int = 10, in_channels: int = 1) -> SmallCNN:
        return SmallCNN(num_classes, width, in_channels)


for _name, _width in CNN_WIDTHS.items():
    _register_cnn(_name, _width)


@register_model("cnn", input_size=28)
def cnn(num_classes: int = 10, width: int = 16, in_channels: int = 1) -> SmallCNN:
    """The small CNN at any ``width`` (``networks.X.kwargs: {width: 7}``)."""
    if width < 1:
        raise ValueError(f"cnn width must be >= 1, got {width}")
    return SmallCNN(num_classes, width, in_channels)


def _register_mlp(name: str, hidden: int) -> None:
    @register_model(name, input_size=8)
    def build(num_classes: int = 10, in_features: int = 64) -> MLP:
        return MLP(num_classes, hidden, in_features)


for _name, _hidden in (("mlp_small", 32), ("mlp", 128), ("mlp_large", 512)):
    _register_mlp(_name, _hidden)
