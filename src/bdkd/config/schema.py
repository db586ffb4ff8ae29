"""The config schema: typed sections (dataclasses), each field's range, choices and one line
of documentation (:func:`spec`); docs/config.md is generated from it."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_BINS",
    "MAX_SEED",
    "SCHEDULES",
    "SELECTION_METRICS",
    "TRACKERS",
    "Config",
    "ConfigError",
    "DataConfig",
    "EarlyStopConfig",
    "EvalConfig",
    "NetworkConfig",
    "OptimConfig",
    "OutputConfig",
    "ScheduleConfig",
    "TrainConfig",
    "build_section",
    "check_range",
    "spec",
]


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
    doc: str = "",
) -> Any:
    """A dataclass field with a range (``gt``/``ge``/``lt``/``le``) or ``choices``; for a
    list field, ``items`` is the range of each element (e.g. ``{"ge": 0}``), or its allowed
    values (``{"choices": (...)}``); ``doc`` is its one line in docs/config.md."""
    bounds = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}
    meta = {"range": bounds, "choices": choices, "items": items or {}, "doc": doc}
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
    name: str = spec("sgd", choices=("sgd", "adamw"), doc="the optimizer")
    lr: float = spec(0.05, gt=0, doc="the base learning rate")
    momentum: float = spec(0.9, ge=0, lt=1, doc="SGD momentum")
    weight_decay: float = spec(5e-4, ge=0, doc="L2 (SGD) or decoupled (AdamW) weight decay")
    nesterov: bool = spec(False, doc="Nesterov momentum (SGD)")
    betas: list[float] = spec(
        default_factory=lambda: [0.9, 0.999], items={"ge": 0, "lt": 1}, doc="AdamW's betas"
    )


SCHEDULES = ("multistep", "cosine", "poly", "constant")


@dataclass
class ScheduleConfig:
    name: str = spec("multistep", choices=SCHEDULES, doc="the learning-rate schedule")
    milestones: list[int] = spec(
        default_factory=lambda: [150, 180, 210],
        items={"ge": 0},
        doc="multistep: the epochs where the rate is multiplied by gamma",
    )
    gamma: float = spec(0.1, gt=0, doc="multistep: the factor at each milestone")
    power: float = spec(0.9, gt=0, doc="poly: (1 - progress)^power")
    warmup_epochs: int = spec(0, ge=0, doc="a linear warm-up over this many epochs first")
    min_lr: float = spec(0.0, ge=0, doc="cosine and poly end at this rate")

    @property
    def warmup(self) -> int:
        """The warm-up length in the schedule's unit (epochs)."""
        return self.warmup_epochs


@dataclass
class NetworkConfig:
    model: str = spec(
        "",
        doc="a zoo model (bdkd methods), timm:<arch>, torchvision:<arch> or package.module:factory",
    )
    checkpoint: str | None = spec(
        None, doc="trained weights from a bdkd run directory or checkpoint"
    )
    checkpoint_network: str | None = spec(
        None, doc="which network of that checkpoint (default: its deployed one)"
    )
    weights: str | None = spec(
        None, doc="trained weights from a plain state dict (.pt, .pth, .safetensors)"
    )
    weights_prefix: str | None = spec(
        None, doc="a key prefix to strip from the weights file (module.)"
    )
    weights_map: dict[str, str] = spec(
        default_factory=dict, doc="key prefixes to rename, old: new (backbone.: '')"
    )
    weights_strict: bool | str = spec(
        True,
        choices=(True, False, "none-ok"),
        doc="false: missing and unexpected keys allowed, but one key must load; none-ok: not even that",
    )
    feature_layer: str | None = spec(
        None, doc="a submodule whose output is the intermediate feature (USKD), by forward hook"
    )
    features: list[str] = spec(
        default_factory=list,
        doc="modules whose outputs a feature method reads (layer2, head.fc; name:in for a "
        "module's input); empty: the zoo model's stages for the method",
    )
    kwargs: dict[str, Any] = spec(
        default_factory=dict, doc="keyword arguments of the model's factory"
    )
    preprocess: str | dict[str, Any] | None = spec(
        None,
        doc="timm/torchvision: model (the model's own mean, std and input side), or a mapping "
        "of mean, std, image_size overriding them; null: the dataset's normalisation",
    )
    optim: dict[str, Any] = spec(default_factory=dict, doc="this network's optim overrides")
    schedule: dict[str, Any] = spec(default_factory=dict, doc="this network's schedule overrides")


