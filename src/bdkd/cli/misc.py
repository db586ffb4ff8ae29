"""`bdkd demo` and `bdkd methods`."""

from __future__ import annotations

import argparse


def cmd_demo(args: argparse.Namespace) -> int:
    from bdkd.demo import divergence_table, run_demo

    if args.divergences:
        print("Divergences between a teacher's and a student's predictions (temperature 1):")
        print(divergence_table())
        return 0
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    run_demo(
        args.out,
        allow_install=not args.no_install,
        force=args.force,
        overrides=args.overrides,
        workers=args.workers,
        dataset=args.dataset,
    )
    return 0


def _first_line(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    return doc[0].rstrip(".").replace("``", "") if doc else ""


def _settings(hparams: dict) -> str:
    shown = [
        f"{name}={'(required)' if hp.required else repr(hp.default)}"
        for name, hp in hparams.items()
        if name not in ("deployed", "order", "layout", "objective_kwargs")
    ]
    return ", ".join(shown)


def cmd_methods(args: argparse.Namespace) -> int:
    from bdkd.data import available_datasets
    from bdkd.distillers import DISTILLERS, available_methods, method_hparams
    from bdkd.losses import TOKEN_OBJECTIVES, get_objective
    from bdkd.models import available_models

    print("methods (bdkd train, method.name), with their defaults:")
    for name in available_methods():
        source = DISTILLERS[name] if name in DISTILLERS else get_objective(name).fn
        print(f"  {name:<13} {_first_line(source)}")
        print(f"  {'':<13} {_settings(method_hparams(name))}")
    print("\ntoken objectives (bdkd llm-distill, objective.name), with their params:")
    for token, entry in TOKEN_OBJECTIVES.items():
        params = {k: v for k, v in entry.hparams.items() if k != "temperature"}
        print(f"  {token:<16} {_first_line(entry.fn)}; {_settings(params) or 'no params'}")
    print(
        "\nmodels: "
        + ", ".join(available_models())
        + ", timm:<name>, torchvision:<name>, package.module:factory"
    )
    print("datasets: " + ", ".join(available_datasets()) + ", package.module:factory")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo",
        help="train a teacher and students (scratch, KD, DML, BD-KD) on Fashion-MNIST and report",
        description="Trains a teacher, a student from scratch, with KD, with DML and with "
        "BD-KD on Fashion-MNIST, two runs at a time (configs/demo: 2,000 images, 40 epochs, "
        "the methods benchmark's calibration regime; installs the Debian package "
        "dataset-fashion-mnist when missing and permitted, else falls back to digits), prints "
        "accuracy, ECE, NLL and Brier of each with a one-line reading, and writes a report "
        "that opens with the students' reliability diagrams.",
    )
    demo.add_argument("overrides", nargs="*", help="KEY=VALUE overrides applied to every run")
    demo.add_argument("--out", help="the demo directory (default runs/demo-<time>)")
    demo.add_argument("--force", action="store_true", help="overwrite --out")
    demo.add_argument(
        "--no-install", action="store_true", help="never run apt-get; fall back to digits"
    )
    demo.add_argument(
        "--divergences", action="store_true", help="only print a table of divergences"
    )
    demo.add_argument("--workers", type=int, help="runs trained at a time (default: 2 or cores)")
    demo.add_argument(
        "--dataset",
        choices=("fashion_mnist", "digits"),
        default="fashion_mnist",
        help="digits: the quick version (configs/digits, about a minute)",
    )
    demo.set_defaults(func=cmd_demo)

    methods = sub.add_parser(
        "methods", help="list the methods (and their defaults), token objectives, models, datasets"
    )
    methods.set_defaults(func=cmd_methods)
