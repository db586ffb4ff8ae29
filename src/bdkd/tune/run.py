"""The tune driver: plan the trials, run them on a backend, choose, report.

Protocol (the methods benchmark's, on the user's config): every entry gets ``budget``
settings from its space, all trained on the selection seed (0) and one chosen per
``--select`` metric on that seed's validation split; the chosen settings are trained on the
report seeds 1..``seeds``, the only runs the test tables show. The student trained alone
(``scratch``) is always an entry: every comparison's reference. Offline methods distil
from a teacher trained on each seed (or the config's trained teacher), their teacher
logits cached once per seed.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bdkd.files import make_dirs, write_json
from bdkd.tune.backends import TuneError, execute, make_backend
from bdkd.tune.select import SELECT, Sweep, choose, test_metrics, val_metrics
from bdkd.tune.spaces import Space, SpaceError, read_spaces, resolve_methods
from bdkd.tune.trials import (
    Trial,
    finished,
    is_llm_config,
    method_trial,
    teacher_trial,
    token_trial,
)

__all__ = ["SELECTION_SEED", "TuneOptions", "plan_check", "run_tune"]

SELECTION_SEED = 0
MARKER = "tune.json"


@dataclass
class TuneOptions:
    """Everything ``bdkd tune`` takes besides the config."""

    methods: list[str]
    out: Path
    budget: int = 6
    seeds: int = 5
    select: list[str] = field(default_factory=lambda: ["top1"])
    search: str = "random"
    backend: str = "auto"
    address: str | None = None
    max_concurrent: int = 2
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    teacher_cache: bool = True
    spaces: Mapping[str, Any] | None = None
    command: str = ""


def _check_options(opts: TuneOptions) -> None:
    if not opts.methods:
        raise TuneError("tune: --methods names no method")
    if opts.budget < 1:
        raise TuneError(f"tune: --budget must be >= 1, got {opts.budget}")
    if opts.seeds < 1:
        raise TuneError(f"tune: --seeds must be >= 1 (the report seeds), got {opts.seeds}")
    if opts.search not in ("random", "tpe"):
        raise TuneError(f"tune: --search must be random or tpe, got {opts.search!r}")
    for s in opts.select:
        if s not in SELECT:
            raise TuneError(f"tune: --select must be among {sorted(SELECT)}, got {s!r}")
    if opts.search == "tpe":
        import importlib.util

        if importlib.util.find_spec("optuna") is None:
            raise TuneError("tune: --search tpe needs Optuna: pip install 'bdkd[tune]'")


def plan_check(config: Mapping[str, Any], opts: TuneOptions) -> list[Space]:
    """Everything that can be wrong before anything trains: options, spaces, budgets,
    the config (validated as ``bdkd train`` would) and the networks the methods need."""
    from bdkd.config import validate

    _check_options(opts)
    tokens = is_llm_config(config)
    try:
        spaces = resolve_methods(opts.methods, read_spaces(opts.spaces, tokens), tokens)
        for space in spaces:
            if space.kind != "scratch" and space.axes and space.size != 1:
                space.settings(opts.budget)
    except SpaceError as err:
        raise TuneError(str(err)) from None
    if tokens:
        from bdkd.llm.config import validate_llm_config

        llm = validate_llm_config(copy.deepcopy(dict(config)))
        if not llm.data.val_size and not llm.data.val_files:
            raise TuneError(
                "tune: config key 'data.val_size' is 0 and data.val_files is empty; a tune "
                "chooses on a validation split"
            )
        return spaces
    cfg = validate(copy.deepcopy(dict(config)))
    nets = set(cfg.networks)
    if "student" not in nets:
        raise TuneError(f"tune: the config needs a network named 'student' (it has {sorted(nets)})")
    needs_teacher = [s.name for s in spaces if s.kind in ("offline", "online")]
    if needs_teacher and "teacher" not in nets:
        raise TuneError(
            f"tune: {needs_teacher} need a network named 'teacher' (the config has {sorted(nets)})"
        )
    if not cfg.data.val_size:
        raise TuneError(
            "tune: config key 'data.val_size' is 0; a tune chooses on a validation split"
        )
    return spaces


class Tune:
    """The state of one tune: its entries' sweeps, what each chose, its trials."""

    def __init__(self, config: Mapping[str, Any], opts: TuneOptions, spaces: list[Space]):
        self.config, self.opts, self.spaces = dict(config), opts, spaces
        self.out = opts.out.resolve()
        self.report_seeds = list(range(1, opts.seeds + 1))
        self.tokens = is_llm_config(config)
        self.cache = opts.teacher_cache and not self.tokens and self._cacheable()
        offline = any(s.kind == "offline" for s in spaces)
        self.teachers: dict[int, Trial | None] = {
            seed: teacher_trial(self.out, config, seed) if offline else None
            for seed in [SELECTION_SEED, *self.report_seeds]
        }
        main = opts.select[0]
        self.sweeps = {s.name: Sweep(s, opts.budget, opts.search, main) for s in spaces}
        self.sweep_trials: dict[str, list[Trial]] = {}
        self.chosen: dict[str, dict[str, int]] = {}

    def _cacheable(self) -> bool:
        from bdkd.config import validate
        from bdkd.engine.build import load_splits
        from bdkd.engine.tasks import for_dataset

        cfg = validate(copy.deepcopy(self.config))
        return bool(for_dataset(load_splits(cfg).info).supports_logit_cache)

    def _trial(self, space: Space, setting: Mapping[str, Any], seed: int, role: str) -> Trial:
        if self.tokens:
            return token_trial(self.out, self.config, space, setting, seed, role)
        return method_trial(
            self.out,
            self.config,
            space,
            setting,
            seed,
            role,
            teacher=self.teachers.get(seed),
            cache=self.cache,
        )

    def initial(self) -> list[Trial]:
        return [t for t in self.teachers.values() if t is not None]

    def more(self) -> list[Trial]:
        """Trials that can be planned now: each entry's sweep so far, and, once a sweep has
        finished, its chosen settings on the report seeds."""
        out: list[Trial] = []
        for space in self.spaces:
            sweep = self.sweeps[space.name]
            trials = self.sweep_trials.get(space.name, [])
            results = {i: val_metrics(t.dir) for i, t in enumerate(trials) if finished(t.dir)}
            settings = sweep.settings(results)
            trials = [self._trial(space, s, SELECTION_SEED, "sweep") for s in settings]
            self.sweep_trials[space.name] = trials
            out += trials
            complete = len(trials) == len(sweep.fixed or range(self.opts.budget)) and all(
                finished(t.dir) for t in trials
            )
            if not complete:
                continue
            vals = [val_metrics(t.dir) for t in trials]
            self.chosen[space.name] = {s: choose(vals, s) for s in self.opts.select}
            for index in sorted(set(self.chosen[space.name].values())):
                for seed in self.report_seeds:
                    out.append(self._trial(space, trials[index].setting, seed, "report"))
        return out

    def collect(self) -> dict[str, Any]:
        """Every number the report shows, from the finished runs."""
        entries: dict[str, Any] = {}
        for space in self.spaces:
            trials = self.sweep_trials.get(space.name, [])
            sweep = [
                {
                    "setting": t.setting,
                    "dir": str(Path(t.dir).relative_to(self.out)),
                    "val": val_metrics(t.dir) if finished(t.dir) else None,
                }
                for t in trials
            ]
            entry: dict[str, Any] = {
                "label": "student alone" if space.kind == "scratch" else space.label,
                "method": space.method,
                "kind": space.kind,
                "space": space.text(),
                "sweep": sweep,
                "chosen": dict(self.chosen.get(space.name, {})),
                "test": {},
                "report_dirs": {},
            }
            for select, index in entry["chosen"].items():
                setting = trials[index].setting
                runs = {s: self._trial(space, setting, s, "report").dir for s in self.report_seeds}
                entry["test"][select] = {
                    str(s): test_metrics(d) for s, d in runs.items() if finished(d)
                }
                entry["report_dirs"][select] = {
                    str(s): str(Path(d).relative_to(self.out)) for s, d in runs.items()
                }
            entries[space.name] = entry
        teachers = {
            str(seed): test_metrics(t.dir)
            for seed, t in self.teachers.items()
            if t is not None and seed in self.report_seeds and finished(t.dir)
        }
        if self.tokens and "scratch" in entries:  # the frozen teacher, measured in each run
            for seed, d in entries["scratch"]["report_dirs"].get(self.opts.select[0], {}).items():
                if finished(self.out / d):
                    teachers[seed] = test_metrics(self.out / d, "teacher")
        return {
            "protocol": {
                "selection_seed": SELECTION_SEED,
                "report_seeds": self.report_seeds,
                "budget": self.opts.budget,
                "search": self.opts.search,
                "select": list(self.opts.select),
                "teacher_cache": self.cache,
                "task": "tokens" if self.tokens else "images",
                "command": self.opts.command,
            },
            "teacher": teachers,
            "entries": entries,
        }


