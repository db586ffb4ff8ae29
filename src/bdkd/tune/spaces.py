"""Search spaces: which settings of a method ``bdkd tune`` tries.

A space maps axes to values. An axis is one hyper-parameter (``temperature: [1, 2, 4]``)
or several tied together (``"ce_weight,distill_weight": [[0.5, 0.5], [0.1, 0.9]]``); a
value list is finite, ``{low, high, log}`` a continuous range (sampled by the random and
TPE searches). A one-value list fixes a hyper-parameter. Every value is checked against the
method's declared range (:mod:`bdkd.hparams`) before anything trains.

The defaults (:data:`DEFAULT_SPACES`) are the methods benchmark's: each method's
temperature over {1, 2, 4} times two values of its one main knob, six settings each (USKD,
which has no temperature, six settings of its weights; a feature method, six settings of
its feature weight, or three times two of a second knob). A method without a default space
uses the ``space`` of its declared ranges, if any. A user's YAML (``--space FILE``)
replaces a method's space, or adds a variant: an entry with ``method:`` (``bdkd_soft:
{method: bdkd, label: ..., space: {...}}``).
"""

from __future__ import annotations

import difflib
import itertools
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bdkd.distillers import method_hparams, method_kind
from bdkd.hparams import HParam, HParamError, Range, check_values

__all__ = [
    "DEFAULT_SPACES",
    "TOKEN_SPACES",
    "Axis",
    "Space",
    "SpaceError",
    "default_space",
    "read_spaces",
    "resolve_methods",
]

TEMPERATURES = [1.0, 2.0, 4.0]

DEFAULT_SPACES: dict[str, dict[str, Any]] = {
    "kd": {"temperature": TEMPERATURES, "ce_weight,distill_weight": [[0.5, 0.5], [0.1, 0.9]]},
    "dkd": {"temperature": TEMPERATURES, "alpha": [1.0], "beta": [2.0, 8.0]},
    "nkd": {"temperature": TEMPERATURES, "gamma": [1.5, 3.5]},
    "bdd": {
        "forward_temperature,reverse_temperature": [[t, t] for t in TEMPERATURES],
        "forward_weight": [1.0],
        "reverse_weight": [0.5, 1.0],
    },
    "abkd": {
        "temperature": TEMPERATURES,
        "distill_weight": [64.0],
        "alpha,beta": [[0.8, 0.3], [0.5, 0.5]],
    },
    "dist": {"temperature": TEMPERATURES, "beta,gamma": [[1.0, 1.0], [2.0, 2.0]]},
    "cwd": {"temperature": TEMPERATURES, "distill_weight": [1.0, 3.0]},
    "bdkd_student": {"temperature": TEMPERATURES, "high": [2.0, 3.0], "low": [1.0]},
    "uskd": {"alpha": [0.1, 1.0], "beta,mu": [[0.1, 0.1], [0.1, 0.005], [0.5, 0.1]]},
    "dml": {"temperature": TEMPERATURES, "kl_weight": [0.5, 1.0]},
    "kdcl": {"temperature": TEMPERATURES, "ensemble": ["mean", "min_logit"]},
    "bdkd": {"temperature": TEMPERATURES, "rule": ["hard"], "low": [1.0], "high": [2.0, 3.0]},
    "fitnet": {"feature_weight": [3.0, 10.0, 30.0, 100.0, 300.0, 1000.0]},
    "at": {"feature_weight": [30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0]},
    "sp": {"feature_weight": [100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0]},
    "rkd": {
        "feature_weight": [0.3, 1.0, 3.0],
        "distance_weight,angle_weight": [[25.0, 50.0], [25.0, 0.0]],
    },
    "pkt": {"feature_weight": [1e3, 3e3, 1e4, 3e4, 1e5, 3e5]},
    "crd": {"feature_weight": [0.2, 0.8, 3.2], "nce_t": [0.07, 0.2]},
    "nd": {"feature_weight": [0.1, 0.3, 1.0, 3.0, 10.0, 30.0]},
    "reviewkd": {"feature_weight": [0.1, 0.3, 1.0, 3.0, 10.0, 30.0]},
    "scratch": {},
}

