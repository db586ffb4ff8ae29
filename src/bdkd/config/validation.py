"""Validating a mapping into the schema: types, ranges and choices named by their dotted
key, names that bdkd can build, the bounds of a document, the trust of its source."""

from __future__ import annotations

import copy
import difflib
import re
from typing import Any

from bdkd.config.schema import Config, ConfigError, build_section
from bdkd.plugins import UntrustedCode, refuse_untrusted

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "MAX_CONFIG_VALUES",
    "build_section",
    "check_bounded",
    "check_names",
    "check_run_name",
    "check_trusted",
    "config_differences",
    "validate",
]


# --------------------------------------------------------------------------- validation


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
        check_preprocess(name, net.preprocess)
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
    check_names(cfg)
    if not trusted:
        check_trusted(cfg, source)
    return cfg


PREPROCESS_KEYS = ("mean", "std", "image_size")


def check_preprocess(name: str, value: Any) -> None:
    """``networks.<name>.preprocess``: null, ``model``, or a mapping of ``mean``/``std``
    (numbers, as many as the model's channels) and ``image_size`` (an int ≥ 8)."""
    key = f"networks.{name}.preprocess"
    if value is None or value == "model":
        return
    if not isinstance(value, dict):
        raise ConfigError(
            f"config key {key!r}: expected model or a mapping of {list(PREPROCESS_KEYS)}, "
            f"got {value!r}"
        )
    unknown = sorted(set(value) - set(PREPROCESS_KEYS))
    if unknown:
        raise ConfigError(f"config key '{key}.{unknown[0]}': allowed: {list(PREPROCESS_KEYS)}")
    for stat in ("mean", "std"):
        values = value.get(stat)
        if values is None:
            continue
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        ):
            raise ConfigError(
                f"config key '{key}.{stat}': expected a list of numbers, got {values!r}"
            )
        if stat == "std" and any(v <= 0 for v in values):
            raise ConfigError(f"config key '{key}.std': must be positive, got {values}")
    size = value.get("image_size")
    if size is not None and (
        not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 4096
    ):
        raise ConfigError(f"config key '{key}.image_size': an int in [8, 4096], got {size!r}")


def check_names(cfg: Config) -> None:
    """Every model and the dataset name something bdkd can build (a registered name, a
    library architecture or an import path), so a typo is reported before anything else,
    with the name that was probably meant."""
    from bdkd.data import available_datasets
    from bdkd.models import available_models
    from bdkd.plugins import LIBRARY_PREFIXES, is_import_path

    def check(key: str, name: str, known: list[str], what: str) -> None:
        if is_import_path(name) or name.split(":", 1)[0] in LIBRARY_PREFIXES or name in known:
            return
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"config key {key!r}: unknown {what} {name!r}{hint}; bdkd methods lists them (or "
            "give package.module:factory)"
        )

    for net_name, net in cfg.networks.items():
        check(f"networks.{net_name}.model", net.model, available_models(), "model")
    check("data.dataset", cfg.data.dataset, available_datasets(), "dataset")


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
