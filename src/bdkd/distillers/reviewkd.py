"""ReviewKD (Chen et al., CVPR 2021): knowledge review by attention-based fusion and the
hierarchical context loss. The shared part: :mod:`.feature`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bdkd.distillers.base import RowLayout, register_distiller
from bdkd.distillers.feature import FeatureDistiller, feature_width
from bdkd.hparams import NonNegative, NonNegativeInt, PositiveInt, Range
from bdkd.losses.feature import hcl_loss

__all__ = ["ABF", "ReviewKDDistiller"]


class ABF(nn.Module):
    """ReviewKD's attention-based fusion: a 1x1 conv to ``mid`` channels, fused with the
    deeper level's output by two sigmoid attention maps, then a 3x3 conv to the teacher's
    channels. Returns (output, residual for the next shallower level)."""

    def __init__(self, in_channels: int, mid: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.att = nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None

    def forward(
        self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.att is not None and residual is not None:
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            z = self.att(torch.cat([x, residual], dim=1))
            x = x * z[:, 0:1] + residual * z[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x


@register_distiller("reviewkd")
class ReviewKDDistiller(FeatureDistiller):
    """ReviewKD (Chen et al., CVPR 2021): the student's features, deepest first, fused by
    ABF modules (each level with the next deeper one) into maps of the teacher's shapes,
    compared by the hierarchical context loss (levels 4, 2, 1). Reads every stage and the
    embedding (as a 1x1 map) by default. Defaults: weight 1, 20 warm-up epochs, 64 middle
    channels (the reference CIFAR settings; ImageNet uses 256)."""

    term = "reviewkd"
    feature_use = "review"
    maps = False

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        *,
        feature_weight: Annotated[float, Range(ge=0, space=(0.3, 1.0, 3.0))] = 1.0,
        mid_channels: PositiveInt = 64,
        ce_weight: NonNegative = 1.0,
        logit: str = "none",
        logit_weight: NonNegative = 1.0,
        logit_kwargs: Mapping[str, Any] | None = None,
        warmup_epochs: NonNegativeInt = 20,
        layout: RowLayout | None = None,
    ) -> None:
        super().__init__(
            networks,
            feature_weight=feature_weight,
            ce_weight=ce_weight,
            logit=logit,
            logit_weight=logit_weight,
            logit_kwargs=logit_kwargs,
            warmup_epochs=warmup_epochs,
            layout=layout,
        )
        self.check_pairs()
        s_shapes = [_as_map_shape(s) for s in self.shapes["student"]]
        t_shapes = [_as_map_shape(t) for t in self.shapes["teacher"]]
        last = len(s_shapes) - 1
        self.abfs = nn.ModuleList(
            ABF(s[0], mid_channels, t[0], fuse=i < last)
            for i, (s, t) in enumerate(zip(s_shapes, t_shapes, strict=True))
        )
        self.out_sizes = [tuple(t[1:]) for t in t_shapes]

    def extra_modules(self, network: str) -> list[nn.Module]:
        return [self.abfs] if network == "student" else []

    def feature_loss(
        self, student: list[Tensor], teacher: list[Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        maps_s = [_as_map(f) for f in student]
        maps_t = [_as_map(f) for f in teacher]
        outputs: list[Tensor] = []
        residual = None
        for i in reversed(range(len(maps_s))):
            out, residual = self.abfs[i](maps_s[i], residual, self.out_sizes[i])
            outputs.insert(0, out)
        return {self.term: hcl_loss(outputs, maps_t)}


def _as_map_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) == 3:
        return (int(shape[0]), int(shape[1]), int(shape[2]))
    return (feature_width(shape), 1, 1)


def _as_map(feature: Tensor) -> Tensor:
    return feature if feature.dim() == 4 else feature.flatten(1)[:, :, None, None]
