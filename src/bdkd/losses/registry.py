"""Registry of offline distillation objectives, filled by the ``@register_objective`` decorator.

An objective is a function ``fn(student_logits, teacher_logits, target, **hparams) -> Tensor``
returning the distillation term only (the caller adds cross-entropy). Registering one makes it
selectable by name in the offline distiller and in configs; nothing else needs editing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

ObjectiveFn = Callable[..., Tensor]


@dataclass(frozen=True)
class Objective:
    """A registered objective: its function, whether it reads labels, its keyword
    hyper-parameters with their defaults (None for the ``required`` ones), and the paper's
    warm-up in epochs."""

    name: str
    fn: ObjectiveFn
    needs_target: bool
    warmup_epochs: int = 0
    spatial: bool = False
    """True for objectives on whole (N, C, H, W) maps (CWD); the others take rows (N, C),
    one per sample or, for segmentation, one per valid pixel."""
    hparams: dict[str, object] = field(default_factory=dict)
    required: tuple[str, ...] = ()

    def __call__(
        self, student: Tensor, teacher: Tensor, target: Tensor, **kwargs: object
    ) -> Tensor:
        unknown = sorted(set(kwargs) - set(self.hparams))
        if unknown:
            raise TypeError(
                f"objective {self.name!r} got unknown hyper-parameter(s) {unknown}; "
                f"allowed: {sorted(self.hparams)}"
            )
        missing = sorted(k for k in self.required if k not in kwargs)
        if missing:
            raise TypeError(f"objective {self.name!r} needs hyper-parameter(s) {missing}")
        if self.needs_target:
            return self.fn(student, teacher, target, **kwargs)
        return self.fn(student, teacher, **kwargs)


OBJECTIVES: dict[str, Objective] = {}


def register_objective(
    name: str, *, warmup_epochs: int = 0, spatial: bool = False
) -> Callable[[ObjectiveFn], ObjectiveFn]:
    """Register ``fn`` under ``name``; ``warmup_epochs`` is the paper's linear warm-up;
    ``spatial`` marks an objective that takes whole (N, C, H, W) maps."""

    def decorate(fn: ObjectiveFn) -> ObjectiveFn:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is already registered")
        params = inspect.signature(fn).parameters
        positional = [
            p.name
            for p in params.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        hparams = {
            p.name: (None if p.default is p.empty else p.default)
            for p in params.values()
            if p.kind == p.KEYWORD_ONLY and p.name != "return_weights"
        }
        required = tuple(
            p.name for p in params.values() if p.kind == p.KEYWORD_ONLY and p.default is p.empty
        )
        OBJECTIVES[name] = Objective(
            name=name,
            fn=fn,
            needs_target=len(positional) >= 3,
            warmup_epochs=warmup_epochs,
            spatial=spatial,
            hparams=hparams,
            required=required,
        )
        return fn

    return decorate


def get_objective(name: str) -> Objective:
    """The objective registered as ``name``, or a ValueError listing the known names."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(
            f"unknown objective {name!r}; known objectives: {sorted(OBJECTIVES)}"
        ) from None
