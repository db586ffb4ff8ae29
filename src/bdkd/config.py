"""Typed run configuration: YAML in, validated dataclasses out, dotted overrides.

Unknown keys, wrong types, values out of range and non-finite numbers are errors that name
the key and what is allowed. A config may start from others with ``base: other.yaml`` (a
path relative to the file, or a list of them); its own keys are merged over theirs. The
resolved config is saved with every run.

YAML is read with the YAML 1.2 rule for numbers, so ``lr: 1e-3`` is the float 0.001 (YAML
1.1, PyYAML's default, reads it as a string), and dates stay text.

The schema is plain dataclasses; :func:`spec` attaches a range or a set of choices to a
field, and :func:`build_section` validates a mapping into any such dataclass (the LLM side
uses it for its own sections).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bdkd.plugins import UntrustedCode, refuse_untrusted


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and the fix."""


# --------------------------------------------------------------------------- schema helpers


def spec(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    choices: tuple[Any, ...] | None = None,
    items: dict[str, float] | None = None,
) -> Any:
    """A dataclass field with a range (``gt``/``ge``/``lt``/``le``) or ``choices``; for a
    list field, ``items`` is the range of each element (e.g. ``{"ge": 0}``)."""
    bounds = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}
    meta = {"range": bounds, "choices": choices, "items": items or {}}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


_RULES = {
    "gt": (lambda v, b: v > b, "> {}"),
    "ge": (lambda v, b: v >= b, ">= {}"),
    "lt": (lambda v, b: v < b, "< {}"),
    "le": (lambda v, b: v <= b, "<= {}"),
}


def check_range(key: str, value: Any, bounds: dict[str, float]) -> None:
    """Raise a ConfigError naming ``key`` unless the number ``value`` lies within ``bounds``."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not all(_RULES[name][0](value, bound) for name, bound in bounds.items()):
        wanted = " and ".join(_RULES[n][1].format(b) for n, b in bounds.items())
        raise ConfigError(f"config key {key!r}: must be {wanted}, got {value}")


# --------------------------------------------------------------------------- the schema


@dataclass
class OptimConfig:
    name: str = spec("sgd", choices=("sgd", "adamw"))
    lr: float = spec(0.05, gt=0)
    momentum: float = spec(0.9, ge=0, lt=1)
    weight_decay: float = spec(5e-4, ge=0)
    nesterov: bool = False
    betas: list[float] = spec(default_factory=lambda: [0.9, 0.999], items={"ge": 0, "lt": 1})


SCHEDULES = ("multistep", "cosine", "poly", "constant")


@dataclass
class ScheduleConfig:
    name: str = spec("multistep", choices=SCHEDULES)
    milestones: list[int] = spec(default_factory=lambda: [150, 180, 210], items={"ge": 0})
    gamma: float = spec(0.1, gt=0)
    power: float = spec(0.9, gt=0)
    warmup_epochs: int = spec(0, ge=0)
    min_lr: float = spec(0.0, ge=0)

    @property
    def warmup(self) -> int:
        """The warm-up length in the schedule's unit (epochs)."""
        return self.warmup_epochs


@dataclass
class NetworkConfig:
    model: str = ""
    checkpoint: str | None = None
    checkpoint_network: str | None = None
    weights: str | None = None
    weights_prefix: str | None = None
    weights_map: dict[str, str] = field(default_factory=dict)
    weights_strict: bool | str = spec(True, choices=(True, False, "none-ok"))
    feature_layer: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    optim: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    dataset: str = "digits"
    root: str | None = None
    val_size: int | float = spec(0.1, ge=0)
    train_size: int | None = spec(None, ge=1)
    batch_size: int = spec(128, ge=1)
    eval_batch_size: int = spec(512, ge=1)
    augment: bool = True
    crop_padding: int | None = spec(None, ge=0)
    flip: bool | None = None
    random_resized_crop: bool | None = None
    image_size: int | None = spec(None, ge=8, le=4096)
    channels: int | None = spec(None, choices=(1, 3))
    memory_limit_mb: int = spec(4096, ge=0)
    mean: list[float] | None = None
    std: list[float] | None = spec(None, items={"gt": 0})
    options: dict[str, Any] = field(default_factory=dict)


MAX_SEED = 2**31 - 1
MAX_BINS = 10_000


@dataclass
class TrainConfig:
    epochs: int = spec(10, ge=1, le=1_000_000)
    seed: int = spec(0, ge=0, le=MAX_SEED)
    device: str = "auto"
    precision: str = spec("fp32", choices=("fp32", "bf16", "fp16"))
    grad_clip: float | None = spec(None, gt=0)
    compile: bool = False
    progress: bool = True
    threads: int | None = spec(None, ge=1, le=4096)
    teacher_cache: str | None = None
    teacher_cache_dtype: str = spec("fp16", choices=("fp16", "fp32"))