TOKEN_SPACES: dict[str, dict[str, Any]] = {
    "forward_kl": {"temperature": [0.5, 1.0, 2.0], "ce_weight": [0.0, 0.5]},
    "reverse_kl": {"temperature": [0.5, 1.0, 2.0], "ce_weight": [0.0, 0.5]},
    "total_variation": {"temperature": [0.5, 1.0, 2.0], "ce_weight": [0.0, 0.5]},
    "js_divergence": {"temperature": [1.0, 2.0], "beta": [0.1, 0.5, 0.9]},
    "skew_forward_kl": {"temperature": [1.0, 2.0], "skew": [0.1, 0.3, 0.5]},
    "skew_reverse_kl": {"temperature": [1.0, 2.0], "skew": [0.1, 0.3, 0.5]},
    "ab_divergence": {"temperature": [0.5, 1.0, 2.0], "alpha,beta": [[0.8, 0.3], [0.5, 0.5]]},
    "bdkd": {"temperature": [0.5, 1.0, 2.0], "rule": ["hard"], "low": [1.0], "high": [2.0, 3.0]},
    "scratch": {},
}
"""The token objectives' defaults (``bdkd tune`` on an ``llm-distill`` config): six
settings each; ``scratch`` is the student trained on next-token cross-entropy alone."""


LABELS = {
    "scratch": "student alone",
    "kd": "KD",
    "dkd": "DKD",
    "nkd": "NKD",
    "bdd": "BDD",
    "abkd": "ABKD",
    "dist": "DIST",
    "cwd": "CWD",
    "bdkd_student": "BD-KD student term (offline)",
    "uskd": "USKD",
    "dml": "DML",
    "kdcl": "KDCL",
    "bdkd": "BD-KD",
    "fitnet": "FitNet",
    "at": "AT",
    "sp": "SP",
    "rkd": "RKD",
    "pkt": "PKT",
    "crd": "CRD",
    "nd": "ND",
    "reviewkd": "ReviewKD",
    "forward_kl": "forward KL",
    "reverse_kl": "reverse KL",
    "total_variation": "total variation",
    "js_divergence": "JSD",
    "skew_forward_kl": "skew forward KL",
    "skew_reverse_kl": "skew reverse KL",
    "ab_divergence": "AB divergence",
}
"""How reports name each method."""


class SpaceError(ValueError):
    """A search space that cannot be searched (one line naming the method and the axis)."""


