"""The ``bdkd`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import bdkd


def _divergence_table() -> str:
    """A table of every divergence for a few example teacher/student logit pairs."""
    import torch

    from bdkd import divergences as D

    teacher = torch.tensor([[4.0, 1.0, 0.0, -1.0, -2.0]])
    students = {
        "same as teacher": teacher.clone(),
        "over-confident": torch.tensor([[9.0, 1.0, 0.0, -1.0, -2.0]]),
        "under-confident": torch.tensor([[1.0, 0.5, 0.0, -0.5, -1.0]]),
        "wrong class": torch.tensor([[0.0, 4.0, 1.0, -1.0, -2.0]]),
    }
    columns = {
        "FKL": D.forward_kl,
        "RKL": D.reverse_kl,
        "JSD": D.js_divergence,
        "SFKL": D.skew_forward_kl,
        "SRKL": D.skew_reverse_kl,
        "TV": D.total_variation,
        "AB(.8,.3)": lambda s, t: D.ab_divergence(s, t, alpha=0.8, beta=0.3),
        "H(q)": lambda s, t: D.entropy(s),
    }
    head = f"| {'student vs teacher':<18} | " + " | ".join(f"{c:>9}" for c in columns) + " |"
    rule = "|" + "-" * 20 + "|" + "|".join("-" * 11 for _ in columns) + "|"
    lines = [head, rule]
    for name, student in students.items():
        cells = " | ".join(f"{fn(student, teacher).item():>9.4f}" for fn in columns.values())
        lines.append(f"| {name:<18} | {cells} |")
    return "\n".join(lines)


def _cmd_demo(args: argparse.Namespace) -> int:
    print("Divergences between a teacher's and a student's predictions (temperature 1):")
    print(_divergence_table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``bdkd`` with one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog="bdkd",
        description="Knowledge distillation for accurate and well-calibrated compact models.",
    )
    parser.add_argument("--version", action="version", version=f"bdkd {bdkd.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the demo job and print its results table")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bdkd`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
