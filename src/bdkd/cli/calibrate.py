"""`bdkd calibrate FILE`: calibration of saved logits before and after temperature scaling
(the workflow is :func:`bdkd.calibrate.calibrate_file`)."""

from __future__ import annotations

import argparse

from bdkd.cli.common import check_bins, check_figure


def cmd_calibrate(args: argparse.Namespace) -> int:
    from bdkd.calibrate import KEYS, calibrate_file
    from bdkd.report import markdown_table, reliability_diagram

    check_bins(args.bins)
    check_figure(args.diagram, args.force, "--diagram")
    result = calibrate_file(
        args.file,
        val=args.val,
        network=args.network,
        bins=args.bins,
        fit_fraction=args.fit_fraction,
        seed=args.seed,
    )
    z = result.logits
    which = f", network {result.network}" if result.network else ""
    print(f"{args.file}{which}: {z.shape[0]} samples, {z.shape[1]} classes, {args.bins} bins")
    print(f"temperature T = {result.temperature:.4f} ({result.source})")
    rows = {"before": result.before, f"after TS (T={result.temperature:.3f})": result.after}
    print(markdown_table(rows, first="logits", keys=KEYS))
    if args.diagram:
        path = reliability_diagram(result.panels(), args.diagram, n_bins=args.bins)
        print(f"reliability diagram written to {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    calib = sub.add_parser(
        "calibrate",
        help="calibration metrics of saved logits, before and after temperature scaling",
        description="Read logits and labels from FILE (.npz or .pt with keys 'logits' and "
        "'labels', optionally 'val_logits'/'val_labels'; a file of several networks holds "
        "'logits_<network>') and print accuracy, ECE, adaptive and classwise ECE, MCE, NLL and "
        "Brier before and after temperature scaling. The temperature is fitted on --val, else "
        "on the file's val_* arrays, else on a random --fit-fraction of FILE (metrics then on "
        "the rest).",
    )
    calib.add_argument("file", help="a .npz or .pt file with 'logits' (N, C) and 'labels' (N,)")
    calib.add_argument("--val", help="a second file whose logits/labels fit the temperature")
    calib.add_argument(
        "--network", help="which network of a file with several (default: the deployed one)"
    )
    calib.add_argument("--bins", type=int, default=15, help="number of bins (default 15)")
    calib.add_argument("--fit-fraction", type=float, default=0.5)
    calib.add_argument("--seed", type=int, default=0, help="seed of the fit/report split")
    calib.add_argument("--diagram", help="also write a reliability diagram PNG here")
    calib.add_argument("--force", action="store_true", help="overwrite --diagram")
    calib.set_defaults(func=cmd_calibrate)
