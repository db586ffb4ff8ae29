"""bdkd: knowledge distillation for accurate and well-calibrated compact models.

``bdkd.train(config)`` trains a config (a file, a shipped config's name or a mapping) and
``bdkd.load_student(run)`` loads a trained student with its temperature and preprocessing
(:mod:`bdkd.api`); the CLI is ``bdkd``.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_student", "train"]


def __getattr__(name: str) -> Any:
    """``bdkd.train`` and ``bdkd.load_student``, imported when first used (so that ``import
    bdkd`` stays light)."""
    if name in ("train", "load_student", "Student"):
        from bdkd import api

        return getattr(api, name)
    raise AttributeError(f"module 'bdkd' has no attribute {name!r}")
