"""MobileNetV2 for CIFAR at width 0.5 (Sandler et al. 2018; CRD's ``mobile_half``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bdkd.models.base import ZooModel, flatten_pool, init_weights, register_model

# expansion t, channels c, repeats n, first stride s ("T" is the expansion of the paper)
SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def _conv_bn(
    inp: int, out: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(inp, out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.residual = stride == 1 and inp == out
        self.conv = nn.Sequential(
            _conv_bn(inp, hidden, 1),
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            _conv_bn(hidden, out, 1, relu=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(ZooModel):
    feature_stages = ("stages_.1", "stages_.2", "stages_.4", "stages_.6")

    def __init__(self, num_classes: int = 100, width: float = 0.5, expansion: int = 6) -> None:
        super().__init__()
        channels = int(32 * width)
        self.stem = _conv_bn(3, channels, 3, 2)
        stages = []
        for t, c, n, s in SETTINGS:
            out = int(c * width)
            blocks = []
            for i in range(n):
                blocks.append(
                    InvertedResidual(channels, out, s if i == 0 else 1, expansion if t != 1 else 1)
                )
                channels = out
            stages.append(nn.Sequential(*blocks))
        self.stages_ = nn.ModuleList(stages)
        self.last_channels = int(1280 * width) if width > 1.0 else 1280
        self.head = _conv_bn(channels, self.last_channels, 1)
        self.classifier = nn.Linear(self.last_channels, num_classes)
        self.num_classes, self.feature_dim = num_classes, int(SETTINGS[-2][1] * width)
        init_weights(self)

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.stem(x)
        for stage in self.stages_[:-1]:
            x = stage(x)
        middle = x
        x = self.head(self.stages_[-1](middle))
        return middle, flatten_pool(F.relu(x))


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int = 100, width: float = 0.5) -> MobileNetV2:
    return MobileNetV2(num_classes, width)
