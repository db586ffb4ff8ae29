"""`bdkd configs`, `bdkd init NAME` and `bdkd config show FILE|NAME`: the shipped configs."""

from __future__ import annotations

import argparse
from pathlib import Path

LLM_SECTIONS = ("teacher", "student", "objective")
MINIMAL = {"networks": {"student": {"model": "cnn_small"}}}


def is_llm_config(data: dict) -> bool:
    """Whether a config's top-level keys are `bdkd llm-distill`'s."""
    return any(key in data for key in LLM_SECTIONS)


def cmd_configs(args: argparse.Namespace) -> int:
    from bdkd.shipped import CONFIG_DIR, describe, named_configs

    shipped = named_configs()
    width = max(len(n) for n in shipped)
    for name, path in shipped.items():
        print(f"{name:<{width}}  {describe(path)}")
    print(f"\n{len(shipped)} configs in {CONFIG_DIR}; use a name wherever a config file goes")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from bdkd.files import check_new_file, write_text
    from bdkd.shipped import standalone_yaml

    out = Path(args.name if args.name.endswith(".yaml") else f"{args.name}.yaml")
    check_new_file(out, force=args.force, what="bdkd init")
    write_text(out, standalone_yaml(args.source))
    print(f"wrote {out} (from {args.source}); train it with: bdkd train {out}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from bdkd.config import apply_overrides, dump_config, read_yaml, validate
    from bdkd.shipped import resolve_config

    if args.target and "=" in args.target and not Path(args.target).exists():
        args.overrides, args.target = [args.target, *args.overrides], None
    if args.target is None:
        # every key at its default: a config needs one network, so a scratch student
        print(f"# every key at its default (networks: {MINIMAL['networks']}; " + "docs/config.md)")
        data = apply_overrides(dict(MINIMAL), args.overrides)
    else:
        data = apply_overrides(read_yaml(resolve_config(args.target)), args.overrides)
    if is_llm_config(data):
        from bdkd.llm.config import validate_llm_config

        print(yaml.safe_dump(validate_llm_config(data).to_dict(), sort_keys=False), end="")
    else:
        print(dump_config(validate(data)), end="")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    configs = sub.add_parser("configs", help="list the configs that ship with bdkd")
    configs.set_defaults(func=cmd_configs)

    init = sub.add_parser(
        "init",
        help="write an editable copy of a shipped config (its base files merged in)",
        description="Write NAME.yaml in the current directory: the config --from (a shipped "
        "name or a file) with every base: file merged in, ready to edit and train.",
    )
    init.add_argument("name", help="the file to write (NAME or NAME.yaml)")
    init.add_argument(
        "--from", dest="source", default="fashion_mnist/bdkd", help="default fashion_mnist/bdkd"
    )
    init.add_argument("--force", action="store_true", help="overwrite NAME.yaml")
    init.set_defaults(func=cmd_init)

    config = sub.add_parser(
        "config",
        help="print a config fully resolved, every default included",
        description="bdkd config show [FILE|NAME] [KEY=VALUE ...]: the config as a run would use "
        "it (bases merged, overrides applied, every key with its default); docs/config.md "
        "describes each key.",
    )
    config.add_argument("action", choices=("show",))
    config.add_argument(
        "target",
        nargs="?",
        help="a config file or a shipped config's name (default: none, every key at its default)",
    )
    config.add_argument("overrides", nargs="*", help="KEY=VALUE overrides (dotted keys)")
    config.set_defaults(func=cmd_config)
