"""Distillation objectives built on :mod:`bdkd.divergences`.

Each returns the distillation term only, averaged over rows; the caller adds cross-entropy.
Importing this package registers every offline objective (see :mod:`.registry`).
"""

import importlib
import pkgutil

from bdkd.losses import divergence  # noqa: F401  (first: the token objectives' order)
from bdkd.losses.abkd import abkd_loss
from bdkd.losses.bdd import bdd_loss
from bdkd.losses.bdkd import bdkd_rows, bdkd_student_loss, bdkd_weights, entropy_gap_weights
from bdkd.losses.cwd import cwd_loss
from bdkd.losses.dist import dist_loss
from bdkd.losses.dkd import dkd_loss
from bdkd.losses.kd import kd_loss, reverse_kd_loss
from bdkd.losses.nkd import nkd_loss
from bdkd.losses.registry import (
    OBJECTIVES,
    TOKEN_OBJECTIVES,
    Objective,
    get_objective,
    image_objectives,
    register_objective,
    token_objective,
)
from bdkd.losses.standardize import standardize_logits
from bdkd.losses.uskd import uskd_loss, uskd_terms, zipf_non_target

__all__ = [
    "OBJECTIVES",
    "TOKEN_OBJECTIVES",
    "Objective",
    "abkd_loss",
    "bdd_loss",
    "bdkd_rows",
    "bdkd_student_loss",
    "bdkd_weights",
    "cwd_loss",
    "dist_loss",
    "dkd_loss",
    "entropy_gap_weights",
    "get_objective",
    "image_objectives",
    "kd_loss",
    "nkd_loss",
    "register_objective",
    "reverse_kd_loss",
    "standardize_logits",
    "token_objective",
    "uskd_loss",
    "uskd_terms",
    "zipf_non_target",
]


def _register_every_module() -> None:
    """Import every module of this package, so that a new file registers itself."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_register_every_module()
