"""`bdkd train`, `bdkd eval` and `bdkd compare`: image runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bdkd.cli.common import (
    add_run_flags,
    add_trust_flag,
    check_bins,
    check_figure,
    relaunch_distributed,
    run_target,
    wants_processes,
)


def cmd_train(args: argparse.Namespace) -> int:
    from bdkd.config import load_config
    from bdkd.engine import Trainer
    from bdkd.engine.distributed import destroy
    from bdkd.plugins import code_trusted
    from bdkd.report import markdown_table

    if wants_processes(args):
        return relaunch_distributed(args.argv, args.nproc)
    trusted = code_trusted(args.trust_code)
    cfg, run_dir, resume = run_target(
        args, load_config, lambda path: load_config(path, trusted=trusted)
    )
    if resume:
        trainer = Trainer(cfg, run_dir, resume=True)
        print(
            f"resuming {run_dir} at epoch {trainer.start_epoch + 1}/{cfg.train.epochs}",
            file=sys.stderr,
        )
    else:
        trainer = Trainer(cfg, run_dir, force=args.force, protect=(args.config,))
    summary = trainer.fit()
    if trainer.is_main:
        print(markdown_table(summary["results"], keys=trainer.task.report_keys))
        print(f"run written to {run_dir} (report.md, reliability.png, summary.json, metrics.jsonl)")
    destroy()
    return 0


def cmd_shift(args: argparse.Namespace) -> int:
    """`bdkd eval RUN --shift`: the corruption suite (or a shifted folder) on the run's
    deployed network or on an exported file."""
    from bdkd.deploy.formats import detect_format, load_exported, read_metadata
    from bdkd.deploy.run import load_run
    from bdkd.deploy.shift import check_suite, shift_report, shift_suite
    from bdkd.files import check_new_file
    from bdkd.report import markdown_table

    corruptions = args.corruptions.split(",") if args.corruptions else None
    severities = [int(s) for s in args.severities.split(",")] if args.severities else None
    check_suite(corruptions, severities)
    folder = None if args.shift == "suite" else Path(args.shift)
    if folder is not None and not folder.is_dir():
        raise ValueError(f"--shift {folder}: give 'suite' or a folder of <class>/<image> files")
    run = Path(args.target)
    stem = "shift" if args.file is None else f"shift-{Path(args.file).stem}"
    out = Path(args.out) if args.out else run / "shift" / stem
    for suffix in (".json", ".md"):
        check_new_file(out.with_suffix(suffix), force=args.force, what="--out")
    dep = load_run(
        run,
        args.network[0] if args.network else None,
        trust_code=args.trust_code,
        checkpoint=args.checkpoint,
    )
    runner, meta, title = None, {}, f"{dep.name} of {run}"
    if args.file:
        fmt = detect_format(Path(args.file))
        meta = read_metadata(Path(args.file), fmt)
        runner = load_exported(Path(args.file), fmt, dep.network)
        if runner is None:
            raise ImportError("reading an ONNX file needs onnxruntime: pip install 'bdkd[onnx]'")
        title = f"{args.file}" + (" (int8)" if meta.get("quantized") else "")
    result = shift_suite(
        dep,
        runner,
        probabilities=meta.get("output") == "probabilities",
        raw_input=str(meta.get("input", "")).startswith("uint8"),
        corruptions=corruptions,
        severities=severities,
        folder=folder,
    )
    written = shift_report(result, out, title)
    rows = {"clean test": result["clean"]}
    rows.update(
        {"suite mean": result["mean"]} if "mean" in result else {"shifted": result["shifted"]}
    )
    print(markdown_table(rows, first="images", keys=("accuracy", "ece", "nll", "brier")))
    print(f"written to {', '.join(str(p) for p in written)}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from bdkd.engine.evaluate import checkpoint_deployed, evaluate_checkpoint
    from bdkd.files import check_new_file
    from bdkd.report import markdown_table, save_logits_file

    if args.shift is not None:
        return cmd_shift(args)
    if args.file or args.corruptions or args.severities:
        raise ValueError("--file, --corruptions and --severities go with --shift")
    check_bins(args.bins)
    out = None
    if args.save_logits:
        out = Path(args.save_logits)
        if out.suffix != ".npz":  # numpy would add it; check the file that gets written
            out = out.with_name(out.name + ".npz")
        check_new_file(out, force=args.force, what="--save-logits")
    results, logits, labels = evaluate_checkpoint(
        args.target,
        split=args.split,
        dataset=args.dataset,
        root=args.root,
        networks=args.network,
        device=args.device,
        bins=args.bins,
        trust_code=args.trust_code,
        checkpoint=args.checkpoint,
    )
    print(f"{args.target}: {args.split} split, {labels.shape[0]} samples, {args.bins} bins")
    print(markdown_table(results))
    if out is not None:
        save_logits_file(out, logits, labels, deployed=checkpoint_deployed(args.target))
        print(f"logits written to {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from bdkd.report import compare_runs

    check_figure(args.figure, args.force, "--figure")
    print(compare_runs(args.runs, args.figure, all_networks=args.all_networks))
    if args.figure:
        print(f"reliability figure written to {args.figure}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train",
        help="train a distillation experiment from a config",
        description="Train CONFIG (YAML) with optional dotted overrides, e.g. "
        "bdkd train cfg.yaml train.epochs=5 method.temperature=2. The run directory is "
        "output.dir/output.name (default runs/<config>-seed<seed>); an existing one is never "
        "overwritten without --force.",
    )
    add_run_flags(train, "train in N processes (torch.distributed.run; gloo on CPU, nccl on GPU)")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a run directory or checkpoint on a dataset split")
    ev.add_argument("target", help="a run directory or a checkpoint file")
    ev.add_argument("--split", default="test", choices=("test", "val"))
    ev.add_argument("--dataset", help="another dataset with the same classes (default: the run's)")
    ev.add_argument("--root", help="the dataset's directory")
    ev.add_argument("--network", action="append", help="only this network (repeatable)")
    ev.add_argument("--device", default="auto")
    ev.add_argument(
        "--checkpoint",
        choices=("last", "best"),
        default="last",
        help="a run directory's last checkpoint, or the best one train.save_best kept",
    )
    ev.add_argument("--bins", type=int, default=15)
    ev.add_argument(
        "--save-logits", help="write logits and labels to this .npz (for bdkd calibrate)"
    )
    ev.add_argument(
        "--shift",
        nargs="?",
        const="suite",
        metavar="suite|DIR",
        help="calibration under shift: the corruption suite on the test split (8 corruptions, "
        "5 severities), or a folder DIR/<class>/* of your own shifted images",
    )
    ev.add_argument("--corruptions", help="with --shift: a comma-separated subset")
    ev.add_argument("--severities", help="with --shift: a comma-separated subset of 1-5")
    ev.add_argument("--file", help="with --shift: measure this exported file (onnx, int8 too)")
    ev.add_argument("--out", help="with --shift: the output stem (default RUN/shift/shift)")
    ev.add_argument("--force", action="store_true", help="overwrite --save-logits / --out")
    add_trust_flag(ev)
    ev.set_defaults(func=cmd_eval)

    cmp_ = sub.add_parser("compare", help="compare finished runs side by side")
    cmp_.add_argument("runs", nargs="+", help="run directories")
    cmp_.add_argument("--figure", help="write one reliability figure of the runs here")
    cmp_.add_argument(
        "--all-networks", action="store_true", help="every network, not only the deployed one"
    )
    cmp_.add_argument("--force", action="store_true", help="overwrite --figure")
    cmp_.set_defaults(func=cmd_compare)
