"""Relational and embedding distillation: RKD, PKT and ND (on the embedding the classifier
reads, by default). The shared part (taps, CE and logit terms, warm-up): :mod:`.feature`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any

import torch
from torch import Tensor, nn

from bdkd.distillers.base import RowLayout, register_distiller
from bdkd.distillers.feature import (
    ConnectedDistiller,
    FeatureDistiller,
    as_vector,
    feature_width,
)
from bdkd.hparams import NonNegative, NonNegativeInt, Range
from bdkd.losses.feature import nd_loss, pkt_loss, rkd_angle_loss, rkd_distance_loss

__all__ = ["NDDistiller", "PKTDistiller", "RKDDistiller"]


@register_distiller("rkd")
class RKDDistiller(FeatureDistiller):
    """Relational KD (Park et al., CVPR 2019) on the embeddings (the classifier's input by
    default): ``feature_weight (distance_weight L_D + angle_weight L_A)``, both Huber
    losses on mean-normalised distances and on angle cosines; logged as ``rkd_distance``
    and ``rkd_angle``. Defaults: the paper's 25 and 50, feature weight 1."""

    term = "rkd"
    feature_use = "embedding"
    single = True

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        *,
        feature_weight: Annotated[float, Range(ge=0, space=(0.3, 1.0, 3.0))] = 1.0,
        distance_weight: NonNegative = 25.0,
        angle_weight: NonNegative = 50.0,
        ce_weight: NonNegative = 1.0,
        logit: str = "none",
        logit_weight: NonNegative = 1.0,
        logit_kwargs: Mapping[str, Any] | None = None,
        warmup_epochs: NonNegativeInt = 0,
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
        self.distance_weight, self.angle_weight = distance_weight, angle_weight

    def feature_loss(
        self, student: list[Tensor], teacher: list[Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        s, t = as_vector(student[0]), as_vector(teacher[0])
        return {
            "rkd_distance": self.distance_weight * rkd_distance_loss(s, t),
            "rkd_angle": self.angle_weight * rkd_angle_loss(s, t),
        }


@register_distiller("pkt")
class PKTDistiller(FeatureDistiller):
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018) on the embeddings:
    ``feature_weight KL-like(P_t || P_s)`` of the cosine-kernel conditional probabilities.
    Default weight 30000 (the reference code's CIFAR setting)."""

    term = "pkt"
    feature_use = "embedding"
    single = True

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        *,
        feature_weight: Annotated[float, Range(ge=0, space=(3000.0, 30000.0, 100000.0))] = 30000.0,
        ce_weight: NonNegative = 1.0,
        logit: str = "none",
        logit_weight: NonNegative = 1.0,
        logit_kwargs: Mapping[str, Any] | None = None,
        warmup_epochs: NonNegativeInt = 0,
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

    def feature_loss(
        self, student: list[Tensor], teacher: list[Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        return {self.term: pkt_loss(as_vector(student[0]), as_vector(teacher[0]))}


@register_distiller("nd")
class NDDistiller(ConnectedDistiller):
    """ND (Wang et al., 2023) on the embeddings: ``feature_weight mean_i [1 - <s_i, ĉ_y> /
    max(||s_i||, ||t_i||)]`` with ``ĉ_y`` the direction of the teacher's mean training
    embedding of class y, computed once before training (:meth:`prepare`, kept in the
    checkpoint). A student embedding of another width goes through a linear projection
    first. The paper's KD++ is ``{name: nd, logit: kd, logit_kwargs: {temperature: 4}}``.
    Default weight 1 (the reference code's CIFAR setting)."""

    term = "nd"
    feature_use = "embedding"
    single = True

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        *,
        feature_weight: Annotated[float, Range(ge=0, space=(0.3, 1.0, 3.0))] = 1.0,
        num_classes: Annotated[int, Range(ge=2)] | None = None,
        ce_weight: NonNegative = 1.0,
        logit: str = "none",
        logit_weight: NonNegative = 1.0,
        logit_kwargs: Mapping[str, Any] | None = None,
        warmup_epochs: NonNegativeInt = 0,
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
        self.build_connectors(always=False, vectors=True)
        classes = num_classes or getattr(networks["teacher"], "num_classes", None)
        if not isinstance(classes, int):
            raise ValueError("nd needs num_classes (set it on the teacher or pass num_classes=)")
        width = feature_width(self.shapes["teacher"][0])
        self.register_buffer("centers", torch.zeros(int(classes), width))

    @torch.no_grad()
    def prepare(self, batches: Iterable[tuple[Tensor, Tensor]]) -> None:
        """The teacher's mean embedding per class over ``batches`` (the training images)."""
        sums = torch.zeros_like(self.centers, dtype=torch.float64)
        counts = torch.zeros(self.centers.shape[0], dtype=torch.float64, device=sums.device)
        teacher = self.networks["teacher"]
        for x, y in batches:
            feats, _ = teacher.forward_with_taps(x)
            e = as_vector(feats[0]).double()
            sums.index_add_(0, y, e)
            counts.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
        self.centers.copy_((sums / counts.clamp(min=1)[:, None]).to(self.centers.dtype))

    def feature_loss(
        self, student: list[Tensor], teacher: list[Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        s = self.connectors[0](as_vector(student[0]))
        return {self.term: nd_loss(s, as_vector(teacher[0]), self.centers, labels)}
