"""Feature distillation: the shared part of every feature method, and FitNet, AT and SP.

A frozen teacher and a student, each run once with its feature taps
(``forward_with_taps(x) -> (features, logits)``, attached by the engine from
``networks.<name>.features`` or the zoo model's stages; :mod:`bdkd.models.taps`). The
student's loss is ``ce_weight CE + feature_weight warm-up(epoch) L_feature`` plus, when
``logit`` names an image objective, ``logit_weight * objective(s, t)`` on the logits (so
"FitNet + BD-KD" is ``{name: fitnet, logit: bdkd}``; ``bdkd`` here is BD-KD's per-sample
student term from the frozen teacher, ``bdkd_student``). Connectors and embedding heads
belong to the distiller: they train with the student's optimizer, are saved in checkpoints
and never exported with the student. Losses: :mod:`bdkd.losses.feature`; RKD, PKT and
ND: :mod:`.relational`; ReviewKD: :mod:`.reviewkd`; CRD: :mod:`.crd`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bdkd.distillers.base import Distiller, DistillerOutput, RowLayout, register_distiller
from bdkd.hparams import NonNegative, NonNegativeInt, Range
from bdkd.losses import get_objective, image_objectives
from bdkd.losses.feature import (
    AT_FORMS,
    at_loss,
    hint_loss,
    sp_loss,
)

__all__ = [
    "ATDistiller",
    "ConnectedDistiller",
    "FeatureDistiller",
    "FeatureError",
    "FitNetDistiller",
    "SPDistiller",
    "as_vector",
    "connector",
    "feature_width",
    "match_size",
]

LOGIT_ALIASES = {"bdkd": "bdkd_student"}


class FeatureError(ValueError):
    """Features a method cannot use; ``key`` names the config key (``networks.X.features``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def match_size(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Two (N, C, H, W) maps brought to the smaller one's H, W by average pooling."""
    hs, ht = student.shape[-2:], teacher.shape[-2:]
    if hs == ht:
        return student, teacher
    size = (min(hs[0], ht[0]), min(hs[1], ht[1]))
    if tuple(hs) != size:
        student = F.adaptive_avg_pool2d(student, size)
    if tuple(ht) != size:
        teacher = F.adaptive_avg_pool2d(teacher, size)
    return student, teacher


def connector(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """A student feature -> teacher feature connector: 1x1 conv, BN, ReLU for maps (the
    reference code's regressor at equal size); a linear layer for vectors."""
    if len(student_shape) == 3 and len(teacher_shape) == 3:
        return nn.Sequential(
            nn.Conv2d(student_shape[0], teacher_shape[0], 1, bias=False),
            nn.BatchNorm2d(teacher_shape[0]),
            nn.ReLU(inplace=True),
        )
    return nn.Linear(feature_width(student_shape), feature_width(teacher_shape))


def feature_width(shape: Sequence[int]) -> int:
    """A feature's vector width: channels of a map (pooled), else the flattened size."""
    return int(shape[0]) if len(shape) == 3 else int(torch.Size(shape).numel())


def as_vector(feature: Tensor) -> Tensor:
    """An embedding from a feature: maps pooled over H, W, anything else flattened."""
    return feature.mean(dim=(2, 3)) if feature.dim() == 4 else feature.flatten(1)


class FeatureDistiller(Distiller):
    """The shared part of every feature method: taps, the CE and logit terms, the warm-up.

    Subclasses set ``term`` (the logged name), ``feature_use`` (which features a zoo model
    gives by default, :data:`bdkd.models.taps.FEATURE_USES`), ``maps`` (whether the method
    needs (N, C, H, W) features), ``single`` (whether it reads exactly one feature), and
    implement :meth:`feature_loss`.
    """

    kind = "offline"
    cacheable = False
    term: ClassVar[str] = "feature"
    feature_use: ClassVar[str] = "stages"
    maps: ClassVar[bool] = False
    single: ClassVar[bool] = False
    pixels: ClassVar[bool] = False

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        *,
        feature_weight: float,
        ce_weight: float = 1.0,
        logit: str = "none",
        logit_weight: float = 1.0,
        logit_kwargs: Mapping[str, Any] | None = None,
        warmup_epochs: int = 0,
        layout: RowLayout | None = None,
    ) -> None:
        missing = {"teacher", "student"} - set(networks)
        if missing:
            raise ValueError(
                f"{self.term} needs networks 'teacher' and 'student'; missing {sorted(missing)}"
            )
        super().__init__(networks, trainable=("student",), deployed="student", layout=layout)
        if self.layout.spatial and not self.pixels:
            raise ValueError(
                f"{self.term} compares per-image embeddings; it is not defined for a "
                "segmentation task (use fitnet, at or sp there)"
            )
        self.shapes = {n: self._tap_shapes(n) for n in ("student", "teacher")}
        self.feature_weight, self.ce_weight = feature_weight, ce_weight
        self.logit_weight, self.warmup_epochs = logit_weight, warmup_epochs
        self.logit = None
        if logit != "none":
            name = LOGIT_ALIASES.get(logit, logit)
            if name not in image_objectives():
                raise ValueError(
                    f"logit {logit!r} is not an image objective; choose none or one of "
                    f"{sorted(image_objectives())}"
                )
            self.logit = get_objective(name)
            if self.logit.spatial:
                raise ValueError(f"logit {logit!r} distils spatial maps; not a logit term")
            self.logit_kwargs = self.logit.check(dict(logit_kwargs or {}), "method.logit_kwargs")
        elif logit_kwargs:
            raise ValueError("logit_kwargs is set but logit is none")

    def _tap_shapes(self, name: str) -> list[tuple[int, ...]]:
        net = self.networks[name]
        shapes = getattr(net, "tap_shapes", None)
        if not hasattr(net, "forward_with_taps") or shapes is None:
            raise FeatureError(
                f"networks.{name}.features",
                f"network {name!r} has no feature taps: name the modules the method reads "
                "(bdkd.models.taps.attach_taps)",
            )
        key = f"networks.{name}.features"
        if self.single and len(shapes) != 1:
            raise FeatureError(key, f"{self.term} reads one feature, got {len(shapes)}")
        if self.maps:
            flat = [n for n, s in zip(net.tap_names, shapes, strict=True) if len(s) != 3]
            if flat:
                raise FeatureError(
                    key,
                    f"{self.term} needs (N, C, H, W) feature maps; {flat} give shapes "
                    f"{[s for s in shapes if len(s) != 3]}",
                )
        return [tuple(s) for s in shapes]

    def check_pairs(self) -> None:
        """Teacher and student read the same number of features (pairwise methods)."""
        s, t = self.shapes["student"], self.shapes["teacher"]
        if len(s) != len(t):
            raise FeatureError(
                "networks.student.features",
                f"{len(s)} feature(s) against networks.teacher.features' {len(t)}; "
                f"{self.term} pairs them one to one",
            )

    def warmup_factor(self, epoch: int) -> float:
        if self.warmup_epochs == 0:
            return 1.0
        return min((epoch + 1) / self.warmup_epochs, 1.0)

    def feature_loss(
        self, student: list[Tensor], teacher: list[Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        """The method's named feature terms (unweighted by ``feature_weight``)."""
        raise NotImplementedError

    def run_tapped(
        self, inputs: Tensor, cached: Mapping[str, Tensor] | None
    ) -> tuple[dict[str, list[Tensor]], dict[str, Tensor]]:
        """Both networks once through their taps: features and logits per network."""
        if cached:
            raise ValueError(f"{self.term} reads the teacher's features; no logit cache")
        s_feats, s_logits = self.networks["student"].forward_with_taps(inputs)
        with torch.no_grad():
            t_feats, t_logits = self.networks["teacher"].forward_with_taps(inputs)
        feats = {"student": s_feats, "teacher": [f.detach() for f in t_feats]}
        return feats, {"student": s_logits, "teacher": t_logits.detach()}

    def forward(
        self,
        inputs: Tensor,
        labels: Tensor,
        epoch: int = 0,
        cached: Mapping[str, Tensor] | None = None,
    ) -> DistillerOutput:
        feats, logits = self.run_tapped(inputs, cached)
        return self.combine(feats, logits, labels, epoch)

    def combine(
        self,
        feats: dict[str, list[Tensor]],
        logits: dict[str, Tensor],
        labels: Tensor,
        epoch: int,
        extra: Mapping[str, Tensor] | None = None,
    ) -> DistillerOutput:
        """CE + the weighted feature terms (``extra``: already computed ones) + the logit
        term."""
        rows, y = self.as_rows(logits, labels)
        terms = {"ce": self.ce_weight * self.cross_entropy(rows["student"], y)}
        found = (
            dict(extra)
            if extra is not None
            else self.feature_loss(feats["student"], feats["teacher"], labels)
        )
        scale = self.feature_weight * self.warmup_factor(epoch)
        terms.update({name: scale * value for name, value in found.items()})
        if self.logit is not None:
            value = self.logit(rows["student"], rows["teacher"], y, **self.logit_kwargs)
            terms[self.logit.name] = self.logit_weight * value
        return DistillerOutput(logits=logits, losses={"student": terms})


class ConnectedDistiller(FeatureDistiller):
    """A feature method with one connector per student feature (FitNet, ND's projection)."""

    def build_connectors(self, *, always: bool, vectors: bool = False) -> None:
        """One connector per feature pair (``always``, or only where the widths differ; the
        identity elsewhere); ``vectors``: linear on the pooled features, whatever their shape."""
        self.check_pairs()

        def make(s: Sequence[int], t: Sequence[int]) -> nn.Module:
            if not always and feature_width(s) == feature_width(t):
                return nn.Identity()
            if vectors:
                return nn.Linear(feature_width(s), feature_width(t))
            return connector(s, t)

        pairs = zip(self.shapes["student"], self.shapes["teacher"], strict=True)
        self.connectors = nn.ModuleList(make(s, t) for s, t in pairs)

    def extra_modules(self, network: str) -> list[nn.Module]:
        return [self.connectors] if network == "student" else []


@register_distiller("fitnet")
class FitNetDistiller(ConnectedDistiller):
    """FitNet (Romero et al., ICLR 2015): ``feature_weight * mean((r(f_s) - f_t)^2)`` per
    feature pair, ``r`` a 1x1 conv-BN-ReLU (maps) or linear (vectors) connector; maps of
    different sizes are average-pooled to the smaller. Trained in one stage with CE, as the
    reference code does (the paper's separate hint stage is not reproduced). Default: the
    middle stage, weight 100."""

    term = "fitnet"
    feature_use = "middle"
    pixels = True

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        *,
        feature_weight: Annotated[float, Range(ge=0, space=(10.0, 100.0, 300.0))] = 100.0,
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
        self.build_connectors(always=True)

    def feature_loss(
        self, student: list[Tensor], teacher: list[Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        total = student[0].new_zeros((), dtype=torch.float32)
        for conn, fs, ft in zip(self.connectors, student, teacher, strict=True):
            if isinstance(conn, nn.Linear):  # vectors (a map on either side is pooled)
                fs, ft = conn(as_vector(fs)), as_vector(ft)
            else:
                fs, ft = match_size(conn(fs), ft)
            total = total + hint_loss(fs, ft)
        return {self.term: total}


@register_distiller("at")
class ATDistiller(FeatureDistiller):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017): ``feature_weight Σ_layers
    L_AT(Q_s, Q_t)``, ``Q = normalize(mean_c |f|^p)``; maps of different sizes are pooled to
    the smaller. No connector (attention maps have no channels). Default: every stage,
    p = 2, weight 1000, the reference code's squared mean (``form: paper`` for eq. 2)."""

    term = "at"
    feature_use = "stages"
    maps = True
    pixels = True

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        *,
        feature_weight: Annotated[float, Range(ge=0, space=(100.0, 1000.0, 3000.0))] = 1000.0,
        p: Annotated[float, Range(gt=0)] = 2.0,
        form: Annotated[str, Range(choices=AT_FORMS)] = "reference",
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
        self.check_pairs()
        self.p, self.form = p, form

    def feature_loss(
        self, student: list[Tensor], teacher: list[Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        total = student[0].new_zeros((), dtype=torch.float32)
        for fs, ft in zip(student, teacher, strict=True):
            total = total + at_loss(*match_size(fs, ft), p=self.p, form=self.form)
        return {self.term: total}


@register_distiller("sp")
class SPDistiller(FeatureDistiller):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019): ``feature_weight Σ_layers
    ||G_s - G_t||_F^2 / N^2`` on the batch similarity of each feature pair (any shapes: the
    (N, N) matrices always match). Default: the last stage, weight 3000."""

    term = "sp"
    feature_use = "last"
    pixels = True

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        *,
        feature_weight: Annotated[float, Range(ge=0, space=(300.0, 3000.0, 10000.0))] = 3000.0,
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
        self.check_pairs()

    def feature_loss(
        self, student: list[Tensor], teacher: list[Tensor], labels: Tensor
    ) -> dict[str, Tensor]:
        total = student[0].new_zeros((), dtype=torch.float32)
        for fs, ft in zip(student, teacher, strict=True):
            total = total + sp_loss(fs, ft)
        return {self.term: total}
