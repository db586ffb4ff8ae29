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
        quantize=args.quantize,
        target_risk=args.target_risk,
        alpha=args.alpha,
        calibration_samples=args.calibration_samples,
        force_temperature=args.force_temperature,
        checkpoint=args.checkpoint,
    )
    t, a = record["test"], record["abstention"]
    folded = (
        f"temperature {record['temperature']:.3f} folded in"
        if record["temperature_folded"]
        else "no temperature folded in"
    )
    kind = f"{record['format']} int8" if record.get("quantized") else record["format"]
    check = (
        f"agrees with the float file on {100 * record['agreement_with_float']:.2f} % of test"
        if record.get("agreement_with_float") is not None
        else f"outputs within {record['max_abs_difference_vs_pytorch']:.1e} of PyTorch "
        f"({record['checked_with']})"
    )
    print(
        f"exported {record['network']} to {record['file']} ({kind}, {folded}, "
        f"{record['size_bytes']:,} bytes); {check}; test top-1 {100 * t['accuracy']:.2f} %, "
        f"ECE {100 * t['ece']:.2f} %, NLL {t['nll']:.4f}, AURC {t['aurc']:.4f}; abstain below "
        f"{a['abstain_threshold']:.4f} for risk <= {100 * a['target_risk']:g} % (test coverage "
        f"{100 * (a['test_coverage'] or 0):.1f} %); {record['latency_ms_per_image']['batch_1']:.3f} "
        f"ms per image at batch 1 (recorded in {args.run}/summary.json and report.md)"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from bdkd.deploy.export import FORMATS, QUANTIZATIONS

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
        "--checkpoint",
        choices=("last", "best"),
        default="last",
        help="the last checkpoint, or the best one train.save_best kept (T fitted on val for it)",
    )
    exp.add_argument(
        "--calibrated", action="store_true", help="fold the fitted temperature in (logits / T)"
    )
    exp.add_argument("--probabilities", action="store_true", help="graph outputs softmax")
    exp.add_argument(
        "--raw-input", action="store_true", help="graph takes uint8 images and normalises them"
    )
    exp.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        help="static post-training quantization (onnx): int8 weights and activations, ranges "
        "calibrated on training images; the temperature is refitted on the int8 file",
    )
    exp.add_argument(
        "--calibration-samples", type=int, default=512, help="training images for --quantize"
    )
    exp.add_argument(
        "--target-risk",
        type=float,
        default=0.05,
        help="selective risk the abstention threshold allows (default 0.05)",
    )
    exp.add_argument(
        "--alpha", type=float, default=0.1, help="conformal miscoverage (default 0.1: 90 %%)"
    )
    exp.add_argument(
        "--force-temperature",
        action="store_true",
        help="fold a temperature even when it is not to be trusted (too few validation errors)",
    )
    exp.add_argument("--force", action="store_true", help="overwrite --out")
    add_trust_flag(exp)
    exp.set_defaults(func=cmd_export)