def _token_hparams(method: str) -> dict[str, HParam]:
    from bdkd.losses import TOKEN_OBJECTIVES

    if method == "scratch":
        return {}
    if method not in TOKEN_OBJECTIVES:
        close = difflib.get_close_matches(method, list(TOKEN_OBJECTIVES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"unknown token objective {method!r}{hint}; available: {sorted(TOKEN_OBJECTIVES)}"
        )
    weights = {
        k: HParam(k, float, d, Range(ge=0))
        for k, d in (("ce_weight", 0.0), ("distill_weight", 1.0))
    }
    return {**TOKEN_OBJECTIVES[method].hparams, **weights}


def kind_of(method: str, tokens: bool) -> str:
    """``tokens`` (a token objective from a frozen teacher), ``scratch``, or for images the
    distiller's kind (:func:`bdkd.distillers.method_kind`)."""
    if not tokens:
        return method_kind(method)
    _token_hparams(method)
    return "scratch" if method == "scratch" else "tokens"


def hparams_of(method: str, tokens: bool) -> dict[str, HParam]:
    return _token_hparams(method) if tokens else method_hparams(method)


@dataclass(frozen=True)
class Axis:
    """One axis: the hyper-parameters it sets, and its values (a list of tuples) or a
    continuous range ``(low, high, log)`` for a single hyper-parameter."""

    keys: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    @property
    def finite(self) -> bool:
        return self.values is not None

    def draw(self, rng: random.Random) -> tuple[Any, ...]:
        if self.values is not None:
            return self.values[rng.randrange(len(self.values))]
        assert self.low is not None and self.high is not None
        if self.log:
            x = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            x = rng.uniform(self.low, self.high)
        return (round(x) if self.integer else float(f"{x:.4g}"),)


@dataclass(frozen=True)
class Space:
    """The settings ``bdkd tune`` may try for one entry (a method or a named variant)."""

    name: str
    method: str
    label: str
    axes: tuple[Axis, ...] = field(default_factory=tuple)
    tokens: bool = False

    @property
    def kind(self) -> str:
        return kind_of(self.method, self.tokens)

    @property
    def size(self) -> float:
        """The number of settings (``inf`` with a continuous axis)."""
        if any(not a.finite for a in self.axes):
            return math.inf
        return math.prod(len(a.values or ()) for a in self.axes)

    def setting(self, choice: tuple[tuple[Any, ...], ...]) -> dict[str, Any]:
        """The hyper-parameters of one value per axis."""
        out: dict[str, Any] = {}
        for axis, value in zip(self.axes, choice, strict=True):
            out.update(zip(axis.keys, value, strict=True))
        return out

    def grid(self) -> list[dict[str, Any]]:
        """Every setting of a finite space, the first axis varying slowest."""
        return [self.setting(c) for c in itertools.product(*(a.values or () for a in self.axes))]

    def settings(self, budget: int, seed: int = 0) -> list[dict[str, Any]]:
        """``budget`` distinct settings: the whole grid when it has exactly ``budget``, else
        a seeded random sample (without replacement from a finite space)."""
        if self.size == 1 or not self.axes:
            return [self.setting(tuple(a.values[0] for a in self.axes if a.values))]
        if self.size < budget:
            raise SpaceError(
                f"tune: --budget {budget} is larger than the search space of {self.name!r} "
                f"({int(self.size)} settings); lower --budget or widen the space"
            )
        rng = random.Random(f"{seed}:{self.name}")
        if self.size == budget:
            return self.grid()
        if math.isfinite(self.size):
            return [self.grid()[i] for i in sorted(rng.sample(range(int(self.size)), budget))]
        seen: list[dict[str, Any]] = []
        while len(seen) < budget:
            candidate = self.setting(tuple(a.draw(rng) for a in self.axes))
            if candidate not in seen:
                seen.append(candidate)
        return seen

    def text(self) -> str:
        parts = []
        for a in self.axes:
            tied = len(a.keys) > 1
            key = f"({', '.join(a.keys)})" if tied else a.keys[0]
            if a.values is not None:
                vals = [
                    f"({', '.join(str(v) for v in value)})" if tied else str(value[0])
                    for value in a.values
                ]
                parts.append(f"{key} ∈ {{{', '.join(vals)}}}")
            else:
                parts.append(f"{key} ∈ [{a.low:g}, {a.high:g}]{' log' if a.log else ''}")
        return "; ".join(parts) or "nothing to tune"


def _axis(name: str, key: str, values: Any) -> Axis:
    keys = tuple(k.strip() for k in key.split(","))
    where = f"tune: space of {name!r}, axis {key!r}"
    if isinstance(values, Mapping):
        if len(keys) != 1 or set(values) - {"low", "high", "log", "int"}:
            raise SpaceError(f"{where}: a range is {{low, high, log, int}} of one hyper-parameter")
        try:
            low, high = float(values["low"]), float(values["high"])
        except (KeyError, TypeError, ValueError):
            raise SpaceError(f"{where}: a range needs numbers low and high") from None
        log = bool(values.get("log", False))
        if not low < high or (log and low <= 0):
            raise SpaceError(f"{where}: needs low < high (and low > 0 with log)")
        return Axis(keys, low=low, high=high, log=log, integer=bool(values.get("int", False)))
    if not isinstance(values, list) or not values:
        raise SpaceError(f"{where}: expected a non-empty list of values or {{low, high}}")
    rows = []
    for value in values:
        row = tuple(value) if len(keys) > 1 and isinstance(value, list) else (value,)
        if len(row) != len(keys):
            raise SpaceError(f"{where}: each value must give {len(keys)} numbers, got {value!r}")
        rows.append(row)
    return Axis(keys, values=tuple(rows))


def _check(space: Space) -> None:
    """Every value of every axis inside the method's declared ranges."""
    declared = hparams_of(space.method, space.tokens)
    for axis in space.axes:
        for key in axis.keys:
            if key not in declared:
                close = sorted(declared)
                raise SpaceError(
                    f"tune: space of {space.name!r}: method {space.method!r} has no "
                    f"hyper-parameter {key!r} (it has {close})"
                )
        values = axis.values or ((axis.low,), (axis.high,))
        for value in values:
            try:
                check_values(
                    {k: declared[k] for k in axis.keys},
                    dict(zip(axis.keys, value, strict=True)),
                    f"method {space.method!r}",
                )
            except HParamError as err:
                raise SpaceError(
                    f"tune: space of {space.name!r}: {err} (outside its declared range)"
                ) from None


def make_space(
    name: str, entry: Mapping[str, Any] | None, *, method: str | None = None, tokens: bool = False
) -> Space:
    """A checked :class:`Space` from its YAML form (see the module docstring); ``tokens``:
    of a token objective (an ``llm-distill`` config)."""
    entry = dict(entry or {})
    label = LABELS.get(name, name)
    if "space" in entry or "method" in entry:
        method = str(entry.pop("method", method or name))
        label = str(entry.pop("label", LABELS.get(name, name)))
        axes_data = entry.pop("space", {}) or {}
        if entry:
            raise SpaceError(f"tune: space of {name!r}: unknown keys {sorted(entry)}")
    else:
        method = method or name
        axes_data = entry
    try:
        kind_of(method, tokens)
    except ValueError as err:
        raise SpaceError(f"tune: {err}") from None
    if not isinstance(axes_data, Mapping):
        raise SpaceError(f"tune: space of {name!r}: expected a mapping of axes")
    axes = tuple(_axis(name, str(k), v) for k, v in axes_data.items())
    space = Space(name, method, label, axes, tokens)
    _check(space)
    return space


def default_space(method: str, tokens: bool = False) -> Space:
    """The default space of ``method``: :data:`DEFAULT_SPACES` (:data:`TOKEN_SPACES`), else
    its declared ranges' ``space`` values; a method with neither needs a space file."""
    defaults = TOKEN_SPACES if tokens else DEFAULT_SPACES
    if method in defaults:
        return make_space(method, defaults[method], tokens=tokens)
    declared = hparams_of(method, tokens)
    axes = {k: list(hp.space) for k, hp in declared.items() if hp.space}
    required = [k for k, hp in declared.items() if hp.required and k not in axes]
    if not axes or required:
        raise SpaceError(
            f"tune: method {method!r} has no default search space; give one with --space FILE "
            f"({method}: {{hyper-parameter: [values]}})"
        )
    return make_space(method, axes, tokens=tokens)


def read_spaces(data: Mapping[str, Any] | None, tokens: bool = False) -> dict[str, Space]:
    """The spaces of a ``--space`` file: entry name -> :class:`Space`."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise SpaceError("tune: a space file is a mapping of method (or variant) names")
    return {str(n): make_space(str(n), e, tokens=tokens) for n, e in data.items()}


def resolve_methods(
    names: list[str], user: Mapping[str, Space], tokens: bool = False
) -> list[Space]:
    """The spaces of ``names`` (user's first, then the defaults); ``scratch`` (the student
    trained alone, every comparison's reference) is always among them, first."""
    out: list[Space] = []
    for name in ["scratch", *[n for n in names if n != "scratch"]]:
        if name in user:
            out.append(user[name])
            continue
        try:
            kind_of(name, tokens)
        except ValueError as err:
            raise SpaceError(f"tune: --methods: {err}") from None
        out.append(default_space(name, tokens))
    if len({s.name for s in out}) != len(out):
        raise SpaceError(f"tune: --methods names a method twice: {names}")
    return out