@dataclass
class EvalConfig:
    bins: int = spec(15, ge=1, le=MAX_BINS)
    temperature_scaling: bool = True
    val_every: int = spec(1, ge=1)
    target_risk: float = spec(0.05, gt=0, lt=1)
    conformal_alpha: float = spec(0.1, gt=0, lt=1)


@dataclass
class OutputConfig:
    dir: str = "runs"
    name: str | None = None


@dataclass
class Config:
    method: dict[str, Any] = field(default_factory=lambda: {"name": "scratch"})
    networks: dict[str, NetworkConfig] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @property
    def method_name(self) -> str:
        return str(self.method["name"])

    @property
    def method_hparams(self) -> dict[str, Any]:
        return {k: v for k, v in self.method.items() if k != "name"}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def network_optim(self, name: str) -> OptimConfig:
        """The optimizer settings of network ``name``: the global ones with its overrides."""
        merged = {**dataclasses.asdict(self.optim), **self.networks[name].optim}
        return build_section(OptimConfig, merged, f"networks.{name}.optim")

    def network_schedule(self, name: str) -> ScheduleConfig:
        """The schedule of network ``name``: the global one with its overrides."""
        merged = {**dataclasses.asdict(self.schedule), **self.networks[name].schedule}
        return build_section(ScheduleConfig, merged, f"networks.{name}.schedule")


# --------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _check_plain(value: Any, key: str) -> Any:
    """A free-form value (method hyper-parameters, model kwargs): plain data, finite numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {key!r}: must be a finite number, got {value!r}")
    if isinstance(value, dict):
        return {str(k): _check_plain(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_check_plain(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise ConfigError(
        f"config key {key!r}: expected plain data (text, numbers, lists, mappings), got {value!r}"
    )


def _check_value(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _check_value(option, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return _check_plain(value, key)
    if tp is type(None):
        if value is None:
            return None
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return build_section(tp, value, key)
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(tp)
            return [_check_value(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            _, item = typing.get_args(tp)
            return {str(k): _check_value(item, v, f"{key}.{k}") for k, v in value.items()}
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"config key {key!r}: must be a finite number, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")


def build_section(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Validate the mapping ``data`` into dataclass ``cls``: known keys only, types, ranges
    and choices of :func:`spec` fields; errors name the dotted key under ``prefix``."""
    if not isinstance(data, dict):
        raise ConfigError(f"config key {prefix!r}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]!r}; allowed under {prefix or 'the top level'}: {list(fields)}"
        )
    values = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = f"{prefix}.{name}" if prefix else name
        value = _check_value(hints[name], data[name], key)
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise ConfigError(f"config key {key!r}: must be one of {list(choices)}, got {value!r}")
        check_range(key, value, f.metadata.get("range", {}))
        for i, item in enumerate(value if isinstance(value, list) else []):
            check_range(f"{key}[{i}]", item, f.metadata.get("items", {}))
        values[name] = value
    return cls(**values)


def check_run_name(name: str | None, key: str = "output.name") -> None:
    """A run name must be one plain path component inside ``output.dir``."""
    if name is None:
        return
    if not name or name in (".", "..") or re.search(r"[/\\\x00]", name):
        raise ConfigError(
            f"config key {key!r}: must be a plain directory name inside output.dir (no '/', "
            f"not '.' or '..'), got {name!r}"
        )


MAX_CONFIG_BYTES = 1 << 20
"""A config file larger than this (1 MiB) is refused unread."""
MAX_CONFIG_VALUES = 100_000
"""A config holding more values than this, counted with every YAML alias (or shared
reference of a checkpoint's stored config) expanded, is refused: an alias bomb."""
MAX_CONFIG_DEPTH = 64


