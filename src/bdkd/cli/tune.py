"""`bdkd tune`: every method with the same budget on the user's config, chosen on validation."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def cmd_tune(args: argparse.Namespace) -> int:
    from bdkd.config import apply_overrides, read_yaml
    from bdkd.shipped import resolve_config
    from bdkd.tune import TuneOptions, run_tune

    path = resolve_config(args.config)
    data = apply_overrides(read_yaml(path), args.overrides)
    spaces = read_yaml(Path(args.space)) if args.space else None
    out = Path(args.out) if args.out else Path("runs") / f"tune-{path.stem}"
    opts = TuneOptions(
        methods=_list(args.methods),
        out=out,
        budget=args.budget,
        seeds=args.seeds,
        select=_list(args.select),
        search=args.search,
        backend=args.backend,
        address=args.address,
        max_concurrent=args.max_concurrent,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        teacher_cache=not args.no_teacher_cache,
        spaces=spaces,
        command="bdkd " + " ".join(shlex.quote(a) for a in args.argv),
    )
    data = run_tune(
        data,
        opts,
        log=lambda line: print(line, file=sys.stderr, flush=True),
        train=not args.report_only,
    )
    select = opts.select[0]
    print(data["reading"][select])
    print(f"report written to {out / 'report.md'} (report.json, reliability.png)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="which method gives the best (calibrated) student on my data: a fair sweep",
        description="Runs the methods benchmark's protocol on CONFIG (a file or a shipped "
        "config's name; its networks 'teacher' and 'student', its data and schedule): every "
        "method gets --budget settings from its search space, all trained on seed 0 and chosen "
        "on the validation split by --select; the chosen settings are trained on seeds "
        "1..--seeds and compared on the test split with paired intervals (Holm-adjusted) "
        "against the best method and the student trained alone. Trials are ordinary runs "
        "under --out; rerunning the same command continues a stopped tune.",
    )
    p.add_argument("config", help="a config file or a shipped config's name (bdkd configs)")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE overrides of the config")
    p.add_argument(
        "--methods",
        required=True,
        help="comma-separated methods (bdkd methods) or variants named in --space; the student "
        "trained alone is always added",
    )
    p.add_argument("--budget", type=int, default=6, help="settings per method (default 6)")
    p.add_argument("--seeds", type=int, default=5, help="report seeds 1..N (default 5)")
    p.add_argument(
        "--select",
        default="top1",
        help="validation metric(s) that choose, comma-separated, the first the main one: "
        "top1, nll, ece, aurc, miou (default top1)",
    )
    p.add_argument(
        "--search",
        default="random",
        choices=("random", "tpe"),
        help="random: the whole grid when it has --budget settings, else a seeded sample; "
        "tpe: Optuna's TPE, one setting after another (pip install 'bdkd[tune]')",
    )
    p.add_argument("--space", help="a YAML file of search spaces (docs/tune.md)")
    p.add_argument("--out", help="the tune directory (default runs/tune-<config>)")
    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "local", "ray"),
        help="auto: Ray when installed, else a local process pool",
    )
    p.add_argument("--address", help="a Ray cluster to join (auto, HOST:PORT, ray://HOST:PORT)")
    p.add_argument("--max-concurrent", type=int, default=2, help="trials at once (default 2)")
    p.add_argument("--cpus-per-trial", type=float, default=1, help="CPU threads per trial")
    p.add_argument("--gpus-per-trial", type=float, default=0, help="GPUs per trial (Ray)")
    p.add_argument(
        "--no-teacher-cache",
        action="store_true",
        help="recompute the frozen teacher's logits in every offline trial",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: the report of the runs --out holds so far",
    )
    p.set_defaults(func=cmd_tune)
