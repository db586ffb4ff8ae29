"""ShuffleNetV1 (Zhang et al. 2018) and ShuffleNetV2 (Ma et al. 2018) for CIFAR (CRD's zoo)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bdkd.models.base import ZooModel, flatten_pool, init_weights, register_model


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class V1Bottleneck(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = out_planes // 4
        g = 1 if in_planes == 24 else groups
        self.groups, self.stride = g, stride
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: Tensor) -> Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(ZooModel):
    feature_stages = ("layers.0", "layers.1", "layers.2")

    def __init__(
        self,
        num_classes: int = 100,
        out_planes: tuple[int, ...] = (240, 480, 960),
        blocks: tuple[int, ...] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_planes, layers = 24, []
        for planes, n in zip(out_planes, blocks, strict=True):
            stage = []
            for i in range(n):
                cat = in_planes if i == 0 else 0
                stage.append(V1Bottleneck(in_planes, planes - cat, 2 if i == 0 else 1, groups))
                in_planes = planes
            layers.append(nn.Sequential(*stage))
        self.layers = nn.ModuleList(layers)
        self.classifier = nn.Linear(out_planes[-1], num_classes)
        self.num_classes, self.feature_dim = num_classes, out_planes[1]
        init_weights(self)

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.layers[0](F.relu(self.bn1(self.conv1(x))))
        middle = self.layers[1](x)
        return middle, flatten_pool(self.layers[2](middle))


class V2Basic(nn.Module):
    """Stride-1 unit: split channels in half, transform one half, concatenate, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels // 2
        self.branch = nn.Sequential(
            nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False), nn.BatchNorm2d(c),
            nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        keep, change = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([keep, self.branch(change)], 1), 2)


class V2Down(nn.Module):
    """Stride-2 unit: two branches that each halve the resolution, concatenated, shuffled."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.left = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False), nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.right = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False), nn.BatchNorm2d(mid),
            nn.Conv2d(mid, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


class ShuffleNetV2(ZooModel):
    feature_stages = ("layers.0", "layers.1", "layers.2")

    def __init__(
        self,
        num_classes: int = 100,
        channels: tuple[int, ...] = (116, 232, 464, 1024),
        blocks: tuple[int, ...] = (3, 7, 3),
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_c, layers = 24, []
        for out_c, n in zip(channels[:3], blocks, strict=True):
            layers.append(nn.Sequential(V2Down(in_c, out_c), *[V2Basic(out_c) for _ in range(n)]))
            in_c = out_c
        self.layers = nn.ModuleList(layers)
        self.conv2 = nn.Conv2d(channels[2], channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels[3])
        self.classifier = nn.Linear(channels[3], num_classes)
        self.num_classes, self.feature_dim = num_classes, channels[1]
        init_weights(self)

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.layers[0](F.relu(self.bn1(self.conv1(x))))
        middle = self.layers[1](x)
        out = F.relu(self.bn2(self.conv2(self.layers[2](middle))))
        return middle, flatten_pool(out)


@register_model("shufflenetv1")
def shufflenetv1(num_classes: int = 100) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes)


@register_model("shufflenetv2")
def shufflenetv2(num_classes: int = 100) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes)
