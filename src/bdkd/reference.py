"""docs/config.md, generated from the schema itself: every key of `bdkd train` and
`bdkd llm-distill` configs (type, default, range or choices, one line), and every method's and
token objective's declared hyper-parameters.

    python -m bdkd.reference > docs/config.md

tests/test_docs.py fails when the committed page differs from what this writes.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from bdkd.config import Config
from bdkd.config.schema import NetworkConfig

__all__ = ["render_reference"]

RANGE_TEXT = {"gt": "> {}", "ge": "≥ {}", "lt": "< {}", "le": "≤ {}"}


def _type_text(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, __import__("types").UnionType):
        return " or ".join(_type_text(a) for a in args)
    if origin is list:
        return f"list of {_type_text(args[0])}"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return {type(None): "null", str: "text", int: "int", float: "number", bool: "bool"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _allowed(meta: Any) -> str:
    parts = []
    if meta.get("choices"):
        parts.append("one of " + ", ".join(f"`{c}`" for c in meta["choices"]))
    parts += [RANGE_TEXT[k].format(v) for k, v in meta.get("range", {}).items()]
    items = dict(meta.get("items", {}))
    if "choices" in items:
        parts.append("each one of " + ", ".join(f"`{c}`" for c in items.pop("choices")))
    parts += ["each " + RANGE_TEXT[k].format(v) for k, v in items.items()]
    return ", ".join(parts)


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    return f"`{value!r}`".replace("None", "null").replace("True", "true").replace("False", "false")


def section_rows(cls: type, prefix: str) -> list[str]:
    """One table row per field of dataclass ``cls``, keys under ``prefix``."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        tp = hints[f.name]
        rows.append(
            f"| `{prefix}{f.name}` | {_type_text(tp)} | {_default(f)} | {_allowed(meta)} "
            f"| {meta.get('doc', '')} |"
        )
    return rows


def _table(title: str, cls: type, prefix: str) -> list[str]:
    return [
        f"### `{prefix.rstrip('.')}`" if prefix else f"### {title}",
        "",
        "| key | type | default | allowed | what it is |",
        "|---|---|---|---|---|",
        *section_rows(cls, prefix),
        "",
    ]


def _config_sections(cls: type) -> list[tuple[str, type]]:
    hints = typing.get_type_hints(cls)
    return [
        (f.name, hints[f.name])
        for f in dataclasses.fields(cls)
        if dataclasses.is_dataclass(hints[f.name])
    ]


def _hparam_rows(name: str, hparams: dict) -> list[str]:
    rows = []
    for hp in hparams.values():
        allowed = ""
        if hp.range is not None:
            bits = [
                RANGE_TEXT[k].format(getattr(hp.range, k))
                for k in ("gt", "ge", "lt", "le")
                if getattr(hp.range, k) is not None
            ]
            if hp.range.choices:
                bits.insert(0, "one of " + ", ".join(f"`{c}`" for c in hp.range.choices))
            allowed = ", ".join(bits)
        default = "required" if hp.required else f"`{hp.default!r}`".replace("None", "null")
        rows.append(f"| `{name}` | `{hp.name}` | {_type_text(hp.type)} | {default} | {allowed} |")
    return rows


def render_reference() -> str:
    """The whole page."""
    from bdkd.distillers import available_methods, method_hparams
    from bdkd.llm.config import LLMConfig
    from bdkd.losses import TOKEN_OBJECTIVES

    lines = [
        "# Every config key",
        "",
        "Generated from the schema by `python -m bdkd.reference > docs/config.md` (a test "
        "fails when this page and the code differ). `bdkd config show FILE|NAME` prints a "
        "config with every key resolved. Unknown keys, wrong types and values outside the "
        "allowed range are one-line errors naming the key (and the key that was meant).",
        "",
        "## `bdkd train`",
        "",
        "`method` is `{name: <method>, <hyper-parameter>: value, ...}` (the methods' "
        "hyper-parameters are below); `networks` maps each network's name (`teacher`, "
        "`student`, `peer0`, ...) to the keys of `networks.<name>`.",
        "",
    ]
    lines += _table("", NetworkConfig, "networks.<name>.")
    for name, cls in _config_sections(Config):
        lines += _table("", cls, f"{name}.")
    lines += ["## `bdkd llm-distill`", ""]
    for name, cls in _config_sections(LLMConfig):
        lines += _table("", cls, f"{name}.")
    lines += [
        "## Method hyper-parameters (`method.*` of `bdkd train`)",
        "",
        "Declared by each method's typed signature (docs/methods.md has the formulas). An "
        "objective's method also takes the offline distiller's own keys (`ce_weight`, "
        "`distill_weight`, `warmup_epochs`, `logit_standardization`).",
        "",
        "| method | key | type | default | allowed |",
        "|---|---|---|---|---|",
    ]
    for method in available_methods():
        lines += _hparam_rows(method, method_hparams(method))
    lines += [
        "",
        "## Token objectives (`objective.name` and `objective.params` of `bdkd llm-distill`)",
        "",
        "The temperature is `objective.temperature`, not a param.",
        "",
        "| objective | param | type | default | allowed |",
        "|---|---|---|---|---|",
    ]
    for token, entry in TOKEN_OBJECTIVES.items():
        params = {k: v for k, v in entry.hparams.items() if k != "temperature"}
        lines += _hparam_rows(token, params) or [f"| `{token}` | – | | | |"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render_reference(), end="")
