"""`bdkd demo`: the main job on real data in a few minutes.

On Fashion-MNIST (installing the Debian package when it is missing and that is allowed;
otherwise on scikit-learn's digits, saying so) it trains a teacher, a student from scratch,
with KD, with DML and with BD-KD, two runs at a time, using the committed configs in
``configs/demo`` (regime 1 of the methods benchmark, where a student trained alone is
over-confident; or ``configs/digits``), prints one table and a one-line reading, and writes
a report that opens with the students' reliability diagrams.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bdkd.config import load_config
from bdkd.data.sources import FASHION_ROOT
from bdkd.engine.rundir import check_run_dir, create_run_dir
from bdkd.files import write_text

STUDENT_METHODS = ("scratch", "kd", "dml", "bdkd")
LABELS = {"scratch": "student from scratch", "kd": "KD", "dml": "DML", "bdkd": "BD-KD"}


def divergence_table() -> str:
    """A table of every divergence for a few example teacher/student logit pairs."""
    import torch

    from bdkd import divergences as D

    teacher = torch.tensor([[4.0, 1.0, 0.0, -1.0, -2.0]])
    students = {
        "same as teacher": teacher.clone(),
        "over-confident": torch.tensor([[9.0, 1.0, 0.0, -1.0, -2.0]]),
        "under-confident": torch.tensor([[1.0, 0.5, 0.0, -0.5, -1.0]]),
        "wrong class": torch.tensor([[0.0, 4.0, 1.0, -1.0, -2.0]]),
    }
    columns = {
        "FKL": D.forward_kl,
        "RKL": D.reverse_kl,
        "JSD": D.js_divergence,
        "SFKL": D.skew_forward_kl,
        "SRKL": D.skew_reverse_kl,
        "TV": D.total_variation,
        "AB(.8,.3)": lambda s, t: D.ab_divergence(s, t, alpha=0.8, beta=0.3),
        "H(q)": lambda s, t: D.entropy(s),
    }
    head = f"| {'student vs teacher':<18} | " + " | ".join(f"{c:>9}" for c in columns) + " |"
    rule = "|" + "-" * 20 + "|" + "|".join("-" * 11 for _ in columns) + "|"
    lines = [head, rule]
    for name, student in students.items():
        cells = " | ".join(f"{fn(student, teacher).item():>9.4f}" for fn in columns.values())
        lines.append(f"| {name:<18} | {cells} |")
    return "\n".join(lines)


def fashion_mnist_present(root: str = FASHION_ROOT) -> bool:
    """Whether the four Fashion-MNIST IDX files are where the Debian package puts them."""
    stems = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]
    return all(any((Path(root) / f"{s}{ext}").is_file() for ext in ("", ".gz")) for s in stems)


def install_fashion_mnist() -> bool:
    """``apt-get install dataset-fashion-mnist`` when running as root with apt; True on success."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(
            "demo: Fashion-MNIST is missing and cannot be installed here (needs root and apt-get)",
            file=sys.stderr,
        )
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in (
        ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"],
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"],
    ):
        print(f"demo: running {' '.join(attempt)}", file=sys.stderr, flush=True)
        done = subprocess.run(
            attempt, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        if attempt[1] == "install" and done.returncode == 0 and fashion_mnist_present():
            return True
    print("demo: installing dataset-fashion-mnist failed", file=sys.stderr)
    return False


def find_configs(name: str) -> Path:
    """The shipped configs ``<name>/`` (package data: a checkout's ``configs/`` and an
    installed bdkd have the same)."""
    from bdkd.shipped import CONFIG_DIR

    candidate = CONFIG_DIR / name
    if not (candidate / "teacher.yaml").is_file():
        raise FileNotFoundError(f"{candidate}: the demo's configs are missing; reinstall bdkd")
    return candidate


def _train_one(config: str, overrides: list[str], run: str, force: bool) -> dict:
    """Train one config into ``run`` (in a worker process, its per-epoch lines kept quiet:
    the demo prints one line per finished run); its summary."""
    import contextlib
    import io

    from bdkd.engine import Trainer

    with contextlib.redirect_stderr(io.StringIO()):
        return Trainer(load_config(config, overrides), Path(run), force=force).fit()


def reading(rows: dict[str, dict[str, float]]) -> str:
    """One line saying what the demo's table shows: BD-KD's student against the student
    trained alone and DML's, in ECE and top-1, and whether it is the best calibrated."""
    b, s, d = rows["bdkd"], rows["scratch"], rows["dml"]

    def pct(r: dict[str, float], key: str) -> str:
        return f"{100 * r[key]:.1f} %"

    line = (
        f"BD-KD's student: ECE {pct(b, 'ece')} vs {pct(s, 'ece')} trained alone and "
        f"{pct(d, 'ece')} with DML, at top-1 {pct(b, 'accuracy')} / {pct(s, 'accuracy')} / "
        f"{pct(d, 'accuracy')}"
    )
    best = min(rows, key=lambda m: rows[m]["ece"])
    if best == "bdkd":
        line += "; the best calibrated student here."
    else:
        line += f"; on this seed {LABELS[best]}'s student is better calibrated."
    return line + " One seed: docs/results/fashion_mnist.md has several, with intervals."


def _plan(
    configs: Path, out: Path, overrides: list[str] | None, workers: int
) -> dict[str, list[str]]:
    """Every run's overrides, each config validated with them before anything is written."""
    plan: dict[str, list[str]] = {}
    for name in ("teacher", *STUDENT_METHODS):
        extra = [*(overrides or []), "train.progress=false"]
        if workers > 1:
            extra.append("train.threads=1")
        if name == "kd":
            extra.append(f"networks.teacher.checkpoint={out / 'teacher'}")
        load_config(configs / f"{name}.yaml", extra)
        plan[name] = extra
    return plan


def _train_all(
    configs: Path, plan: dict[str, list[str]], runs: dict[str, Path], workers: int, force: bool
) -> None:
    """Train every run, ``workers`` at a time in spawned processes; KD starts when the
    teacher is done. A failed run stops the demo with its error."""
    import concurrent.futures
    import multiprocessing

    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:

        def submit(name: str) -> concurrent.futures.Future:
            return pool.submit(
                _train_one, str(configs / f"{name}.yaml"), plan[name], str(runs[name]), force
            )

        pending = {submit(n): n for n in ("teacher", "dml", "bdkd", "scratch")}
        while pending:
            done, _ = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in done:
                name = pending.pop(future)
                summary = future.result()
                r = summary["results"][summary["deployed"]]
                print(
                    f"demo: {name} done after {time.perf_counter() - started:.0f} s "
                    f"(top-1 {100 * r['accuracy']:.2f} %, ECE {100 * r['ece']:.2f} %)",
                    file=sys.stderr,
                    flush=True,
                )
                if name == "teacher":
                    pending[submit("kd")] = "kd"


def _write_report(
    out: Path, runs: dict[str, Path], dataset: str, configs: Path, minutes: float
) -> tuple[str, str]:
    """report.md and reliability.png of the demo; returns (table, reading)."""
    from bdkd.report import compare_runs, load_summary, markdown_table

    teacher = load_summary(runs["teacher"])
    t_net = teacher["deployed"]
    rows = {f"teacher ({teacher['models'][t_net]})": teacher["results"][t_net]}
    students: dict[str, dict[str, float]] = {}
    for name in STUDENT_METHODS:
        s = load_summary(runs[name])
        students[name] = s["results"][s["deployed"]]
        rows[f"{LABELS[name]} ({s['models'][s['deployed']]})"] = students[name]
    compare_runs([runs[m] for m in STUDENT_METHODS], out / "reliability.png")
    table = markdown_table(rows, first="model")
    line = reading(students)
    where = configs.relative_to(configs.parents[1]) if len(configs.parents) > 1 else configs
    text = "\n".join(
        [
            f"# bdkd demo on {dataset}",
            "",
            "![reliability diagrams of the students](reliability.png)",
            "",
            f"**{line}**",
            "",
            table,
            "",
            f"Configs: `{where}/` (teacher, scratch, kd, dml, bdkd); seed {teacher['seed']}, "
            f"{teacher['epochs']} epochs each; test split, last epoch, ECE with "
            f"{teacher['bins']} bins, temperature fitted on val. Training took {minutes:.1f} "
            "minutes.",
            "",
        ]
    )
    write_text(out / "report.md", text)
    return table, line


def run_demo(
    out: Path | None = None,
    *,
    allow_install: bool = True,
    force: bool = False,
    overrides: list[str] | None = None,
    workers: int | None = None,
    dataset: str = "fashion_mnist",
) -> Path:
    """Train the demo's runs under ``out`` (``workers`` at a time, default one per CPU core
    up to 2) and write its report; returns the directory. Every config is validated before
    anything is trained. ``dataset="digits"`` runs the quick version (configs/digits, a
    minute); Fashion-MNIST, when missing and not installable, falls back to it."""
    if dataset not in ("fashion_mnist", "digits"):
        raise ValueError(f"the demo runs on fashion_mnist or digits, not {dataset!r}")
    config_set = "demo" if dataset == "fashion_mnist" else "digits"
    if dataset == "fashion_mnist" and not fashion_mnist_present():
        if not (allow_install and install_fashion_mnist()):
            dataset, config_set = "digits", "digits"
            print(
                "demo: Fashion-MNIST is not available, so the demo runs on scikit-learn's digits instead",
                file=sys.stderr,
            )
    configs = find_configs(config_set)
    out = Path(out) if out else Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    plan = _plan(configs, out, overrides, workers)
    check_run_dir(out, force=force, kind="demo", protect=[configs])
    create_run_dir(out, force=force, kind="demo", protect=[configs], subdirs=())
    started = time.perf_counter()
    runs = {name: out / name for name in ("teacher", *STUDENT_METHODS)}
    print(
        f"demo: {dataset}, configs {configs}; training teacher, {', '.join(STUDENT_METHODS)} "
        f"({workers} at a time) under {out}",
        file=sys.stderr,
        flush=True,
    )
    _train_all(configs, plan, runs, workers, force)
    minutes = (time.perf_counter() - started) / 60
    table, line = _write_report(out, runs, dataset, configs, minutes)
    print(table)
    print(f"\n{line}")
    print(
        f"\ndemo: report written to {out / 'report.md'}, reliability figure to "
        f"{out / 'reliability.png'} ({minutes:.1f} min)"
    )
    return out
