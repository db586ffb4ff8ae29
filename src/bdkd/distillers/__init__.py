"""Distillers: which networks learn from which (offline, online, self).

Importing this package registers every method; :func:`create_distiller` builds one by name.
A registered offline objective's name (``kd``, ``dkd``, ``nkd``, ``bdd``, ``abkd``,
``dist``, ...) selects the offline distiller with that objective.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from bdkd.distillers.base import (
    DISTILLERS,
    Distiller,
    DistillerOutput,
    HParamError,
    check_hparam_values,
    distiller_hparams,
    register_distiller,
)
from bdkd.distillers.offline import OfflineDistiller, ScratchDistiller
from bdkd.distillers.online import BDKDDistiller, DMLDistiller, KDCLDistiller
from bdkd.distillers.self_distill import USKDDistiller, features_and_logits
from bdkd.losses import OBJECTIVES

__all__ = [
    "DISTILLERS",
    "BDKDDistiller",
    "DMLDistiller",
    "Distiller",
    "DistillerOutput",
    "HParamError",
    "KDCLDistiller",
    "OfflineDistiller",
    "ScratchDistiller",
    "USKDDistiller",
    "available_methods",
    "check_hparam_values",
    "create_distiller",
    "distiller_hparams",
    "features_and_logits",
    "register_distiller",
]

_OFFLINE_KEYS = ("ce_weight", "distill_weight", "warmup_epochs", "logit_standardization")


def available_methods() -> list[str]:
    """Every method name :func:`create_distiller` accepts."""
    return sorted(set(DISTILLERS) | set(OBJECTIVES))


def create_distiller(
    method: str, networks: Mapping[str, nn.Module], **hparams: object
) -> Distiller:
    """Build the distiller registered as ``method`` over ``networks`` with ``hparams``.

    A registered distiller name (``dml``, ``kdcl``, ``bdkd``, ``uskd``, ``scratch``,
    ``offline``) builds that class; ``bdkd`` is the online method. A registered objective
    name (``kd``, ``dkd``, ..., ``bdkd_student``: BD-KD's student term from a frozen teacher)
    builds the offline distiller; its keys other than the offline distiller's own go to the
    objective. No name is both.
    Numeric hyper-parameters are range-checked first (:func:`check_hparam_values`).
    """
    check_hparam_values(hparams)
    if method in DISTILLERS:
        cls = DISTILLERS[method]
        allowed = distiller_hparams(cls)
        unknown = sorted(set(hparams) - set(allowed))
        if unknown:
            raise ValueError(
                f"method {method!r}: unknown hyper-parameter(s) {unknown}; allowed: {sorted(allowed)}"
            )
        return cls(networks, **hparams)
    if method in OBJECTIVES:
        own = {k: v for k, v in hparams.items() if k in _OFFLINE_KEYS}
        objective_kwargs = {k: v for k, v in hparams.items() if k not in _OFFLINE_KEYS}
        return OfflineDistiller(
            networks, objective=method, objective_kwargs=objective_kwargs, **own
        )
    raise ValueError(f"unknown method {method!r}; available: {available_methods()}")