def _check_out(out: Path) -> None:
    """``out`` is new, empty or an earlier tune's (never someone's other directory), and
    holds no link: nothing a tune writes may land outside it. Checked before any backend
    starts."""
    if out.is_symlink():
        raise TuneError(f"tune: --out {out} is a symbolic link; name a real directory")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise TuneError(
            f"tune: --out {out} holds files that are not a tune's; name a new directory"
        )
    if out.exists():
        for child in [*out.iterdir(), *(out / "logs").glob("*")]:
            if child.is_symlink():
                raise TuneError(
                    f"tune: {child} is a symbolic link; a tune writes only inside --out "
                    "(remove the link or name a new directory)"
                )


def run_tune(
    config: Mapping[str, Any],
    opts: TuneOptions,
    *,
    log: Callable[[str], None] = print,
    report: bool = True,
    train: bool = True,
) -> dict[str, Any]:
    """Run (or continue) a tune and write its report; returns the report's data.
    ``train=False`` trains nothing: the report of what has finished (an unfinished sweep
    shows as such)."""
    from bdkd.tune.report import write_report

    spaces = plan_check(config, opts)
    out = opts.out.resolve()
    started = time.perf_counter()
    if not train:
        if not (out / MARKER).is_file():
            raise TuneError(f"tune: --out {out} holds no tune (no {MARKER}); nothing to report")
        tune = Tune(config, opts, spaces)
        while True:  # plan what the finished runs allow, until nothing new
            before = {t.dir for ts in tune.sweep_trials.values() for t in ts}, dict(tune.chosen)
            tune.more()
            after = {t.dir for ts in tune.sweep_trials.values() for t in ts}, dict(tune.chosen)
            if after == before:
                break
        name = "none (report only)"
    else:
        _check_out(out)
        backend = make_backend(
            opts.backend,
            max_concurrent=opts.max_concurrent,
            cpus=opts.cpus_per_trial,
            gpus=opts.gpus_per_trial,
            address=opts.address,
        )
        name = backend.name
        try:
            make_dirs(out)
            tune = Tune(config, opts, spaces)
            write_json(
                out / MARKER,
                {
                    "config": tune.config,
                    "methods": [s.name for s in spaces],
                    "started": time.time(),
                },
            )

            def stamp(line: str) -> None:
                log(f"[{time.strftime('%H:%M:%S')}] {line}")

            stamp(f"tune on the {name} backend ({backend.slots} at a time) -> {out}")
            execute(backend, tune.initial(), tune.more, out / "ledger.jsonl", stamp)
        finally:
            backend.close()
    data = tune.collect()
    data["protocol"]["backend"] = name
    data["wall_seconds"] = time.perf_counter() - started
    data["trial_seconds"] = _ledger_seconds(out / "ledger.jsonl")
    return write_report(out, data) if report else data


def _ledger_seconds(ledger: Path) -> float:
    """The wall-clock of every trial this tune directory has trained (its ledger)."""
    if not ledger.is_file():
        return 0.0
    lines = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]
    return float(sum(r.get("seconds", 0.0) for r in lines))
