"""Config files: YAML 1.2 numbers, bounded, ``base:`` files merged, dotted overrides."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from bdkd.config.schema import Config, ConfigError
from bdkd.config.validation import MAX_CONFIG_BYTES, check_bounded, validate

__all__ = [
    "apply_overrides",
    "dump_config",
    "load_config",
    "parse_yaml",
    "read_yaml",
    "with_bases",
]


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
    return with_bases(data, path.parent, f"config file {path}", (*_seen, path.resolve()))


def with_bases(
    data: dict[str, Any], directory: Path, where: str = "config", _seen: tuple[Path, ...] = ()
) -> dict[str, Any]:
    """``data`` with its ``base:`` files (relative to ``directory``) merged in, in order, and
    its own keys on top."""
    data = dict(data)
    bases = data.pop("base", [])
    if not isinstance(bases, (str, list)):
        raise ConfigError(f"{where}: 'base' must be a file name or a list of them")
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        if not isinstance(base, str):
            raise ConfigError(f"{where}: 'base' entries must be file names")
        merged = _merge(merged, read_yaml(Path(directory) / base, _seen))
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
