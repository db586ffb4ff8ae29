"""Turn a validated config into data, networks, a distiller, optimizers and schedules."""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bdkd.config import Config, ConfigError, OptimConfig
from bdkd.data import DataError, InMemoryLoader, Splits, StreamedLoader, load_dataset
from bdkd.data.base import ArraySplit
from bdkd.distillers import (
    Distiller,
    FeatureError,
    HParamError,
    RowLayout,
    create_distiller,
    feature_use,
)
from bdkd.engine.checkpoint import CheckpointError, network_weights
from bdkd.models import MODELS, create_model


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; an unavailable device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"config key 'train.device': {name!r} is not a device (cpu, cuda, cuda:1, auto)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "config key 'train.device': cuda was asked for but no CUDA device is available (use cpu or auto)"
        )
    return device


AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_factory(
    device: torch.device, precision: str
) -> Callable[[], contextlib.AbstractContextManager]:
    """A no-argument factory of the autocast context of ``precision`` (fp32: none)."""
    dtype = AUTOCAST.get(precision)
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def load_splits(cfg: Config) -> Splits:
    """The dataset's train/val/test; ``data.train_size`` keeps a seeded subset of train;
    ``data.mean``/``data.std`` replace the dataset's normalisation."""
    d = cfg.data
    options = dict(d.options)
    for key in ("image_size", "channels"):
        if getattr(d, key) is not None:
            options[key] = getattr(d, key)
    if d.dataset in ("image_folder", "cityscapes", "voc", "ade20k"):
        options.setdefault("memory_limit_mb", d.memory_limit_mb)
    try:
        splits = load_dataset(
            d.dataset, root=d.root, val_size=d.val_size, seed=cfg.train.seed, **options
        )
    except DataError as err:
        raise ConfigError(f"data: {err}") from None
    if d.train_size is not None:
        if not 0 < d.train_size <= len(splits.train):
            raise ConfigError(
                f"config key 'data.train_size': must be in [1, {len(splits.train)}], got {d.train_size}"
            )
        splits.train = splits.train.subset(torch.arange(d.train_size))
    if d.mean is not None and d.std is not None:
        if len(d.mean) != splits.info.channels:
            raise ConfigError(
                f"config key 'data.mean': {len(d.mean)} values for {splits.info.channels} channel(s)"
            )
        splits.info.mean, splits.info.std = tuple(d.mean), tuple(d.std)
    return splits


def adapt_preprocessing(net: nn.Module, preprocess: Any, info: Any, key: str) -> None:
    """``networks.<name>.preprocess``: the network takes the dataset's normalised batch and
    sees its own mean/std and input side (:mod:`bdkd.models.external`)."""
    from bdkd.models.external import own_preprocessing

    try:
        own = own_preprocessing(net)
        if isinstance(preprocess, dict):
            own.update({k: v for k, v in preprocess.items() if v is not None})
        net.adapt_input(info.mean, info.std, own["mean"], own["std"], own["image_size"])
    except ValueError as err:
        raise ConfigError(f"config key '{key}.preprocess': {err}") from None


