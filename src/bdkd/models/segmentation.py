"""Segmentation networks: logits (N, C, H, W) at the input's resolution.

- ``seg_unet`` (``width``): a small U-Net (three levels, skip connections), for CPUs;
  ``unet_encoder`` is its encoder as a classifier, to pretrain it by classification.
- ``seg_deeplab_<resnet>`` / ``seg_psp_<resnet>`` for the CIFAR zoo's ResNets
  (``resnet8``, ``resnet20``, ``resnet32``, ``resnet56``, ``resnet8x4``, ...): the ResNet's
  stages as the backbone (output stride 4) with a DeepLabV3-style ASPP head (atrous rates
  2, 4, 6 and image pooling) or a PSP pyramid-pooling head (bins 1, 2, 3, 6).
- ``pspnet_resnet18`` / ``pspnet_resnet101`` / ``deeplabv3_resnet18`` /
  ``deeplabv3_resnet101``: ImageNet ResNets dilated to output stride 8 (the setting of the
  Cityscapes distillation papers: a PSPNet or DeepLabV3 head on ResNet-18 and ResNet-101).
  Their parameters carry torchvision's names (``backbone.conv1``, ``backbone.layer1.0...``),
  so torchvision's ImageNet weights load with ``weights_map: {"": "backbone."}`` and
  ``weights_strict: false`` (the classifier ``fc`` is not part of the backbone).

Every head's output is upsampled bilinearly to the input size, so teacher and student
logits always share the label maps' resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bdkd.models.base import init_weights, register_model
from bdkd.models.resnet import RESNET_FILTERS, CifarResNet


def _conv_bn(inp: int, out: int, k: int = 3, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(inp, out, k, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU(inplace=True),
    )


class ASPPHead(nn.Module):
    """DeepLabV3's atrous spatial pyramid pooling, then a 3x3 conv and a 1x1 classifier."""

    def __init__(
        self, inp: int, num_classes: int, channels: int = 64, rates: tuple[int, ...] = (2, 4, 6)
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn(inp, channels, 1), *[_conv_bn(inp, channels, 3, r) for r in rates]]
        )
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(inp, channels, 1, bias=False), nn.ReLU(inplace=True)
        )
        self.project = _conv_bn(channels * (len(rates) + 2), channels, 1)
        self.refine = _conv_bn(channels, channels, 3)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        parts = [b(x) for b in self.branches]
        parts.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.classifier(self.refine(self.project(torch.cat(parts, 1))))


class PSPHead(nn.Module):
    """PSPNet's pyramid pooling (bins 1, 2, 3, 6), then a 3x3 conv and a 1x1 classifier."""

    def __init__(
        self, inp: int, num_classes: int, channels: int = 64, bins: tuple[int, ...] = (1, 2, 3, 6)
    ) -> None:
        super().__init__()
        branch = max(inp // len(bins), 8)
        self.stages = nn.ModuleList(
            [
                nn.Sequential(
                    nn.AdaptiveAvgPool2d(b),
                    nn.Conv2d(inp, branch, 1, bias=False),
                    nn.BatchNorm2d(branch),
                    nn.ReLU(inplace=True),
                )
                for b in bins
            ]
        )
        self.bottleneck = _conv_bn(inp + branch * len(bins), channels, 3)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(s(x), size=size, mode="bilinear", align_corners=False)
            for s in self.stages
        ]
        return self.classifier(self.bottleneck(torch.cat([x, *pooled], 1)))


