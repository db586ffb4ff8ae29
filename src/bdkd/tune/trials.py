"""Trials: the ordinary bdkd runs a tune is made of, and how one runs.

A trial is a run directory and a complete config. Its directory is named by a hash of that
config (``seed1/kd-3f9c2a1b``), so a finished run is reused only while its config is
unchanged: an edited config, space or schedule trains afresh beside the stale run. A trial
runs only once every run it depends on (its seed's teacher, the first offline trial that
fills the seed's shared teacher-logit cache) has finished; a killed one resumes from its
last checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bdkd.distillers import method_cacheable
from bdkd.files import make_dirs
from bdkd.tune.spaces import Space

__all__ = [
    "Trial",
    "config_hash",
    "finished",
    "is_llm_config",
    "method_trial",
    "run_trial",
    "teacher_trial",
    "token_trial",
]


@dataclass
class Trial:
    """One run of a tune: ``role`` is ``teacher``, ``sweep`` (selection seed) or ``report``."""

    dir: str
    config: dict[str, Any]
    seed: int
    role: str
    entry: str = ""
    setting: dict[str, Any] = field(default_factory=dict)
    deps: list[str] = field(default_factory=list)
    offline: bool = False

    def spec(self, threads: int) -> dict[str, Any]:
        """What a worker needs (plain data, picklable and JSON-able); the trial's output
        goes to ``logs/seed<N>-<name>.log`` beside the seeds' directories."""
        run = Path(self.dir)
        log = run.parents[1] / "logs" / f"{run.parent.name}-{run.name}.log"
        return {"dir": self.dir, "config": self.config, "threads": threads, "log": str(log)}


def is_llm_config(config: Mapping[str, Any]) -> bool:
    """An ``llm-distill`` config (sections teacher, student, objective) or an image one."""
    return any(k in config for k in ("teacher", "student", "objective"))


def config_hash(config: Mapping[str, Any], out: Path | None = None) -> str:
    """Eight hex digits of the config's canonical JSON (paths inside ``out`` written
    relative to it, so that a moved tune directory keeps its runs)."""
    text = json.dumps(config, sort_keys=True, default=str)
    if out is not None:
        text = text.replace(str(out), "<out>")
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def finished(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "summary.json").is_file()


def _base(config: Mapping[str, Any], seed: int) -> dict[str, Any]:
    cfg = copy.deepcopy(dict(config))
    cfg["train"] = {**cfg.get("train", {}), "seed": seed, "progress": False}
    cfg.pop("base", None)
    return cfg


def _pretrained(net: Mapping[str, Any]) -> bool:
    return bool(net.get("checkpoint") or net.get("weights"))


def teacher_trial(out: Path, config: Mapping[str, Any], seed: int) -> Trial | None:
    """The teacher of ``seed`` trained alone, when offline methods need one (None when the
    config's teacher already has trained weights)."""
    teacher = config["networks"]["teacher"]
    if _pretrained(teacher):
        return None
    cfg = _base(config, seed)
    cfg["method"] = {"name": "scratch"}
    cfg["networks"] = {"teacher": copy.deepcopy(teacher)}
    cfg["train"].pop("teacher_cache", None)
    return Trial(
        str(out / f"seed{seed}" / f"teacher-{config_hash(cfg, out)}"), cfg, seed, "teacher"
    )


