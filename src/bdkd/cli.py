"""The ``bdkd`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import bdkd


def _cmd_demo(args: argparse.Namespace) -> int:
    from bdkd.demo import run_demo

    if args.divergences:
        from bdkd.demo import divergence_table

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


def _check_bins(bins: int) -> None:
    from bdkd.config import MAX_BINS

    if not 1 <= bins <= MAX_BINS:
        raise ValueError(f"--bins must be in [1, {MAX_BINS}], got {bins}")


def _check_figure(path: str | None, force: bool, flag: str) -> None:
    """A figure path must end in .png and not replace a file without --force."""
    from bdkd.files import check_new_file

    if path is None:
        return
    if Path(path).suffix.lower() != ".png":
        raise ValueError(f"{flag} {path}: figures are written as PNG; give a name ending in .png")
    check_new_file(path, force=force, what=flag)


CALIBRATE_KEYS = ("accuracy", "ece", "adaptive_ece", "classwise_ece", "mce", "nll", "brier")


def _cmd_calibrate(args: argparse.Namespace) -> int:
    import torch

    from bdkd import calibration as cal
    from bdkd.files import load_logits
    from bdkd.report import markdown_table, reliability_diagram

    _check_bins(args.bins)
    _check_figure(args.diagram, args.force, "--diagram")
    data = load_logits(args.file)
    logits, labels = data["logits"], data["labels"]
    if args.val is not None:
        val = load_logits(args.val)
        fit_logits, fit_labels = val["logits"], val["labels"]
        if fit_logits.shape[1] != logits.shape[1]:
            raise ValueError(
                f"{args.val} has {fit_logits.shape[1]} classes, {args.file} {logits.shape[1]}"
            )
        source = f"fitted on {args.val}"
    elif "val_logits" in data:
        fit_logits, fit_labels = data["val_logits"], data["val_labels"]
        source = "fitted on the file's val_logits/val_labels"
    else:
        n = logits.shape[0]
        fit_logits, fit_labels, logits, labels = cal.split_for_fitting(
            logits, labels, fraction=args.fit_fraction, seed=args.seed
        )
        source = (
            f"no validation logits given: fitted on a random {fit_logits.shape[0]} of {n} "
            f"samples (seed {args.seed}); metrics on the other {logits.shape[0]}"
        )
    temperature = cal.fit_temperature(fit_logits, fit_labels)
    before = cal.calibration_metrics(logits, labels, n_bins=args.bins)
    scaled = cal.apply_temperature(logits, temperature)
    after = cal.calibration_metrics(scaled, labels, n_bins=args.bins)
    print(f"{args.file}: {logits.shape[0]} samples, {logits.shape[1]} classes, {args.bins} bins")
    print(f"temperature T = {temperature:.4f} ({source})")
    print(
        markdown_table(
            {"before": before, f"after TS (T={temperature:.3f})": after},
            first="logits",
            keys=CALIBRATE_KEYS,
        )
    )
    if args.diagram:
        path = reliability_diagram(
            {
                "before": (torch.softmax(logits.double(), 1), labels),
                f"after TS (T={temperature:.2f})": (torch.softmax(scaled, 1), labels),
            },
            args.diagram,
            n_bins=args.bins,
        )
        print(f"reliability diagram written to {path}")
    return 0


def _wants_processes(args: argparse.Namespace) -> bool:
    """Whether ``--nproc`` asks for more than one process (checked: at least 1)."""
    if args.nproc is not None and args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    return bool(args.nproc and args.nproc > 1)


def _relaunch_distributed(argv: Sequence[str], nproc: int) -> int:
    """Run this same command in ``nproc`` processes through torch.distributed.run."""
    import os
    import subprocess

    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "bdkd",
        *rest,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run(cmd, env=env).returncode


def _run_target(args: argparse.Namespace, load: Callable[..., Any]) -> tuple[Any, Path, bool]:
    """(config, run directory, resuming?) of ``train`` / ``llm-distill``: ``--resume RUN``
    reads the run's own config.yaml; else CONFIG with overrides, into ``--out`` or
    output.dir/output.name (default ``<config>-seed<seed>``)."""
    from bdkd.engine.loop import check_resumable
    from bdkd.engine.rundir import default_run_dir

    if args.resume:
        run_dir = Path(args.resume)
        if args.config or args.overrides:
            raise ValueError(
                "--resume takes the run's own config.yaml; give no CONFIG or overrides with it"
            )
        check_resumable(run_dir)
        return load(run_dir / "config.yaml"), run_dir, True
    if not args.config:
        raise ValueError("give a CONFIG file (or --resume RUN_DIR)")
    cfg = load(args.config, args.overrides)
    run_dir = (
        Path(args.out)
        if args.out
        else default_run_dir(args.config, cfg.output.dir, cfg.output.name, cfg.train.seed)
    )
    return cfg, run_dir, False


def _cmd_train(args: argparse.Namespace) -> int:
    from bdkd.config import load_config
    from bdkd.engine import Trainer
    from bdkd.engine.distributed import destroy

    if _wants_processes(args):
        return _relaunch_distributed(args.argv, args.nproc)
    cfg, run_dir, resume = _run_target(args, load_config)
    if resume:
        trainer = Trainer(cfg, run_dir, resume=True)
        print(
            f"resuming {run_dir} at epoch {trainer.start_epoch + 1}/{cfg.train.epochs}",
            file=sys.stderr,
        )
    else:
        trainer = Trainer(cfg, run_dir, force=args.force, protect=(args.config,))
    summary = trainer.fit()
    from bdkd.report import DENSE_KEYS, RUN_KEYS, markdown_table

    if trainer.is_main:
        dense = summary.get("task") == "segmentation"
        print(markdown_table(summary["results"], keys=DENSE_KEYS if dense else RUN_KEYS))
        print(f"run written to {run_dir} (report.md, reliability.png, summary.json, metrics.jsonl)")
    destroy()
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from bdkd.engine.evaluate import evaluate_checkpoint
    from bdkd.files import check_new_file
    from bdkd.report import markdown_table, save_arrays

    _check_bins(args.bins)
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
    )
    print(f"{args.target}: {args.split} split, {labels.shape[0]} samples, {args.bins} bins")
    print(markdown_table(results))
    if out is not None:
        arrays = {"labels": labels.numpy()}
        if len(logits) == 1:
            arrays["logits"] = next(iter(logits.values())).numpy()
        for name, z in logits.items():
            arrays[f"logits_{name}"] = z.numpy()
        save_arrays(out, **arrays)
        print(f"logits written to {out}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from bdkd.report import compare_runs

    _check_figure(args.figure, args.force, "--figure")
    print(compare_runs(args.runs, args.figure, all_networks=args.all_networks))
    if args.figure:
        print(f"reliability figure written to {args.figure}")
    return 0


def _cmd_llm_distill(args: argparse.Namespace) -> int:
    from bdkd.engine.distributed import destroy
    from bdkd.llm.run import load_llm_config, run_llm_distill

    if _wants_processes(args):
        return _relaunch_distributed(args.argv, args.nproc)
    cfg, run_dir, resume = _run_target(args, load_llm_config)
    if resume:
        summary = run_llm_distill(cfg, run_dir, resume=True)
    else:
        summary = run_llm_distill(cfg, run_dir, force=args.force, protect=(args.config,))
    destroy()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    r = summary["results"]["student"]
    objective = summary["objective"]
    if summary.get("effective_objective", objective) != objective:
        objective += f" (= {summary['effective_objective']})"
    line = (
        f"{objective}: perplexity {r['perplexity']:.2f}, next-token accuracy "
        f"{100 * r['accuracy']:.2f} %, token ECE {100 * r['ece']:.2f} %, NLL {r['nll']:.4f}, "
        f"Brier {r['brier']:.4f}"
    )
    if "teacher_top1_agreement" in r:
        line += f", teacher top-1 agreement {100 * r['teacher_top1_agreement']:.2f} %"
    if "rouge_l_vs_teacher" in r:
        line += f", ROUGE-L vs teacher {r['rouge_l_vs_teacher']:.3f}"
    print(line)
    student = f"; the student is in {summary['student_dir']}" if "student_dir" in summary else ""
    print(f"run written to {run_dir}{student}")
    return 0


def _cmd_llm_cache_teacher(args: argparse.Namespace) -> int:
    from bdkd.llm.run import cache_teacher, load_llm_config

    cfg = load_llm_config(args.config, args.overrides)
    meta = cache_teacher(
        cfg, args.out, k=args.k, force=args.force, batch=args.batch, protect=(args.config,)
    )
    size = sum(f.stat().st_size for f in Path(args.out).iterdir() if f.is_file())
    print(
        f"teacher cache written to {args.out}: top-{meta['k']} of {meta['tokens']} target "
        f"tokens, {meta['bytes_per_token']} bytes per token ({size / 2**20:.1f} MiB); use it "
        f"with train.teacher_cache={args.out}"
    )
    return 0


def _cmd_llm_eval(args: argparse.Namespace) -> int:
    from bdkd.llm.data import Fields
    from bdkd.llm.evaluate import evaluate_model

    summary = evaluate_model(
        args.model,
        args.data,
        args.out,
        teacher=args.teacher,
        fmt=args.format,
        fields=Fields(
            args.text_field, args.prompt_field, args.completion_field, args.messages_field
        ),
        max_length=args.max_length,
        max_samples=args.max_samples,
        batch=args.batch,
        bins=args.bins,
        device=args.device,
        force=args.force,
    )
    r = summary["results"]["model"]
    line = (
        f"{args.model}: perplexity {r['perplexity']:.2f}, next-token accuracy "
        f"{100 * r['accuracy']:.2f} %, token ECE {100 * r['ece']:.2f} %, NLL {r['nll']:.4f}, "
        f"Brier {r['brier']:.4f} over {int(r['tokens'])} tokens of {summary['texts']} texts"
    )
    if "teacher_top1_agreement" in r:
        line += f"; top-1 agreement with the teacher {100 * r['teacher_top1_agreement']:.2f} %"
    print(line)
    print(f"written to {args.out} (summary.json, report.md)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from bdkd.engine.export import export_run

    record = export_run(
        args.run,
        args.out,
        fmt=args.format,
        network=args.network,
        calibrated=args.calibrated,
        probabilities=args.probabilities,
        raw_input=args.raw_input,
        force=args.force,
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


def _cmd_methods(args: argparse.Namespace) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``bdkd`` with one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog="bdkd",
        description="Knowledge distillation for accurate and well-calibrated compact models.",
    )
    parser.add_argument("--version", action="version", version=f"bdkd {bdkd.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
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
    calib.add_argument("--force", action="store_true", help="overwrite --diagram")
    calib.set_defaults(func=_cmd_calibrate)

    train = sub.add_parser(
        "train",
        help="train a distillation experiment from a config",
        description="Train CONFIG (YAML) with optional dotted overrides, e.g. "
        "bdkd train cfg.yaml train.epochs=5 method.temperature=2. The run directory is "
        "output.dir/output.name (default runs/<config>-seed<seed>); an existing one is never "
        "overwritten without --force.",
    )
    train.add_argument("config", nargs="?", help="the YAML config")
    train.add_argument("overrides", nargs="*", help="KEY=VALUE overrides (dotted keys)")
    train.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a killed run from its last checkpoint"
    )
    train.add_argument(
        "--force",
        action="store_true",
        help="replace an existing run directory made by bdkd (after the new run has validated)",
    )
    train.add_argument("--out", help="the run directory (overrides output.dir/output.name)")
    train.add_argument(
        "--nproc",
        type=int,
        help="train in N processes (torch.distributed.run; gloo on CPU, nccl on GPU)",
    )
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser("eval", help="evaluate a run directory or checkpoint on a dataset split")
    ev.add_argument("target", help="a run directory or a checkpoint file")
    ev.add_argument("--split", default="test", choices=("test", "val"))
    ev.add_argument("--dataset", help="another dataset with the same classes (default: the run's)")
    ev.add_argument("--root", help="the dataset's directory")
    ev.add_argument("--network", action="append", help="only this network (repeatable)")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--bins", type=int, default=15)
    ev.add_argument(
        "--save-logits", help="write logits and labels to this .npz (for bdkd calibrate)"
    )
    ev.add_argument("--force", action="store_true", help="overwrite --save-logits")
    ev.set_defaults(func=_cmd_eval)

    cmp_ = sub.add_parser("compare", help="compare finished runs side by side")
    cmp_.add_argument("runs", nargs="+", help="run directories")
    cmp_.add_argument("--figure", help="write one reliability figure of the runs here")
    cmp_.add_argument(
        "--all-networks", action="store_true", help="every network, not only the deployed one"
    )
    cmp_.add_argument("--force", action="store_true", help="overwrite --figure")
    cmp_.set_defaults(func=_cmd_compare)

    llm = sub.add_parser(
        "llm-distill",
        help="distil a causal language model into another (any transformers model, local data)",
        description="Distil a causal LM from a YAML config (see configs/llm/ and docs/llm.md); "
        "dotted overrides as for train. The student is saved to RUN/student (save_pretrained).",
    )
    llm.add_argument("config", nargs="?")
    llm.add_argument("overrides", nargs="*")
    llm.add_argument("--resume", metavar="RUN_DIR")
    llm.add_argument("--force", action="store_true")
    llm.add_argument("--out")
    llm.add_argument(
        "--nproc",
        type=int,
        help="run in N processes (torch.distributed.run): DDP, or FSDP2 with train.parallel=fsdp",
    )
    llm.set_defaults(func=_cmd_llm_distill)

    cache = sub.add_parser(
        "llm-cache-teacher",
        help="compute an LLM teacher's top-k next-token distributions once, for train.teacher_cache",
        description="Run the teacher of CONFIG over every target token of its train/val/test "
        "splits and write its top-k token ids, log-probabilities and tail mass to --out "
        "(memory-mapped; 6k+2 bytes per token). A run with train.teacher_cache=OUT then "
        "never loads the teacher; the cache is refused if teacher, tokenizer or data differ.",
    )
    cache.add_argument("config")
    cache.add_argument("overrides", nargs="*")
    cache.add_argument("--out", required=True, help="the cache directory")
    cache.add_argument("--k", type=int, default=128, help="tokens kept per position (128)")
    cache.add_argument("--batch", type=int, help="texts per teacher forward (train.eval_batch)")
    cache.add_argument("--force", action="store_true", help="replace --out (a bdkd cache)")
    cache.set_defaults(func=_cmd_llm_cache_teacher)

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
    exp.add_argument(
        "--format",
        default="onnx",
        choices=("onnx", "torchscript", "exported_program", "safetensors", "state_dict"),
    )
    exp.add_argument("--network", help="which network (default: the run's deployed one)")
    exp.add_argument(
        "--calibrated", action="store_true", help="fold the fitted temperature in (logits / T)"
    )
    exp.add_argument("--probabilities", action="store_true", help="graph outputs softmax")
    exp.add_argument(
        "--raw-input", action="store_true", help="graph takes uint8 images and normalises them"
    )
    exp.add_argument("--force", action="store_true", help="overwrite --out")
    exp.set_defaults(func=_cmd_export)

    lev = sub.add_parser(
        "llm-eval",
        help="next-token metrics of any causal LM on local data (perplexity, token ECE, ...)",
        description="Evaluate MODEL (a save_pretrained directory, a cached hub id or a .gguf "
        "file) on --data (jsonl/json/parquet with prompt/completion, chat messages or text; or "
        "plain text lines): perplexity, next-token accuracy, token ECE / NLL / Brier, and "
        "agreement with --teacher; writes --out/summary.json and report.md.",
    )
    lev.add_argument("model")
    lev.add_argument("--data", nargs="+", required=True, help="data files")
    lev.add_argument("--out", required=True, help="the output directory")
    lev.add_argument("--teacher", help="compare with this model (same vocabulary)")
    lev.add_argument(
        "--format",
        default="auto",
        choices=("auto", "prompt_completion", "messages", "text", "lines", "fortunes"),
    )
    lev.add_argument("--text-field", default="text")
    lev.add_argument("--prompt-field", default="prompt")
    lev.add_argument("--completion-field", default="completion")
    lev.add_argument("--messages-field", default="messages")
    lev.add_argument("--max-length", type=int, default=512)
    lev.add_argument("--max-samples", type=int)
    lev.add_argument("--batch", type=int, default=16)
    lev.add_argument("--bins", type=int, default=15)
    lev.add_argument("--device", default="auto")
    lev.add_argument("--force", action="store_true", help="replace --out (a bdkd output)")
    lev.set_defaults(func=_cmd_llm_eval)

    methods = sub.add_parser("methods", help="list the methods, models and datasets")
    methods.set_defaults(func=_cmd_methods)
    return parser


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    OSError,
    ImportError,
    RuntimeError,
)
"""Shown as one line ``bdkd COMMAND: error: ...`` (``BDKD_TRACEBACK=1`` shows tracebacks)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bdkd`` console script."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    args.argv = argv
    if getattr(args, "command", None) in ("train", "demo", "llm-distill", "llm-cache-teacher"):
        overrides = [a for a in extra if "=" in a and not a.startswith("-")]
        args.overrides = [*args.overrides, *overrides]
        extra = [a for a in extra if a not in overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    import os

    if os.environ.get("BDKD_TRACEBACK"):
        return int(args.func(args))
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"bdkd {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if not isinstance(err, EXPECTED_ERRORS):
            raise
        text = " ".join(str(err).split()) or type(err).__name__
        if type(err) is RuntimeError:  # torch's own errors: say how to see where
            text += " (set BDKD_TRACEBACK=1 to see where)"
        print(f"bdkd {args.command}: error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