def build_networks(cfg: Config, splits: Splits) -> dict[str, nn.Module]:
    """Create every network for the dataset; load the weights of those with ``weights`` (a
    plain state dict) or ``checkpoint`` (a bdkd run); attach feature hooks when asked."""
    from bdkd.models.imported import attach_feature_layer
    from bdkd.models.weights import WeightsError, load_weights

    info = splits.info
    networks: dict[str, nn.Module] = {}
    for name, net_cfg in cfg.networks.items():
        kwargs = dict(net_cfg.kwargs)
        entry = MODELS.get(net_cfg.model)
        key = f"networks.{name}"
        if entry is not None and entry.task != info.task:
            raise ConfigError(
                f"config key '{key}.model': {net_cfg.model!r} is a {entry.task} model and "
                f"dataset {cfg.data.dataset!r} is a {info.task} task"
            )
        if entry is not None:
            params = inspect.signature(entry.factory).parameters
            if "in_channels" in params:
                kwargs.setdefault("in_channels", info.channels)
            if "in_features" in params:
                kwargs.setdefault("in_features", info.channels * info.image_size**2)
        try:
            net = create_model(net_cfg.model, info.num_classes, **kwargs)
        except (ValueError, TypeError, ImportError) as err:
            raise ConfigError(f"config key '{key}.model': {err}") from None
        if net_cfg.preprocess is not None:
            adapt_preprocessing(net, net_cfg.preprocess, info, key)
        if net_cfg.feature_layer:
            probe = torch.zeros(2, info.channels, info.image_size, info.image_size)
            try:
                attach_feature_layer(net, net_cfg.feature_layer, probe)
            except (ValueError, RuntimeError) as err:
                first = str(err).splitlines()[0]
                raise ConfigError(f"config key '{key}.feature_layer': {first}") from None
        attach_features(cfg, name, net, info)
        if net_cfg.weights:
            try:
                notes = load_weights(
                    net,
                    net_cfg.weights,
                    strip_prefix=net_cfg.weights_prefix,
                    rename=net_cfg.weights_map,
                    strict=net_cfg.weights_strict,
                )
            except WeightsError as err:
                raise ConfigError(f"config key '{key}.weights': {err}") from None
            for note in notes:
                print(f"{key}.weights (not strict): {note}", file=sys.stderr)
        if net_cfg.checkpoint:
            try:
                weights, _ = network_weights(net_cfg.checkpoint, net_cfg.checkpoint_network)
                net.load_state_dict(weights)
            except CheckpointError as err:
                raise ConfigError(f"config key '{key}.checkpoint': {err}") from None
            except RuntimeError as err:
                first = str(err).splitlines()[0]
                raise ConfigError(
                    f"config key '{key}.checkpoint': weights do not fit model {net_cfg.model!r} ({first})"
                ) from None
        networks[name] = net
    return networks


def attach_features(cfg: Config, name: str, net: nn.Module, info: Any) -> None:
    """Feature taps on network ``name`` when the method reads features: the modules of
    ``networks.<name>.features``, or the zoo model's defaults for the method; a name that
    is no module, or a model without defaults, is one error naming the key."""
    from bdkd.models.taps import TapError, attach_taps, default_taps

    use = feature_use(cfg.method_name)
    key = f"networks.{name}.features"
    names = list(cfg.networks[name].features)
    if use is None:  # a logit method: features named for other methods are not read
        return
    if not names:
        names = default_taps(net, use)
        if not names:
            some = [n for n, _ in net.named_children()][:8]
            raise ConfigError(
                f"config key '{key}': method {cfg.method_name!r} reads features and model "
                f"{cfg.networks[name].model!r} declares no default ones; name its modules, "
                f"e.g. from {some}"
            )
    probe = torch.zeros(2, info.channels, info.image_size, info.image_size)
    try:
        net.tap_shapes = attach_taps(net, names, probe)
    except (TapError, RuntimeError) as err:
        raise ConfigError(f"config key '{key}': {str(err).splitlines()[0]}") from None


