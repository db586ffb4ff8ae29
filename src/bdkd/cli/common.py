"""What several commands share: flag checks, the torchrun relaunch, the run target."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def check_bins(bins: int) -> None:
    from bdkd.config import MAX_BINS

    if not 1 <= bins <= MAX_BINS:
        raise ValueError(f"--bins must be in [1, {MAX_BINS}], got {bins}")


def check_figure(path: str | None, force: bool, flag: str) -> None:
    """A figure path must end in .png and not replace a file without --force."""
    from bdkd.files import check_new_file

    if path is None:
        return
    if Path(path).suffix.lower() != ".png":
        raise ValueError(f"{flag} {path}: figures are written as PNG; give a name ending in .png")
    check_new_file(path, force=force, what=flag)


def add_process_flags(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--nproc", type=int, help=help_text)


def wants_processes(args: argparse.Namespace) -> bool:
    """Whether ``--nproc`` asks for more than one process (checked: at least 1)."""
    if args.nproc is not None and args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    return bool(args.nproc and args.nproc > 1)


def relaunch_distributed(argv: Sequence[str], nproc: int) -> int:
    """Run this same command in ``nproc`` processes through torch.distributed.run."""
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


def run_target(
    args: argparse.Namespace,
    load: Callable[..., Any],
    load_stored: Callable[[Path], Any] | None = None,
) -> tuple[Any, Path, bool]:
    """(config, run directory, resuming?) of ``train`` / ``llm-distill``: ``--resume RUN``
    reads the run's own config.yaml (with ``load_stored``, which treats it as someone
    else's, when given); else CONFIG with overrides, into ``--out`` or output.dir/output.name
    (default ``<config>-seed<seed>``)."""
    from bdkd.engine.lifecycle import check_resumable
    from bdkd.engine.rundir import default_run_dir

    if args.resume:
        run_dir = Path(args.resume)
        if args.config or args.overrides:
            raise ValueError(
                "--resume takes the run's own config.yaml; give no CONFIG or overrides with it"
            )
        check_resumable(run_dir)
        return (load_stored or load)(run_dir / "config.yaml"), run_dir, True
    if not args.config:
        raise ValueError("give a CONFIG file or name (or --resume RUN_DIR)")
    from bdkd.shipped import resolve_config

    args.config = str(resolve_config(args.config))
    cfg = load(args.config, args.overrides)
    run_dir = (
        Path(args.out)
        if args.out
        else default_run_dir(args.config, cfg.output.dir, cfg.output.name, cfg.train.seed)
    )
    return cfg, run_dir, False


def add_run_flags(parser: argparse.ArgumentParser, nproc_help: str) -> None:
    """CONFIG, overrides, --resume, --force, --out and --nproc of a training command."""
    parser.add_argument("config", nargs="?", help="the YAML config")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE overrides (dotted keys)")
    parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a killed run from its last checkpoint"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing run directory made by bdkd (after the new run has validated)",
    )
    parser.add_argument("--out", help="the run directory (overrides output.dir/output.name)")
    add_trust_flag(parser)
    add_process_flags(parser, nproc_help)


def add_trust_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help="let a config read back from a run directory or checkpoint name code by import "
        "path (never without it; also BDKD_TRUST_CODE=1)",
    )
