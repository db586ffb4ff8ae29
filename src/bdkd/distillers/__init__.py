"""Distillers: which networks learn from which (offline, online, self).

Importing this package registers every method; :func:`create_distiller` builds one by name.
A registered image objective's name (``kd``, ``dkd``, ``nkd``, ``bdd``, ``abkd``,
``dist``, ...) selects the offline distiller with that objective. Hyper-parameters are
checked against their declarations (:mod:`bdkd.hparams`): the distiller's keyword-only
constructor arguments, and, for an offline method, the objective's.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from collections.abc import Mapping
from typing import Any

from torch import nn

from bdkd.distillers.base import (
    DISTILLERS,
    SAMPLE_ROWS,
    Distiller,
    DistillerOutput,
    PixelRows,
    RowLayout,
    distiller_hparams,
    register_distiller,
)
from bdkd.distillers.crd import CRDDistiller
from bdkd.distillers.feature import (
    ATDistiller,
    FeatureDistiller,
    FeatureError,
    FitNetDistiller,
    SPDistiller,
)
from bdkd.distillers.offline import OfflineDistiller, ScratchDistiller
from bdkd.distillers.online import BDKDDistiller, DMLDistiller, KDCLDistiller
from bdkd.distillers.relational import NDDistiller, PKTDistiller, RKDDistiller
from bdkd.distillers.reviewkd import ReviewKDDistiller
from bdkd.distillers.self_distill import USKDDistiller, features_and_logits
from bdkd.hparams import HParam, HParamError, check_values
from bdkd.losses import get_objective, image_objectives

__all__ = [
    "DISTILLERS",
    "SAMPLE_ROWS",
    "ATDistiller",
    "BDKDDistiller",
    "CRDDistiller",
    "FeatureDistiller",
    "FeatureError",
    "FitNetDistiller",
    "NDDistiller",
    "PKTDistiller",
    "RKDDistiller",
    "ReviewKDDistiller",
    "SPDistiller",
    "DMLDistiller",
    "Distiller",
    "DistillerOutput",
    "HParamError",
    "KDCLDistiller",
    "OfflineDistiller",
    "PixelRows",
    "RowLayout",
    "ScratchDistiller",
    "USKDDistiller",
    "available_methods",
    "check_method",
    "create_distiller",
    "distiller_hparams",
    "feature_use",
    "features_and_logits",
    "method_cacheable",
    "method_hparams",
    "method_kind",
    "register_distiller",
]

OFFLINE_OWN = ("ce_weight", "distill_weight", "warmup_epochs", "logit_standardization")
"""The offline distiller's own hyper-parameters; an objective method's others go to it."""


def available_methods() -> list[str]:
    """Every method name :func:`create_distiller` accepts."""
    return sorted(set(DISTILLERS) | set(image_objectives()))


def _unknown_method(method: str) -> ValueError:
    close = difflib.get_close_matches(method, available_methods(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown method {method!r}{hint}; available: {available_methods()}")


def method_hparams(method: str) -> dict[str, HParam]:
    """Every hyper-parameter method ``method`` declares, with its default and range: a
    distiller's constructor arguments, or for an objective the offline distiller's own
    (:data:`OFFLINE_OWN`) and the objective's."""
    if method in DISTILLERS:
        return distiller_hparams(DISTILLERS[method])
    if method in image_objectives():
        own = distiller_hparams(OfflineDistiller)
        return {**{k: own[k] for k in OFFLINE_OWN}, **get_objective(method).hparams}
    raise _unknown_method(method)


def method_kind(method: str) -> str:
    """Which networks a run of ``method`` needs (:attr:`Distiller.kind`): ``offline``,
    ``online``, ``self`` or ``scratch``; every objective name is offline."""
    if method in DISTILLERS:
        return DISTILLERS[method].kind
    if method in image_objectives():
        return "offline"
    raise _unknown_method(method)


def method_cacheable(method: str) -> bool:
    """Whether a run of ``method`` may take its frozen teacher's logits from a teacher-logit
    cache (:attr:`Distiller.cacheable`; False for methods that read the teacher's features)."""
    cls = DISTILLERS.get(method)
    return True if cls is None else cls.cacheable


def feature_use(method: str) -> str | None:
    """Which features a feature method reads from a zoo model by default
    (:data:`bdkd.models.taps.FEATURE_USES`), or None for a method that reads logits only."""
    cls = DISTILLERS.get(method)
    return getattr(cls, "feature_use", None) if cls is not None else None


def check_method(method: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """``hparams`` checked against method ``method``'s declarations (HParamError naming
    the key: unknown, missing, wrong type, out of range)."""
    declared = method_hparams(method)
    if method == "offline":
        objective = get_objective(str(hparams.get("objective", "kd")))
        objective.check(dict(hparams.get("objective_kwargs") or {}))
    return check_values(declared, hparams, f"method {method!r}")


def create_distiller(
    method: str,
    networks: Mapping[str, nn.Module],
    *,
    layout: RowLayout | None = None,
    num_samples: int | None = None,
    **hparams: object,
) -> Distiller:
    """Build the distiller registered as ``method`` over ``networks`` with ``hparams``.

    A registered distiller name (``dml``, ``kdcl``, ``bdkd``, ``uskd``, ``scratch``,
    ``offline``) builds that class; ``bdkd`` is the online method. A registered objective
    name (``kd``, ``dkd``, ..., ``bdkd_student``: BD-KD's student term from a frozen teacher)
    builds the offline distiller; its keys other than the offline distiller's own go to the
    objective. No name is both. ``layout`` is the task's (default: one row per sample);
    ``num_samples`` (the training set's size) goes to a method that declares it (CRD's
    memory). Hyper-parameters are checked against their declarations first
    (:func:`check_method`).
    """
    check_method(method, hparams)
    if method in DISTILLERS:
        cls = DISTILLERS[method]
        if "num_samples" in inspect.signature(cls.__init__).parameters:
            hparams = {**hparams, "num_samples": num_samples}
        return cls(networks, layout=layout, **hparams)
    own = {k: v for k, v in hparams.items() if k in OFFLINE_OWN}
    objective_kwargs = {k: v for k, v in hparams.items() if k not in OFFLINE_OWN}
    return OfflineDistiller(
        networks, objective=method, objective_kwargs=objective_kwargs, layout=layout, **own
    )


def _register_every_module() -> None:
    """Import every module of this package, so that a new file registers itself."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_register_every_module()
