"""VGG with batch norm for CIFAR (Simonyan & Zisserman 2015; CRD's zoo): vgg8, vgg11, vgg13."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bdkd.models.base import ZooModel, flatten_pool, init_weights, register_model

CONFIGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


def _block(widths: list[int], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
        ]
        in_channels = w
    return nn.Sequential(*layers[:-1])  # the last ReLU is applied in stages()


class VGG(ZooModel):
    feature_stages = ("blocks.1", "blocks.2", "blocks.3", "blocks.4")

    def __init__(self, config: list[list[int]], num_classes: int = 100) -> None:
        super().__init__()
        blocks, in_channels = [], 3
        for widths in config:
            blocks.append(_block(widths, in_channels))
            in_channels = widths[-1]
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Linear(in_channels, num_classes)
        self.num_classes, self.feature_dim = num_classes, config[3][-1]
        init_weights(self)

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor]:
        for i in range(3):
            x = F.max_pool2d(F.relu(self.blocks[i](x)), 2)
        middle = F.relu(self.blocks[3](x))
        x = middle if middle.shape[-1] <= 4 else F.max_pool2d(middle, 2)
        return middle, flatten_pool(F.relu(self.blocks[4](x)))


def _register(name: str) -> None:
    @register_model(name)
    def build(num_classes: int = 100) -> VGG:
        return VGG(CONFIGS[name], num_classes)


for _name in CONFIGS:
    _register(_name)
