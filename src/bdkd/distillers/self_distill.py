"""Self-distillation: no teacher network; the method builds its own soft targets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import torch.nn.functional as F
from torch import Tensor, nn

from bdkd.distillers.base import Distiller, DistillerOutput, RowLayout, register_distiller
from bdkd.hparams import NonNegative, Range
from bdkd.losses import uskd_terms
from bdkd.losses.uskd import RANKINGS


def features_and_logits(network: nn.Module, inputs: Tensor) -> tuple[Tensor, Tensor]:
    """``(feature, logits)`` from a network exposing ``forward_with_features``.

    The feature is the global-average-pooled output of the second-to-last stage, shape (N, D),
    with D the network's ``feature_dim``; every model of :mod:`bdkd.models` provides both.
    """
    fn = getattr(network, "forward_with_features", None)
    if fn is None:
        raise TypeError(
            f"{type(network).__name__} has no forward_with_features(x) -> (feature, logits); "
            "USKD needs the intermediate feature of the student"
        )
    return fn(inputs)


@register_distiller("uskd")
class USKDDistiller(Distiller):
    """USKD (Yang et al., ICCV 2023): ``ce_weight CE + alpha L_t + beta L_non + mu L_weak``.

    The auxiliary linear head on the student's intermediate feature belongs to this
    distiller and trains with the student. Defaults are the paper's ImageNet values
    (alpha 1, beta 0.1, mu 0.005); CIFAR-100 uses (0.1, 0.1, 0.1). ``ranking`` orders the
    non-target classes for the Zipf labels: ``reference`` (default, as the reference code)
    or ``aux`` (the paper's wording); see :mod:`bdkd.losses.uskd`.
    """

    kind = "self"

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        *,
        alpha: NonNegative = 1.0,
        beta: NonNegative = 0.1,
        mu: NonNegative = 0.005,
        ce_weight: NonNegative = 1.0,
        feature_dim: Annotated[int, Range(ge=1)] | None = None,
        num_classes: Annotated[int, Range(ge=2)] | None = None,
        ranking: Annotated[str, Range(choices=RANKINGS)] = "reference",
        layout: RowLayout | None = None,
    ) -> None:
        if "student" not in networks:
            raise ValueError("USKD needs a network named 'student'")
        student = networks["student"]
        super().__init__(
            {"student": student}, trainable=("student",), deployed="student", layout=layout
        )
        if self.layout.spatial:
            raise ValueError("USKD is a classification method; it does not take label maps")
        feature_dim = feature_dim or getattr(student, "feature_dim", None)
        num_classes = num_classes or getattr(student, "num_classes", None)
        if not feature_dim or not num_classes:
            raise ValueError(
                "USKD needs the student's feature_dim and num_classes (set them on the model "
                "or pass feature_dim=/num_classes=)"
            )
        self.aux_head = nn.Linear(int(feature_dim), int(num_classes))
        self.alpha, self.beta, self.mu, self.ce_weight = alpha, beta, mu, ce_weight
        if ranking not in ("reference", "aux"):
            raise ValueError(f"ranking must be 'reference' or 'aux', got {ranking!r}")
        self.ranking = ranking

    def extra_modules(self, network: str) -> list[nn.Module]:
        return [self.aux_head] if network == "student" else []

    def forward(
        self,
        inputs: Tensor,
        labels: Tensor,
        epoch: int = 0,
        cached: Mapping[str, Tensor] | None = None,
    ) -> DistillerOutput:
        if cached:
            raise ValueError("USKD trains its only network, so no logits can come from a cache")
        feature, logits = features_and_logits(self.networks["student"], inputs)
        aux = self.aux_head(feature)
        terms = {"ce": self.ce_weight * F.cross_entropy(logits.float(), labels)}
        terms.update(
            uskd_terms(
                logits,
                aux,
                labels,
                alpha=self.alpha,
                beta=self.beta,
                mu=self.mu,
                ranking=self.ranking,
            )
        )
        return DistillerOutput(logits={"student": logits}, losses={"student": terms})
