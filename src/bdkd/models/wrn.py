"""Wide ResNets for CIFAR (Zagoruyko & Komodakis 2016): wrn_{16,40}_{1,2}."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bdkd.models.base import ZooModel, flatten_pool, init_weights, register_model


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv twice, a 1x1 shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.equal = in_planes == planes and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return out + (x if self.equal else self.shortcut(pre))


class WideResNet(ZooModel):
    feature_stages = ("block1", "block2", "block3")

    def __init__(
        self, depth: int, widen: int, num_classes: int = 100, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, channels[0], 3, 1, 1, bias=False)
        in_planes = channels[0]
        for i, (planes, stride) in enumerate(zip(channels[1:], (1, 2, 2), strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(WideBlock(in_planes, planes, stride if j == 0 else 1, drop_rate))
                in_planes = planes
            setattr(self, f"block{i + 1}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(channels[3])
        self.classifier = nn.Linear(channels[3], num_classes)
        self.num_classes, self.feature_dim = num_classes, channels[2]
        init_weights(self)

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.block1(self.conv1(x))
        middle = self.block2(x)
        out = F.relu(self.bn(self.block3(middle)))
        return middle, flatten_pool(out)


def _register(depth: int, widen: int) -> None:
    @register_model(f"wrn_{depth}_{widen}")
    def build(num_classes: int = 100, drop_rate: float = 0.0) -> WideResNet:
        return WideResNet(depth, widen, num_classes, drop_rate)


for _depth in (16, 40):
    for _widen in (1, 2):
        _register(_depth, _widen)
