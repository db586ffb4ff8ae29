"""CIFAR ResNets of the standard distillation protocol (He et al. 2016; CRD's zoo).

resnet{8,14,20,32,44,56,110}: 3 stages of (depth - 2) / 6 basic blocks, 16/32/64 channels.
resnet8x4, resnet32x4: the same with 64/128/256 channels after a 32-channel stem.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bdkd.models.base import ZooModel, flatten_pool, init_weights, register_model


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(ZooModel):
    """ResNet for 32x32 inputs with ``filters = [stem, stage1, stage2, stage3]``."""

    feature_stages = ("layer1", "layer2", "layer3")

    def __init__(
        self, depth: int, filters: list[int], num_classes: int = 100, in_channels: int = 3
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, filters[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        in_planes = filters[0]
        layers = []
        for i, (planes, stride) in enumerate(zip(filters[1:], (1, 2, 2), strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
            setattr(self, f"layer{i + 1}", layers[-1])
        self.classifier = nn.Linear(filters[3], num_classes)
        self.num_classes, self.feature_dim = num_classes, filters[2]
        init_weights(self)

    def feature_map(self, x: Tensor) -> Tensor:
        """The last stage's output (N, filters[3], H / 4, W / 4): what segmentation heads read."""
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        middle = self.layer2(x)
        return middle, flatten_pool(self.layer3(middle))


RESNET_FILTERS: dict[str, tuple[int, list[int]]] = {}


def _register(depth: int, filters: list[int], suffix: str = "") -> None:
    RESNET_FILTERS[f"resnet{depth}{suffix}"] = (depth, filters)

    @register_model(f"resnet{depth}{suffix}")
    def build(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
        return CifarResNet(depth, filters, num_classes, in_channels)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(_depth, [16, 16, 32, 64])
for _depth in (8, 32):
    _register(_depth, [32, 64, 128, 256], "x4")