@dataclass
class DataConfig:
    dataset: str = spec(
        "digits", doc="a registered dataset (bdkd methods) or package.module:factory"
    )
    root: str | None = spec(None, doc="the dataset's directory (default: the dataset's own place)")
    val_size: int | float = spec(
        0.1, ge=0, doc="validation images held out of train: a count, or a fraction; 0 for none"
    )
    train_size: int | None = spec(None, ge=1, doc="keep only this many training images (seeded)")
    batch_size: int = spec(128, ge=1, doc="the global training batch (shared by the processes)")
    eval_batch_size: int = spec(512, ge=1, doc="the evaluation batch")
    augment: bool = spec(True, doc="false: no augmentation at all")
    crop_padding: int | None = spec(
        None, ge=0, doc="random crop with this padding (default: the dataset's)"
    )
    flip: bool | None = spec(None, doc="random horizontal flips (default: the dataset's)")
    random_resized_crop: bool | None = spec(None, doc="RandomResizedCrop (default: large images)")
    image_size: int | None = spec(
        None, ge=8, le=4096, doc="image_folder: resize images to this side"
    )
    channels: int | None = spec(
        None, choices=(1, 3), doc="image_folder: 1 (grey) or 3 (RGB); default: the first image's"
    )
    memory_limit_mb: int = spec(
        4096, ge=0, doc="folders: held in memory up to this, streamed beyond"
    )
    mean: list[float] | None = spec(None, doc="per-channel normalisation mean, in [0, 1] units")
    std: list[float] | None = spec(None, items={"gt": 0}, doc="per-channel normalisation std")
    options: dict[str, Any] = spec(default_factory=dict, doc="the dataset loader's own options")


MAX_SEED = 2**31 - 1
MAX_BINS = 10_000
SELECTION_METRICS = ("accuracy", "nll", "ece")


@dataclass
class EarlyStopConfig:
    metric: str = spec("nll", choices=SELECTION_METRICS, doc="the validation metric watched")
    patience: int = spec(5, ge=1, doc="stop after this many validations without improvement")
    min_delta: float = spec(0.0, ge=0, doc="an improvement smaller than this does not count")


@dataclass
class TrainConfig:
    epochs: int = spec(10, ge=1, le=1_000_000, doc="epochs of training")
    seed: int = spec(
        0, ge=0, le=MAX_SEED, doc="the seed of splits, initialisation, order, augmentation"
    )
    device: str = spec("auto", doc="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    precision: str = spec("fp32", choices=("fp32", "bf16", "fp16"), doc="autocast precision")
    grad_clip: float | None = spec(None, gt=0, doc="clip each network's gradient norm")
    compile: bool = spec(False, doc="torch.compile every network's forward")
    channels_last: bool = spec(
        False,
        doc="networks and image batches in channels-last memory format (faster convs on GPUs)",
    )
    progress: bool = spec(True, doc="a progress line per epoch")
    threads: int | None = spec(None, ge=1, le=4096, doc="torch CPU threads")
    teacher_cache: str | None = spec(None, doc="a directory caching a frozen teacher's logits")
    teacher_cache_dtype: str = spec("fp16", choices=("fp16", "fp32"), doc="the cached logits' type")
    save_best: str | None = spec(
        None,
        choices=SELECTION_METRICS,
        doc="keep checkpoints/best.pt of the epoch with the best validation value of this metric",
    )
    early_stop: EarlyStopConfig | None = spec(
        None, doc="stop when a validation metric stops improving: {metric, patience, min_delta}"
    )


@dataclass
class EvalConfig:
    bins: int = spec(15, ge=1, le=MAX_BINS, doc="calibration bins (ECE, reliability diagrams)")
    temperature_scaling: bool = spec(True, doc="fit a temperature on validation at the end")
    val_every: int = spec(1, ge=1, doc="validate every this many epochs (and after the last)")
    target_risk: float = spec(
        0.05, gt=0, lt=1, doc="the selective risk the abstention threshold allows"
    )
    conformal_alpha: float = spec(0.1, gt=0, lt=1, doc="conformal miscoverage (0.1: 90 % sets)")


TRACKERS = ("tensorboard", "mlflow", "wandb")


@dataclass
class OutputConfig:
    dir: str = spec("runs", doc="the directory run directories go into")
    name: str | None = spec(None, doc="the run directory's name (default <config>-seed<seed>)")
    report_to: list[str] = spec(
        default_factory=lambda: ["tensorboard"],
        items={"choices": TRACKERS},
        doc="trackers that get params, every loss term and metric, and the artifacts",
    )
    mlflow_uri: str | None = spec(
        None,
        doc="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///<dir>/mlflow.db)",
    )
    experiment: str = spec("bdkd", doc="the MLflow experiment / W&B project")
    log_every: int = spec(10, ge=1, doc="the loss terms go to the trackers every this many steps")
    wandb_mode: str = spec("offline", choices=("offline", "online", "disabled"), doc="W&B's mode")


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


# --------------------------------------------------------------------------- checking a section


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
        close = difflib.get_close_matches(str(unknown[0]), list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]!r}{hint}; allowed under "
            f"{prefix or 'the top level'}: {list(fields)}"
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
        items = dict(f.metadata.get("items", {}))
        allowed = items.pop("choices", None)
        for i, item in enumerate(value if isinstance(value, list) else []):
            if allowed is not None and item not in allowed:
                raise ConfigError(
                    f"config key '{key}[{i}]': must be one of {list(allowed)}, got {item!r}"
                )
            check_range(f"{key}[{i}]", item, items)
        values[name] = value
    return cls(**values)
