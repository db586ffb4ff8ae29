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
    )
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from bdkd.data import available_datasets
    from bdkd.distillers import available_methods
    from bdkd.models import available_models

    print("methods: " + ", ".join(available_methods()))
    print(
        "models: "
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
    demo.set_defaults(func=cmd_demo)

    methods = sub.add_parser("methods", help="list the methods, models and datasets")
    methods.set_defaults(func=cmd_methods)
