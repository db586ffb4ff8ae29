"""The one registry of distillation objectives, for image rows, pixels and tokens.

An objective is a function ``fn(student_logits, teacher_logits[, target], **hparams) ->
Tensor`` returning the distillation term only (the caller adds cross-entropy), registered
with ``@register_objective``. Its entry declares:

- its hyper-parameters, read from the function's typed keyword-only signature (defaults,
  ranges through ``Annotated[..., Range(...)]``, see :mod:`bdkd.hparams`);
- ``scale_t2``: whether its value carries the ``T^2`` factor of the temperature;
- ``rows``: for objectives that are a mean of one value per row, the builder of that per-row
  function ``(log_q, log_p) -> values`` (hyper-parameters other than the temperature in).
  Such an objective also serves tokens: the LLM side evaluates the row function chunk by
  chunk through the fused LM head and applies the declared ``T^2`` itself;
- ``token``: its name on the token side (:data:`TOKEN_OBJECTIVES` is the view of every entry
  that has one); ``image``: whether it is an image method (``method.name``);
- ``spatial`` (whole (N, C, H, W) maps, CWD), ``warmup_epochs`` (the paper's warm-up).

Registering one makes it selectable by name; nothing else needs editing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from bdkd.divergences import RowFn
from bdkd.hparams import HParam, HParamError, check_values, declared

ObjectiveFn = Callable[..., Tensor]

__all__ = [
    "OBJECTIVES",
    "TOKEN_OBJECTIVES",
    "Objective",
    "get_objective",
    "image_objectives",
    "register_objective",
    "token_objective",
]


@dataclass(frozen=True)
class Objective:
    """A registered objective (see the module docstring)."""

    name: str
    fn: ObjectiveFn
    needs_target: bool
    warmup_epochs: int = 0
    spatial: bool = False
    scale_t2: bool = False
    rows: Callable[..., RowFn] | None = None
    token: str | None = None
    image: bool = True
    hparams: dict[str, HParam] = field(default_factory=dict)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(n for n, hp in self.hparams.items() if hp.required)

    @property
    def defaults(self) -> dict[str, Any]:
        return {n: hp.default for n, hp in self.hparams.items() if not hp.required}

    def check(self, values: Mapping[str, Any], owner: str | None = None) -> dict[str, Any]:
        """``values`` checked against the declared hyper-parameters (HParamError naming
        ``owner``, default the objective)."""
        return check_values(self.hparams, values, owner or f"objective {self.name!r}")

    def __call__(
        self, student: Tensor, teacher: Tensor, target: Tensor | None = None, **kwargs: Any
    ) -> Tensor:
        try:
            self.check(kwargs)
        except HParamError as err:
            raise TypeError(str(err)) from None
        if self.needs_target:
            return self.fn(student, teacher, target, **kwargs)
        return self.fn(student, teacher, **kwargs)

    def t2_factor(self, temperature: float) -> float:
        """What the objective multiplies its per-row mean by: ``T^2`` or 1, as declared."""
        return temperature**2 if self.scale_t2 else 1.0

    def row_function(self, owner: str | None = None, **kwargs: Any) -> RowFn:
        """The per-row function at these hyper-parameters (the temperature is applied to the
        logits by the caller, and ``T^2`` by :meth:`t2_factor`)."""
        if self.rows is None:
            raise ValueError(f"objective {self.name!r} is not a mean over rows")
        self.check(kwargs, owner)
        kwargs.pop("temperature", None)
        return self.rows(**kwargs)


OBJECTIVES: dict[str, Objective] = {}


def register_objective(
    name: str,
    *,
    warmup_epochs: int = 0,
    spatial: bool = False,
    scale_t2: bool = False,
    rows: Callable[..., RowFn] | None = None,
    token: str | None = None,
    image: bool = True,
) -> Callable[[ObjectiveFn], ObjectiveFn]:
    """Register ``fn`` under ``name`` with the declarations of the module docstring."""

    def decorate(fn: ObjectiveFn) -> ObjectiveFn:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is already registered")
        params = inspect.signature(fn).parameters
        positional = [
            p.name
            for p in params.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        skip = ("return_weights", "reduction", "mask", "chunk_size")
        OBJECTIVES[name] = Objective(
            name=name,
            fn=fn,
            needs_target=len(positional) >= 3,
            warmup_epochs=warmup_epochs,
            spatial=spatial,
            scale_t2=scale_t2,
            rows=rows,
            token=token,
            image=image,
            hparams=declared(fn, skip=skip),
        )
        return fn

    return decorate


def get_objective(name: str) -> Objective:
    """The objective registered as ``name``, or a ValueError listing the known names."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(
            f"unknown objective {name!r}; known objectives: {sorted(image_objectives())}"
        ) from None


def image_objectives() -> dict[str, Objective]:
    """The objectives selectable as image methods (rows and pixels)."""
    return {n: o for n, o in OBJECTIVES.items() if o.image}


class _TokenView(Mapping[str, Objective]):
    """The registry seen from the token side: token names -> entries, in registration order."""

    def _items(self) -> dict[str, Objective]:
        return {o.token: o for o in OBJECTIVES.values() if o.token is not None}

    def __getitem__(self, name: str) -> Objective:
        return self._items()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def __repr__(self) -> str:
        return f"TOKEN_OBJECTIVES({list(self)})"


TOKEN_OBJECTIVES: Mapping[str, Objective] = _TokenView()
"""Every objective that serves tokens, by its token name (``bdkd`` is BD-KD's student term)."""


def token_objective(name: str) -> Objective:
    """The entry behind token objective ``name`` (a ValueError listing the known ones)."""
    try:
        return TOKEN_OBJECTIVES[name]
    except KeyError:
        raise ValueError(
            f"unknown token objective {name!r}; known: {list(TOKEN_OBJECTIVES)}"
        ) from None
