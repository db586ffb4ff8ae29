"""Offline distillation: a frozen teacher, a student trained on CE + one objective."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from bdkd.distillers.base import Distiller, DistillerOutput, RowLayout, register_distiller
from bdkd.hparams import NonNegative, NonNegativeInt
from bdkd.losses import get_objective, standardize_logits


@register_distiller("offline")
class OfflineDistiller(Distiller):
    """``ce_weight CE(y, q) + distill_weight * warm-up(epoch) * objective(s, t)``.

    ``objective`` names any registered objective (kd, dkd, nkd, bdd, abkd, dist, bdkd, ...);
    its hyper-parameters go in ``objective_kwargs``. ``warmup_epochs`` (default: the
    objective's paper value, 20 for DKD, else 0) scales the distillation term by
    ``min((epoch + 1) / warmup_epochs, 1)`` with ``epoch`` counted from 0.
    ``logit_standardization`` standardizes both networks' logits before the objective (not
    before CE). The teacher is frozen: eval mode, no gradients.
    """

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        *,
        objective: str = "kd",
        ce_weight: NonNegative = 1.0,
        distill_weight: NonNegative = 1.0,
        warmup_epochs: NonNegativeInt | None = None,
        logit_standardization: bool = False,
        objective_kwargs: Mapping[str, object] | None = None,
        layout: RowLayout | None = None,
    ) -> None:
        missing = {"teacher", "student"} - set(networks)
        if missing:
            raise ValueError(
                f"offline distillation needs networks 'teacher' and 'student'; missing {sorted(missing)}"
            )
        super().__init__(networks, trainable=("student",), deployed="student", layout=layout)
        self.objective = get_objective(objective)
        self.objective_kwargs = dict(objective_kwargs or {})
        # fail at construction, not at the first step, on a wrong hyper-parameter
        self.objective.check(self.objective_kwargs)
        if self.objective.spatial and not self.layout.spatial:
            raise ValueError(
                f"objective {objective!r} distils spatial maps: it needs dense (N, C, H, W) "
                "logits, i.e. a segmentation dataset"
            )
        self.ce_weight = ce_weight
        self.distill_weight = distill_weight
        self.warmup_epochs = (
            self.objective.warmup_epochs if warmup_epochs is None else int(warmup_epochs)
        )
        self.logit_standardization = logit_standardization

    def warmup_factor(self, epoch: int) -> float:
        """Linear warm-up of the distillation term."""
        if self.warmup_epochs == 0:
            return 1.0
        return min((epoch + 1) / self.warmup_epochs, 1.0)

    def forward(
        self,
        inputs: Tensor,
        labels: Tensor,
        epoch: int = 0,
        cached: Mapping[str, Tensor] | None = None,
    ) -> DistillerOutput:
        logits = self.run_networks(inputs, cached)
        rows, y = self.as_rows(logits, labels)
        student, teacher = rows["student"], rows["teacher"].detach()
        if self.objective.spatial:
            s, t = logits["student"], logits["teacher"].detach()
        else:
            s, t = student, teacher
            if self.logit_standardization:
                s, t = standardize_logits(s), standardize_logits(t)
        distill = self.objective(s, t, y, **self.objective_kwargs)
        terms = {
            "ce": self.ce_weight * self.cross_entropy(student, y),
            self.objective.name: self.distill_weight * self.warmup_factor(epoch) * distill,
        }
        return DistillerOutput(logits=logits, losses={"student": terms})


@register_distiller("scratch")
class ScratchDistiller(Distiller):
    """The no-distillation baseline: one network alone, trained with cross-entropy.

    The network keeps its name, so a run that trains a teacher names it ``teacher``; given
    several networks, the one named ``student`` is trained.
    """

    kind = "scratch"

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        *,
        ce_weight: NonNegative = 1.0,
        layout: RowLayout | None = None,
    ) -> None:
        if len(networks) == 1:
            name = next(iter(networks))
        elif "student" in networks:
            name = "student"
        else:
            raise ValueError(
                f"scratch training needs one network (or one named 'student'), got {list(networks)}"
            )
        super().__init__({name: networks[name]}, trainable=(name,), deployed=name, layout=layout)
        self.ce_weight = ce_weight

    def forward(
        self,
        inputs: Tensor,
        labels: Tensor,
        epoch: int = 0,
        cached: Mapping[str, Tensor] | None = None,
    ) -> DistillerOutput:
        logits = self.run_networks(inputs, cached)
        name = self.deployed
        rows, y = self.as_rows(logits, labels)
        ce = self.ce_weight * self.cross_entropy(rows[name], y)
        return DistillerOutput(logits=logits, losses={name: {"ce": ce}})
