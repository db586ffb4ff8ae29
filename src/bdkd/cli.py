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


METRIC_COLUMNS = (
    ("accuracy", "acc %", 100),
    ("ece", "ECE %", 100),
    ("adaptive_ece", "AdaECE %", 100),
    ("classwise_ece", "cwECE %", 100),
    ("mce", "MCE %", 100),
    ("nll", "NLL", 1),
    ("brier", "Brier", 1),
)


def format_metrics_table(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table with one row per entry of ``rows`` and the calibration columns."""
    width = max(len(name) for name in rows)
    head = f"| {'':<{width}} | " + " | ".join(f"{c:>8}" for _, c, _ in METRIC_COLUMNS) + " |"
    rule = "|" + "-" * (width + 2) + "|" + "|".join("-" * 10 for _ in METRIC_COLUMNS) + "|"
    lines = [head, rule]
    for name, metrics in rows.items():
        cells = " | ".join(f"{metrics[k] * scale:>8.3f}" for k, _, scale in METRIC_COLUMNS)
        lines.append(f"| {name:<{width}} | {cells} |")
    return "\n".join(lines)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    import torch

    from bdkd import calibration as cal

    data = cal.load_logits(args.file)
    logits, labels = data["logits"], data["labels"]
    if args.val is not None:
        val = cal.load_logits(args.val)
        fit_logits, fit_labels = val["logits"], val["labels"]
        source = f"fitted on {args.val}"
    elif "val_logits" in data:
        fit_logits, fit_labels = data["val_logits"], data["val_labels"]
        source = "fitted on the file's val_logits/val_labels"
    else:
        if not 0.0 < args.fit_fraction < 1.0:
            raise ValueError(f"--fit-fraction must be in (0, 1), got {args.fit_fraction}")
        n = logits.shape[0]
        cut = int(round(n * args.fit_fraction))
        if cut < 1 or cut >= n:
            raise ValueError(f"{n} samples cannot be split with --fit-fraction {args.fit_fraction}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))
        fit_logits, fit_labels = logits[order[:cut]], labels[order[:cut]]
        logits, labels = logits[order[cut:]], labels[order[cut:]]
        source = (
            f"no validation logits given: fitted on a random {cut} of {n} samples (seed "
            f"{args.seed}); metrics on the other {n - cut}"
        )
    temperature = cal.fit_temperature(fit_logits, fit_labels)
    before = cal.calibration_metrics(logits, labels, n_bins=args.bins)
    scaled = cal.apply_temperature(logits, temperature)
    after = cal.calibration_metrics(scaled, labels, n_bins=args.bins)
    print(f"{args.file}: {logits.shape[0]} samples, {logits.shape[1]} classes, {args.bins} bins")
    print(f"temperature T = {temperature:.4f} ({source})")
    print(format_metrics_table({"before": before, f"after TS (T={temperature:.3f})": after}))
    if args.diagram:
        path = cal.reliability_diagram(
            {
                "before": (torch.softmax(logits.double(), 1), labels),
                f"after TS (T={temperature:.2f})": (torch.softmax(scaled, 1), labels),
            },
            args.diagram,
            n_bins=args.bins,
        )
        print(f"reliability diagram written to {path}")
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

    calib = sub.add_parser(
        "calibrate",
        help="calibration metrics of saved logits, before and after temperature scaling",
        description="Read logits and labels from FILE (.npz or .pt with keys 'logits' and "
        "'labels', optionally 'val_logits'/'val_labels') and print accuracy, ECE, adaptive "
        "and classwise ECE, MCE, NLL and Brier before and after temperature scaling. The "
        "temperature is fitted on --val, else on the file's val_* arrays, else on a random "
        "--fit-fraction of FILE (metrics then on the rest).",
    )
    calib.add_argument("file", help="a .npz or .pt file with 'logits' (N, C) and 'labels' (N,)")
    calib.add_argument("--val", help="a second file whose logits/labels fit the temperature")
    calib.add_argument("--bins", type=int, default=15, help="number of bins (default 15)")
    calib.add_argument("--fit-fraction", type=float, default=0.5)
    calib.add_argument("--seed", type=int, default=0, help="seed of the fit/report split")
    calib.add_argument("--diagram", help="also write a reliability diagram PNG here")
    calib.set_defaults(func=_cmd_calibrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bdkd`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"bdkd {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
