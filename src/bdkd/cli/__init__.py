"""The ``bdkd`` command line: one module per group of commands, each with its parser beside
its implementation (``register(sub)`` adds them); :func:`main` is the console script."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import bdkd
from bdkd.cli import calibrate, configs, export, llm, misc, train, tune

COMMAND_MODULES = (misc, calibrate, train, tune, llm, export, configs)
"""In the order ``bdkd --help`` lists them."""

TAKES_OVERRIDES = ("train", "tune", "demo", "llm-distill", "llm-cache-teacher", "config")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``bdkd`` with one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog="bdkd",
        description="Knowledge distillation for accurate and well-calibrated compact models.",
    )
    parser.add_argument("--version", action="version", version=f"bdkd {bdkd.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    OSError,
    ImportError,
    RuntimeError,
)
"""Shown as one line ``bdkd COMMAND: error: ...`` (``BDKD_TRACEBACK=1`` shows tracebacks)."""


THIRD_PARTY = (
    "transformers",
    "torch",
    "datasets",
    "huggingface_hub",
    "mlflow",
    "wandb",
    "peft",
    "trl",
    "accelerate",
    "onnx",
    "onnxscript",
)


def quiet_third_party() -> None:
    """Keep other libraries' progress bars, banners and FutureWarnings out of bdkd's output
    (bdkd prints its own progress line; BDKD_TRACEBACK=1 leaves everything on)."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TQDM_DISABLE", "1")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        for module in THIRD_PARTY:
            warnings.filterwarnings("ignore", category=category, module=rf"{module}(\.|$)")
    for name in ("mlflow", "alembic", "wandb", "transformers", "datasets", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bdkd`` console script."""
    if not os.environ.get("BDKD_TRACEBACK"):
        quiet_third_party()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    args.argv = argv
    if getattr(args, "command", None) in TAKES_OVERRIDES:
        overrides = [a for a in extra if "=" in a and not a.startswith("-")]
        args.overrides = [*args.overrides, *overrides]
        extra = [a for a in extra if a not in overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    if os.environ.get("BDKD_TRACEBACK"):
        return int(args.func(args))
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"bdkd {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output went away (bdkd configs | head)
        sys.stderr.close()
        return 0
    except Exception as err:
        if not isinstance(err, EXPECTED_ERRORS):
            raise
        text = " ".join(str(err).split()) or type(err).__name__
        if type(err) is RuntimeError:  # torch's own errors: say how to see where
            text += " (set BDKD_TRACEBACK=1 to see where)"
        print(f"bdkd {args.command}: error: {text}", file=sys.stderr)
        return 2


__all__ = ["EXPECTED_ERRORS", "build_parser", "main"]