def check_bounded(data: Any, where: str) -> None:
    """Refuse ``data`` (plain data from YAML or a checkpoint) when it expands to more than
    :data:`MAX_CONFIG_VALUES` values or nests deeper than :data:`MAX_CONFIG_DEPTH` (a
    self-referencing or exponentially aliased document), without expanding it."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"{where}: more than {MAX_CONFIG_VALUES:,} values once its YAML aliases (or "
                "shared references) are expanded; refused as an alias bomb"
            )
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(
                f"{where}: nested more than {MAX_CONFIG_DEPTH} levels deep (or refers to itself)"
            )
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
            stack.extend((k, depth + 1) for k in node)
        elif isinstance(node, (list, tuple)):
            stack.extend((v, depth + 1) for v in node)


def check_trusted(cfg: Config, source: str) -> None:
    """Refuse every key of ``cfg`` that names code by import path (see :mod:`bdkd.plugins`):
    for configs read back from a run directory or checkpoint (``source`` says which)."""
    try:
        for name, net in cfg.networks.items():
            refuse_untrusted(f"networks.{name}.model", net.model, source)
        refuse_untrusted("data.dataset", cfg.data.dataset, source)
    except UntrustedCode as err:
        raise ConfigError(str(err)) from None


def validate(data: dict[str, Any], *, trusted: bool = True, source: str = "the config") -> Config:
    """Validate a plain dict into a :class:`Config` (errors name the key). With
    ``trusted=False`` (a config read back from ``source``, a run directory or checkpoint)
    import paths are refused (:func:`check_trusted`)."""
    check_bounded(data, source)
    data = copy.deepcopy(data)
    method = data.get("method", {"name": "scratch"})
    if isinstance(method, str):
        method = {"name": method}
    if not isinstance(method, dict) or not isinstance(method.get("name"), str):
        raise ConfigError(
            "config key 'method': expected a mapping with a string 'name' (e.g. method: {name: kd})"
        )
    data["method"] = method
    cfg = build_section(Config, data, "")
    if not cfg.networks:
        raise ConfigError(
            "config key 'networks': at least one network is needed (e.g. networks: {student: {model: cnn_small}})"
        )
    for name, net in cfg.networks.items():
        if not net.model:
            raise ConfigError(f"config key 'networks.{name}.model': a model name is required")
        if net.weights and net.checkpoint:
            raise ConfigError(
                f"config key 'networks.{name}.weights': give weights (a plain state dict) or "
                "checkpoint (a bdkd run or checkpoint), not both"
            )
        cfg.network_optim(name)
        cfg.network_schedule(name)
    from bdkd.distillers import HParamError, check_method

    try:
        check_method(cfg.method_name, cfg.method_hparams)
    except HParamError as err:
        raise ConfigError(f"config key 'method.{err.key}': {err.message}") from None
    except ValueError as err:
        raise ConfigError(f"config key 'method.name': {err}") from None
    d = cfg.data
    if (d.mean is None) != (d.std is None) or (
        d.mean is not None and len(d.mean) != len(d.std or [])
    ):
        raise ConfigError(
            "config keys 'data.mean' and 'data.std': give both, one value per channel"
        )
    if cfg.data.val_size == 0 and cfg.eval.temperature_scaling:
        raise ConfigError(
            "config key 'eval.temperature_scaling': needs a validation split, and data.val_size "
            "is 0; set eval.temperature_scaling: false or hold images out with data.val_size"
        )
    check_run_name(cfg.output.name)
    if not trusted:
        check_trusted(cfg, source)
    return cfg


def config_differences(
    saved: dict[str, Any], current: dict[str, Any], ignore: tuple[str, ...] = ()
) -> list[str]:
    """``key: saved -> current`` for every dotted key whose value differs between two config
    dicts; ``ignore`` lists keys (or prefixes) that may differ."""

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(d, dict) and d:
            out: dict[str, Any] = {}
            for k, v in d.items():
                out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
            return out
        return {prefix: d}

    a, b = flat(saved), flat(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if any(key == s or key.startswith(s + ".") for s in ignore):
            continue
        before, after = a.get(key, "<absent>"), b.get(key, "<absent>")
        if before != after:
            diffs.append(f"{key}: {before!r} -> {after!r}")
    return diffs


# --------------------------------------------------------------------------- YAML, overrides


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats (``1e-3``) and no timestamps."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, where: str = "YAML") -> Any:
    """Parse YAML safely (no tags that build objects), with ``1e-3`` read as a float; a
    document that expands to too many values (an alias bomb) is refused
    (:func:`check_bounded`)."""
    data = yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)
    check_bounded(data, where)
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config, resolving ``base:`` (relative paths, merged in order)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in _seen:
        raise ConfigError(f"config file {path} includes itself through 'base'")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ConfigError(f"config file {path}: cannot be read ({err})") from None
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path}: {size:,} bytes, more than a config may hold "
            f"({MAX_CONFIG_BYTES:,}); refused unread"
        )
    try:
        data = parse_yaml(path.read_text(), f"config file {path}") or {}
    except yaml.YAMLError as err:
        raise ConfigError(
            f"config file {path}: not valid YAML ({err})".replace("\n", " ")
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path}: cannot be read ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    bases = data.pop("base", [])
    if not isinstance(bases, (str, list)):
        raise ConfigError(f"config file {path}: 'base' must be a file name or a list of them")
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        if not isinstance(base, str):
            raise ConfigError(f"config file {path}: 'base' entries must be file names")
        merged = _merge(merged, read_yaml(path.parent / base, (*_seen, path.resolve())))
    return _merge(merged, data)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; values are parsed as YAML (``5``, ``1e-3``, ``[1, 2]``)."""
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(
                f"override {item!r}: expected KEY=VALUE with a dotted key, e.g. train.epochs=5"
            )
        try:
            value = parse_yaml(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a mapping")
        node[parts[-1]] = value
    return out


def load_config(
    path: str | Path, overrides: list[str] | None = None, *, trusted: bool = True
) -> Config:
    """Read, override and validate a config file (``trusted=False`` for a config read back
    from a run directory: import paths refused, see :mod:`bdkd.plugins`)."""
    return validate(
        apply_overrides(read_yaml(path), overrides or []), trusted=trusted, source=str(path)
    )


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