def method_trial(
    out: Path,
    config: Mapping[str, Any],
    space: Space,
    setting: Mapping[str, Any],
    seed: int,
    role: str,
    *,
    teacher: Trial | None,
    cache: bool,
) -> Trial:
    """One setting of one entry on one seed. Offline methods distil from the seed's teacher
    (``teacher``'s run, or the config's trained teacher) and, with ``cache``, share one
    teacher-logit cache per seed and teacher."""
    cfg = _base(config, seed)
    cfg["method"] = {"name": space.method, **copy.deepcopy(dict(setting))}
    nets = config["networks"]
    deps: list[str] = []
    if space.kind in ("scratch", "self"):
        cfg["networks"] = {"student": copy.deepcopy(nets["student"])}
    elif space.kind == "online":
        cfg["networks"] = {k: copy.deepcopy(nets[k]) for k in ("teacher", "student")}
    else:
        t = copy.deepcopy(nets["teacher"])
        if teacher is not None:
            t = {**t, "checkpoint": teacher.dir}
            deps.append(teacher.dir)
        cfg["networks"] = {"teacher": t, "student": copy.deepcopy(nets["student"])}
    cfg["train"].pop("teacher_cache", None)
    cache = cache and space.kind == "offline" and method_cacheable(space.method)
    if cache:
        key = config_hash({"teacher": cfg["networks"]["teacher"], "data": cfg.get("data")}, out)
        cfg["train"]["teacher_cache"] = str(out / f"seed{seed}" / f"teacher-cache-{key}")
        cfg["train"].setdefault("teacher_cache_dtype", "fp32")
    name = f"{space.name}-{config_hash(cfg, out)}"
    return Trial(
        str(out / f"seed{seed}" / name),
        cfg,
        seed,
        role,
        entry=space.name,
        setting=dict(setting),
        deps=deps,
        offline=cache,
    )


OBJECTIVE_TOP = ("temperature", "ce_weight", "distill_weight")
"""Keys of an ``llm-distill`` objective set beside its name; the others go to ``params``."""


def token_trial(
    out: Path,
    config: Mapping[str, Any],
    space: Space,
    setting: Mapping[str, Any],
    seed: int,
    role: str,
) -> Trial:
    """One setting of one token objective on one seed (an ``llm-distill`` run; its student
    is not saved: rerun the chosen setting with ``llm-distill`` to keep one). ``scratch`` is
    the student on next-token cross-entropy alone."""
    cfg = _base(config, seed)
    if space.kind == "scratch":
        objective: dict[str, Any] = {"name": "forward_kl", "ce_weight": 1.0, "distill_weight": 0.0}
    else:
        kept = {k: v for k, v in dict(config.get("objective") or {}).items() if k in OBJECTIVE_TOP}
        objective = {**kept, "name": space.method}
        objective.update({k: v for k, v in setting.items() if k in OBJECTIVE_TOP})
        params = {k: v for k, v in setting.items() if k not in OBJECTIVE_TOP}
        if params:
            objective["params"] = copy.deepcopy(params)
    cfg["objective"] = objective
    cfg["output"] = {**cfg.get("output", {}), "save_student": False}
    name = f"{space.name}-{config_hash(cfg, out)}"
    return Trial(str(out / f"seed{seed}" / name), cfg, seed, role, space.name, dict(setting))


def run_trial(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Train one trial in this process: reuse a finished run, resume a killed one. Returns
    its directory, wall-clock seconds and whether it was reused."""
    import torch

    from bdkd.config import validate
    from bdkd.engine import Trainer

    torch.set_num_threads(int(spec["threads"]))
    run_dir = Path(spec["dir"])
    if finished(run_dir):
        return {"dir": str(run_dir), "seconds": 0.0, "reused": True}
    data = copy.deepcopy(spec["config"])
    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    started = time.perf_counter()
    with _output_to(spec.get("log")):
        if is_llm_config(data):
            from bdkd.llm.config import validate_llm_config
            from bdkd.llm.trainer import run_llm_distill

            run_llm_distill(validate_llm_config(data), run_dir, resume=resume, force=not resume)
        else:
            Trainer(validate(data), run_dir, resume=resume, force=not resume).fit()
    return {"dir": str(run_dir), "seconds": time.perf_counter() - started, "reused": False}


@contextlib.contextmanager
def _output_to(path: str | None) -> Iterator[None]:
    """The trial's stdout and stderr appended to ``path`` (None: left alone)."""
    if path is None:
        yield
        return
    log = Path(path)
    make_dirs(log.parent)
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield
