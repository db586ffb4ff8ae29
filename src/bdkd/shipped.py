"""The configs that ship with bdkd, by name, from any directory.

They are package data (``bdkd/configs/<family>/<name>.yaml``; a checkout's ``configs/`` is the
same directory), so an installed bdkd has them too: ``bdkd train fashion_mnist/bdkd`` works
wherever it is run. A command that takes a config takes a file path or such a name
(:func:`resolve_config`); ``bdkd configs`` lists them (:func:`named_configs`), ``bdkd init``
writes an editable copy with every ``base:`` merged in (:func:`standalone_yaml`).
"""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml

from bdkd.config import ConfigError, read_yaml

__all__ = ["CONFIG_DIR", "describe", "named_configs", "resolve_config", "standalone_yaml"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def named_configs() -> dict[str, Path]:
    """Every shipped config by name (``family/name``; base files, which are not runnable on
    their own, left out)."""
    return {
        f"{p.parent.relative_to(CONFIG_DIR).as_posix()}/{p.stem}": p
        for p in sorted(CONFIG_DIR.rglob("*.yaml"))
        if p.stem != "base"
    }


def describe(path: Path) -> str:
    """A config's first comment line (what it is)."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def resolve_config(arg: str | Path) -> Path:
    """A config file: ``arg`` itself when it is a file, else the shipped config of that name
    (``fashion_mnist/bdkd``, with or without ``.yaml``); a name that is neither is one error
    saying which name was meant."""
    path = Path(arg)
    if path.is_file():
        return path
    name = str(arg).removesuffix(".yaml")
    shipped = named_configs()
    if name in shipped:
        return shipped[name]
    close = difflib.get_close_matches(name, list(shipped), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(
        f"config {str(arg)!r} is neither a file nor a config that ships with bdkd{hint}; "
        "bdkd configs lists them"
    )


def standalone_yaml(source: str | Path) -> str:
    """The YAML of config ``source`` (a file or a shipped name) with its ``base:`` files
    merged in: one file to edit, that needs none of the others."""
    path = resolve_config(source)
    data = read_yaml(path)
    head = f"# A copy of {path.name if path.parent == CONFIG_DIR else source}, made by bdkd init"
    note = describe(path)
    lines = [head] + ([f"# {note}"] if note else [])
    return "\n".join(lines) + "\n" + yaml.safe_dump(data, sort_keys=False)
