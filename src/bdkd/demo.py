"""`bdkd demo`: the main job on real data in a few minutes.

On Fashion-MNIST (installing the Debian package when it is missing and that is allowed;
otherwise on scikit-learn's digits, saying so) it trains a teacher, then a student from
scratch, with KD, with DML and with BD-KD, using the committed configs in
``configs/fashion_mnist`` (or ``configs/digits``), prints one table and writes a report with
a reliability figure of the students.
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


def find_configs(dataset: str) -> Path:
    """``configs/<dataset>`` of the working directory or of the source checkout."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base / "configs" / dataset
        if (candidate / "teacher.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"configs/{dataset}/ not found: run the demo from a checkout of bdkd (it uses the committed configs)"
    )


def run_demo(
    out: Path | None = None,
    *,
    allow_install: bool = True,
    force: bool = False,
    overrides: list[str] | None = None,
) -> Path:
    """Train the demo's runs under ``out`` and write its report; returns the directory."""
    from bdkd.engine import Trainer
    from bdkd.report import compare_runs, load_summary, markdown_table

    dataset = "fashion_mnist"
    if not fashion_mnist_present():
        if not (allow_install and install_fashion_mnist()):
            dataset = "digits"
            print(
                "demo: Fashion-MNIST is not available, so the demo runs on scikit-learn's digits instead",
                file=sys.stderr,
            )
    configs = find_configs(dataset)
    out = Path(out) if out else Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    check_run_dir(out, force=force, kind="demo", protect=[configs])
    create_run_dir(out, force=force, kind="demo", protect=[configs], subdirs=())
    started = time.perf_counter()
    extra = list(overrides or [])
    runs: dict[str, Path] = {}
    for name in ("teacher", *STUDENT_METHODS):
        run = out / name
        cfg_overrides = [*extra, "train.progress=false"]
        if name == "kd":
            cfg_overrides.append(f"networks.teacher.checkpoint={runs['teacher']}")
        cfg = load_config(configs / f"{name}.yaml", cfg_overrides)
        print(
            f"demo: training {name} ({cfg.method_name} on {dataset}, {cfg.train.epochs} epochs) -> {run}",
            file=sys.stderr,
            flush=True,
        )
        Trainer(cfg, run, force=force).fit()
        runs[name] = run

    teacher = load_summary(runs["teacher"])
    rows = {f"teacher ({teacher['models']['student']})": teacher["results"]["student"]}
    for name in STUDENT_METHODS:
        s = load_summary(runs[name])
        rows[f"{LABELS[name]} ({s['models'][s['deployed']]})"] = s["results"][s["deployed"]]
    figure = out / "reliability.png"
    compare_runs([runs[m] for m in STUDENT_METHODS], figure)
    minutes = (time.perf_counter() - started) / 60
    table = markdown_table(rows, first="model")
    text = "\n".join(
        [
            f"# bdkd demo on {dataset}",
            "",
            f"Configs: `{configs.relative_to(configs.parents[1]) if len(configs.parents) > 1 else configs}/` "
            f"(teacher, scratch, kd, dml, bdkd); seed {teacher['seed']}, {teacher['epochs']} epochs each; "
            f"test split, last epoch, ECE with {teacher['bins']} bins, temperature fitted on val. "
            f"Took {minutes:.1f} minutes. One seed: differences smaller than a seed-to-seed spread "
            "mean nothing (see docs/results for several seeds).",
            "",
            table,
            "",
            "![reliability diagrams of the students](reliability.png)",
            "",
        ]
    )
    write_text(out / "report.md", text)
    print(table)
    print(
        f"\ndemo: report written to {out / 'report.md'}, reliability figure to {figure} ({minutes:.1f} min)"
    )
    return out
