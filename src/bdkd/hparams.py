"""Declared hyper-parameters: a method's typed signature is its schema.

Every objective and distiller declares its hyper-parameters as keyword-only arguments with
the paper's defaults, a type, and, where a value can be out of range, an :class:`Range`
through ``typing.Annotated``::

    def kd_loss(student, teacher, *, temperature: Annotated[float, Range(gt=0)] = 4.0): ...

:func:`declared` reads them back; :func:`check_values` validates a config's values against
them (type, range, choices, unknown and missing names), so a range is never guessed from a
name. ``Range.space`` is the default search space of :mod:`bdkd.tune`.
"""

from __future__ import annotations

import difflib
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

__all__ = [
    "Finite",
    "HParam",
    "HParamError",
    "NonNegative",
    "NonNegativeInt",
    "Positive",
    "PositiveInt",
    "Range",
    "Unit",
    "check_values",
    "declared",
]


class HParamError(ValueError):
    """A hyper-parameter that is unknown, missing, of the wrong type or out of its range;
    ``key`` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key} {message}")
        self.key, self.message = key, message


@dataclass(frozen=True)
class Range:
    """The allowed values of a number (``gt``/``ge``/``lt``/``le``) or a set of ``choices``;
    ``space`` lists the values a method sweep tries by default."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple[Any, ...] | None = None
    space: tuple[Any, ...] | None = None

    def violation(self, value: Any) -> str | None:
        """Why ``value`` is outside this range, or None."""
        if self.choices is not None and value not in self.choices:
            return f"must be one of {list(self.choices)}, got {value!r}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        checks = (
            (self.gt, lambda b: value > b, "> {}"),
            (self.ge, lambda b: value >= b, ">= {}"),
            (self.lt, lambda b: value < b, "< {}"),
            (self.le, lambda b: value <= b, "<= {}"),
        )
        failed = [text.format(b) for b, ok, text in checks if b is not None and not ok(b)]
        wanted = [text.format(b) for b, _, text in checks if b is not None]
        return f"must be {' and '.join(wanted)}, got {value}" if failed else None


Positive = Annotated[float, Range(gt=0)]
"""A number > 0 (temperatures, slopes)."""
NonNegative = Annotated[float, Range(ge=0)]
"""A number >= 0 (loss weights)."""
Unit = Annotated[float, Range(ge=0, le=1)]
"""A number in [0, 1] (mixing weights)."""
PositiveInt = Annotated[int, Range(ge=1)]
"""An integer >= 1."""
NonNegativeInt = Annotated[int, Range(ge=0)]
"""An integer >= 0 (counts of epochs)."""
Finite = float
"""Any finite number (every float is checked for finiteness)."""


@dataclass(frozen=True)
class HParam:
    """One declared hyper-parameter: name, type, default (None when required) and range."""

    name: str
    type: Any
    default: Any
    range: Range | None = None
    required: bool = False

    @property
    def space(self) -> tuple[Any, ...] | None:
        return None if self.range is None else self.range.space


def _split_annotation(tp: Any) -> tuple[Any, Range | None]:
    if typing.get_origin(tp) is typing.Annotated:
        base, *extras = typing.get_args(tp)
        ranges = [e for e in extras if isinstance(e, Range)]
        return base, ranges[0] if ranges else None
    return tp, None


def declared(fn: Callable[..., Any], skip: tuple[str, ...] = ()) -> dict[str, HParam]:
    """The keyword-only parameters of ``fn`` (a function or a class's ``__init__``) as
    :class:`HParam`, in declaration order; ``skip`` leaves some out."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    hints = typing.get_type_hints(target, include_extras=True)
    out: dict[str, HParam] = {}
    for p in inspect.signature(target).parameters.values():
        if p.kind != p.KEYWORD_ONLY or p.name in skip:
            continue
        base, rng = _split_annotation(hints.get(p.name, Any))
        required = p.default is p.empty
        out[p.name] = HParam(p.name, base, None if required else p.default, rng, required)
    return out


def _type_ok(tp: Any, value: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(option, value) for option in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin in (dict, Mapping) or tp is dict:
        return isinstance(value, Mapping)
    return True


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def check_value(hp: HParam, value: Any, key: str | None = None) -> Any:
    """``value`` checked against ``hp`` (type, finiteness, range); an int given for a float
    stays as given. Raises :class:`HParamError` naming ``key`` (default: the name)."""
    key = key or hp.name
    if isinstance(value, float) and not math.isfinite(value):
        raise HParamError(key, f"must be a finite number, got {value!r}")
    if not _type_ok(hp.type, value):
        raise HParamError(key, f"expected {_type_name(hp.type)}, got {value!r}")
    why = None if hp.range is None or value is None else hp.range.violation(value)
    if why:
        raise HParamError(key, why)
    return value


def check_values(
    params: Mapping[str, HParam], values: Mapping[str, Any], owner: str
) -> dict[str, Any]:
    """Every value of ``values`` checked against its declaration in ``params``; unknown and
    missing names are errors naming ``owner`` and what is allowed."""
    unknown = sorted(set(values) - set(params))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(params), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise HParamError(
            unknown[0], f"is not a hyper-parameter of {owner}{hint}; allowed: {sorted(params)}"
        )
    missing = [name for name, hp in params.items() if hp.required and name not in values]
    if missing:
        raise HParamError(missing[0], f"is required by {owner} (it has no default)")
    return {name: check_value(params[name], value) for name, value in values.items()}
