"""Typed run configuration: YAML in, validated dataclasses out, dotted overrides.

Unknown keys and wrong types are errors that name the key and what is allowed. A config may
start from others with ``base: other.yaml`` (a path relative to the file, or a list of
them); its own keys are merged over theirs. The resolved config is saved with every run.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and the fix."""


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class ScheduleConfig:
    name: str = "multistep"
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    gamma: float = 0.1
    warmup_epochs: int = 0
    min_lr: float = 0.0


@dataclass
class NetworkConfig:
    model: str = ""
    checkpoint: str | None = None
    checkpoint_network: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    optim: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    dataset: str = "digits"
    root: str | None = None
    val_size: int | float = 0.1
    train_size: int | None = None
    batch_size: int = 128
    eval_batch_size: int = 512
    augment: bool = True
    crop_padding: int | None = None
    flip: bool | None = None


@dataclass
class TrainConfig:
    epochs: int = 10
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    grad_clip: float | None = None
    compile: bool = False
    progress: bool = True
    threads: int | None = None
    teacher_cache: str | None = None
    teacher_cache_dtype: str = "fp16"


@dataclass
class EvalConfig:
    bins: int = 15
    temperature_scaling: bool = True


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
        return _build(OptimConfig, merged, f"networks.{name}.optim")

    def network_schedule(self, name: str) -> ScheduleConfig:
        """The schedule of network ``name``: the global one with its overrides."""
        merged = {**dataclasses.asdict(self.schedule), **self.networks[name].schedule}
        return _build(ScheduleConfig, merged, f"networks.{name}.schedule")


CHOICES = {
    "optim.name": ("sgd", "adamw"),
    "schedule.name": ("multistep", "cosine", "constant"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "train.teacher_cache_dtype": ("fp16", "fp32"),
}


# --------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _check_value(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _check_value(option, value, key)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, key)
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(tp)
            return [_check_value(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            _, item = typing.get_args(tp)
            return {k: _check_value(item, v, f"{key}.{k}") for k, v in value.items()}
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config key {prefix!r}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]!r}; allowed under {prefix or 'the top level'}: {names}"
        )
    values = {}
    for name in names:
        if name in data:
            key = f"{prefix}.{name}" if prefix else name
            values[name] = _check_value(hints[name], data[name], key)
            choices = CHOICES.get(key) or CHOICES.get(
                key.split(".", 2)[-1] if key.startswith("networks.") else ""
            )
            if choices and values[name] not in choices:
                raise ConfigError(
                    f"config key {key!r}: must be one of {list(choices)}, got {values[name]!r}"
                )
    return cls(**values)


def validate(data: dict[str, Any]) -> Config:
    """Validate a plain dict into a :class:`Config` (errors name the key)."""
    data = copy.deepcopy(data)
    method = data.get("method", {"name": "scratch"})
    if isinstance(method, str):
        method = {"name": method}
    if not isinstance(method, dict) or not isinstance(method.get("name"), str):
        raise ConfigError(
            "config key 'method': expected a mapping with a string 'name' (e.g. method: {name: kd})"
        )
    data["method"] = method
    cfg = _build(Config, data, "")
    if not cfg.networks:
        raise ConfigError(
            "config key 'networks': at least one network is needed (e.g. networks: {student: {model: cnn_small}})"
        )
    for name, net in cfg.networks.items():
        if not net.model:
            raise ConfigError(f"config key 'networks.{name}.model': a model name is required")
        cfg.network_optim(name)
        cfg.network_schedule(name)
    for key, value, lo in (
        ("train.epochs", cfg.train.epochs, 1),
        ("data.batch_size", cfg.data.batch_size, 1),
        ("data.eval_batch_size", cfg.data.eval_batch_size, 1),
        ("eval.bins", cfg.eval.bins, 1),
    ):
        if value < lo:
            raise ConfigError(f"config key {key!r}: must be >= {lo}, got {value}")
    return cfg


# --------------------------------------------------------------------------- YAML, overrides


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
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(
            f"config file {path}: not valid YAML ({err})".replace("\n", " ")
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    bases = data.pop("base", [])
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _merge(merged, read_yaml(path.parent / base, (*_seen, path.resolve())))
    return _merge(merged, data)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; values are parsed as YAML (``5``, ``0.1``, ``[1, 2]``)."""
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(
                f"override {item!r}: expected KEY=VALUE with a dotted key, e.g. train.epochs=5"
            )
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
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


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a config file."""
    return validate(apply_overrides(read_yaml(path), overrides or []))


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