def build_distiller(
    cfg: Config,
    networks: dict[str, nn.Module],
    layout: RowLayout | None = None,
    num_samples: int | None = None,
) -> Distiller:
    """The method's distiller (rows laid out as the task's ``layout``, ``num_samples``
    training samples); a frozen network must come with trained weights."""
    try:
        distiller = create_distiller(
            cfg.method_name,
            networks,
            layout=layout,
            num_samples=num_samples,
            **cfg.method_hparams,
        )
    except HParamError as err:
        raise ConfigError(f"config key 'method.{err.key}': {err.message}") from None
    except FeatureError as err:
        raise ConfigError(f"config key '{err.key}': {err.message}") from None
    except (ValueError, TypeError) as err:
        raise ConfigError(f"config key 'method': {err}") from None
    for name in distiller.frozen:
        if not (cfg.networks[name].checkpoint or cfg.networks[name].weights):
            raise ConfigError(
                f"method {cfg.method_name!r} keeps network {name!r} frozen, so it needs trained weights: "
                f"set networks.{name}.checkpoint to a run directory or checkpoint file, or "
                f"networks.{name}.weights to a state dict (.pt, .pth, .safetensors)"
            )
    unused = sorted(set(cfg.networks) - set(distiller.networks))
    if unused:
        raise ConfigError(
            f"method {cfg.method_name!r} does not use network(s) {unused}; remove them from networks"
        )
    return distiller


def build_optimizer(params: list[nn.Parameter], oc: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW."""
    if oc.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=oc.lr,
            momentum=oc.momentum,
            weight_decay=oc.weight_decay,
            nesterov=oc.nesterov,
        )
    return torch.optim.AdamW(params, lr=oc.lr, betas=tuple(oc.betas), weight_decay=oc.weight_decay)


def lr_factor(epoch: int, sc: Any, epochs: int, base_lr: float) -> float:
    """Multiplier of the base learning rate during epoch (or step) ``epoch`` (0-based) of
    ``epochs``; ``sc`` is a :class:`ScheduleConfig` (epochs) or the LLM side's schedule (steps).

    Linear warm-up over ``sc.warmup``, then ``multistep`` (times ``gamma`` at each
    milestone), ``cosine`` (down to ``min_lr``), ``poly`` (``(1 - progress)^power`` down to
    ``min_lr``, the segmentation recipe) or ``constant``.
    """
    warmup = sc.warmup
    if warmup and epoch < warmup:
        return (epoch + 1) / warmup
    if sc.name == "multistep":
        return sc.gamma ** sum(epoch >= m for m in sc.milestones)
    if sc.name in ("cosine", "poly"):
        span = max(1, epochs - warmup)
        progress = (epoch - warmup) / span
        floor = sc.min_lr / base_lr if base_lr > 0 else 0.0
        shape = (
            0.5 * (1 + math.cos(math.pi * progress))
            if sc.name == "cosine"
            else (1 - progress) ** sc.power
        )
        return floor + (1 - floor) * shape
    return 1.0


def build_schedule(
    optimizer: torch.optim.Optimizer, sc: Any, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler stepped once per epoch (or step) following :func:`lr_factor`."""
    base = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, sc, epochs, base))


@dataclass
class Loaders:
    train: object
    val: object
    test: object


def build_loaders(
    cfg: Config, splits: Splits, device: torch.device, rank: int = 0, world_size: int = 1
) -> Loaders:
    """In-memory loaders for in-memory splits; a DataLoader for streamed (image-folder) ones.

    ``data.batch_size`` is the global batch: each of ``world_size`` processes takes its
    share of every global batch (sample j of the global order goes to rank j mod world_size).
    The training loader also yields each sample's index (for per-sample augmentation).
    Evaluation is sharded without padding, so every sample counts once.
    """
    d, seed = cfg.data, cfg.train.seed
    if d.batch_size % world_size:
        raise ConfigError(
            f"config key 'data.batch_size': the global batch {d.batch_size} must divide evenly "
            f"among {world_size} processes"
        )

    def make(split: object, train: bool) -> object:
        bs = d.batch_size // world_size if train else d.eval_batch_size
        kw = dict(shuffle=train, seed=seed, device=device, rank=rank, world_size=world_size)
        if isinstance(split, ArraySplit):
            return InMemoryLoader(split, bs, drop_last=False, with_index=train, pad=train, **kw)
        return StreamedLoader(split, bs, with_index=train, **kw)

    val = None if splits.val is None else make(splits.val, False)
    return Loaders(make(splits.train, True), val, make(splits.test, False))
