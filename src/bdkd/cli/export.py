"""`bdkd export RUN --out FILE`: a trained network as a file a device can use."""

from __future__ import annotations

import argparse

from bdkd.cli.common import add_trust_flag


def cmd_export(args: argparse.Namespace) -> int:
    from bdkd.deploy.export import export_run

    record = export_run(
        args.run,
        args.out,
        fmt=args.format,
        network=args.network,
        calibrated=args.calibrated,
        probabilities=args.probabilities,
        raw_input=args.raw_input,
        force=args.force,
        trust_code=args.trust_code,
    )
    t = record["test"]
    folded = (
        f"temperature {record['temperature']:.3f} folded in"
        if record["temperature_folded"]
        else "no temperature folded in"
    )
    print(
        f"exported {record['network']} to {record['file']} ({record['format']}, {folded}); "
        f"outputs within {record['max_abs_difference_vs_pytorch']:.1e} of PyTorch "
        f"({record['checked_with']}); test top-1 {100 * t['accuracy']:.2f} %, ECE "
        f"{100 * t['ece']:.2f} %, NLL {t['nll']:.4f} (recorded in {args.run}/summary.json and report.md)"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from bdkd.deploy.export import FORMATS

    exp = sub.add_parser(
        "export",
        help="write a run's network as ONNX, TorchScript, ExportedProgram or a state dict",
        description="Export a trained network of RUN (default: the deployed student). Graph "
        "formats take normalised float images (or uint8 with --raw-input) and output logits (or "
        "probabilities); --calibrated folds the temperature fitted on validation into the model. "
        "The file is checked against PyTorch and its test metrics are added to the run's report.",
    )
    exp.add_argument("run", help="a finished run directory")
    exp.add_argument("--out", required=True, help="the file to write")
    exp.add_argument("--format", default="onnx", choices=tuple(FORMATS))
    exp.add_argument("--network", help="which network (default: the run's deployed one)")
    exp.add_argument(
        "--calibrated", action="store_true", help="fold the fitted temperature in (logits / T)"
    )
    exp.add_argument("--probabilities", action="store_true", help="graph outputs softmax")
    exp.add_argument(
        "--raw-input", action="store_true", help="graph takes uint8 images and normalises them"
    )
    exp.add_argument("--force", action="store_true", help="overwrite --out")
    add_trust_flag(exp)
    exp.set_defaults(func=cmd_export)