class SegmentationNet(nn.Module):
    """``backbone(x)`` (a feature map) -> ``head`` -> logits upsampled to the input size."""

    def __init__(self, backbone: nn.Module, head: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone, self.head, self.num_classes = backbone, head, num_classes

    def forward(self, x: Tensor) -> Tensor:
        z = self.head(self.backbone(x))
        return F.interpolate(z, size=x.shape[-2:], mode="bilinear", align_corners=False)


class _CifarBackbone(nn.Module):
    def __init__(self, net: CifarResNet) -> None:
        super().__init__()
        self.net = net
        del self.net.classifier  # the backbone ends at the last stage

    def forward(self, x: Tensor) -> Tensor:
        return self.net.feature_map(x)


class _Encoder(nn.Module):
    """The U-Net's three encoder stages ``enc1``-``enc3`` (widths w, 2w, 4w), shared by the
    U-Net and its encoder-as-classifier so that their weights load into each other."""

    feature_stages = ("enc1", "enc2", "enc3")

    def build_encoder(self, in_channels: int, w: int) -> None:
        self.enc1 = nn.Sequential(_conv_bn(in_channels, w), _conv_bn(w, w))
        self.enc2 = nn.Sequential(_conv_bn(w, 2 * w), _conv_bn(2 * w, 2 * w))
        self.enc3 = nn.Sequential(_conv_bn(2 * w, 4 * w), _conv_bn(4 * w, 4 * w))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Each stage's output (max-pooled by 2 between stages)."""
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        return e1, e2, self.enc3(F.max_pool2d(e2, 2))


class UNet(_Encoder):
    """A three-level U-Net of width ``w``: encoder w, 2w, 4w; decoder with skips."""

    def __init__(self, num_classes: int, width: int = 8, in_channels: int = 3) -> None:
        super().__init__()
        w = width
        self.build_encoder(in_channels, w)
        self.dec2 = nn.Sequential(_conv_bn(6 * w, 2 * w), _conv_bn(2 * w, 2 * w))
        self.dec1 = nn.Sequential(_conv_bn(3 * w, w), _conv_bn(w, w))
        self.classifier = nn.Conv2d(w, num_classes, 1)
        self.num_classes = num_classes
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        e1, e2, e3 = self.encode(x)
        up = F.interpolate(e3, size=e2.shape[-2:], mode="bilinear", align_corners=False)
        d2 = self.dec2(torch.cat([up, e2], 1))
        up = F.interpolate(d2, size=e1.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.dec1(torch.cat([up, e1], 1)))


class UNetEncoder(_Encoder):
    """The U-Net's encoder (``enc1``-``enc3``, the same modules and names) with global
    pooling and a linear ``head``: a classifier whose weights load into ``seg_unet`` of the
    same width (``weights_strict: false``: the decoder and the 1x1 classifier stay new), so a
    segmentation student starts from an encoder pretrained by classification."""

    def __init__(self, num_classes: int, width: int = 8, in_channels: int = 3) -> None:
        super().__init__()
        self.build_encoder(in_channels, width)
        self.head = nn.Linear(4 * width, num_classes)
        self.num_classes, self.feature_dim = num_classes, 2 * width
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encode(x)[2].mean(dim=(2, 3)))

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _, e2, e3 = self.encode(x)
        return e2.mean(dim=(2, 3)), self.head(e3.mean(dim=(2, 3)))


@register_model("unet_encoder", input_size=28)
def unet_encoder(num_classes: int = 10, width: int = 8, in_channels: int = 1) -> UNetEncoder:
    """The U-Net's encoder as a classifier of grey items, for pretraining (:class:`UNetEncoder`)."""
    if width < 1:
        raise ValueError(f"unet_encoder width must be >= 1, got {width}")
    return UNetEncoder(num_classes, width, in_channels)


@register_model("seg_unet", input_size=64, task="segmentation")
def seg_unet(num_classes: int = 11, width: int = 8, in_channels: int = 3) -> UNet:
    """The small U-Net at any ``width``."""
    if width < 1:
        raise ValueError(f"seg_unet width must be >= 1, got {width}")
    return UNet(num_classes, width, in_channels)


def _register_cifar(head_name: str, head_cls: type, resnet: str) -> None:
    depth, filters = RESNET_FILTERS[resnet]

    @register_model(f"seg_{head_name}_{resnet}", input_size=64, task="segmentation")
    def build(num_classes: int = 11, in_channels: int = 3, channels: int = 64) -> SegmentationNet:
        backbone = _CifarBackbone(CifarResNet(depth, filters, 2, in_channels))
        net = SegmentationNet(backbone, head_cls(filters[3], num_classes, channels), num_classes)
        init_weights(net.head)
        return net


for _resnet in ("resnet8", "resnet20", "resnet32", "resnet56", "resnet8x4", "resnet32x4"):
    _register_cifar("deeplab", ASPPHead, _resnet)
    _register_cifar("psp", PSPHead, _resnet)


# --------------------------------------------------------------------------- ImageNet ResNets


class _Basic(nn.Module):
    expansion = 1

    def __init__(
        self,
        inp: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        inp: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class DilatedResNet(nn.Module):
    """An ImageNet ResNet (torchvision's layout and parameter names) whose last two stages
    are dilated instead of strided: output stride 8, as segmentation needs."""

    def __init__(self, block: type, layers: list[int], in_channels: int = 3) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._layer(block, 64, layers[0])
        self.layer2 = self._layer(block, 128, layers[1], stride=2)
        self.layer3 = self._layer(block, 256, layers[2], dilation=2)
        self.layer4 = self._layer(block, 512, layers[3], dilation=4)
        self.out_channels = 512 * block.expansion
        init_weights(self)

    def _layer(
        self, block: type, planes: int, count: int, stride: int = 1, dilation: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, max(1, dilation // 2), downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, dilation) for _ in range(1, count)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


IMAGENET_RESNETS = {"resnet18": (_Basic, [2, 2, 2, 2]), "resnet101": (_Bottleneck, [3, 4, 23, 3])}


def _register_imagenet(head_name: str, head_cls: type, resnet: str) -> None:
    block, layers = IMAGENET_RESNETS[resnet]

    @register_model(f"{head_name}_{resnet}", input_size=512, task="segmentation")
    def build(num_classes: int = 19, in_channels: int = 3, channels: int = 512) -> SegmentationNet:
        backbone = DilatedResNet(block, layers, in_channels)
        net = SegmentationNet(
            backbone, head_cls(backbone.out_channels, num_classes, channels), num_classes
        )
        init_weights(net.head)
        return net


for _resnet in IMAGENET_RESNETS:
    _register_imagenet("pspnet", PSPHead, _resnet)
    _register_imagenet("deeplabv3", ASPPHead, _resnet)
