"""Scale benchmarks: teacher-logit cache, torch.compile, DDP equivalence.

    python benchmarks/scale.py [--rounds 2]

- Offline KD epoch time with the teacher-logit cache against the live teacher and against
  student-only training (Fashion-MNIST, 10,000 images, cnn_large teacher, cnn_small student,
  batch 128), measured side by side in one process, alternating, median of --rounds.
- torch.compile speedup of a training epoch (cnn_medium alone; the compiled epoch is timed
  after a warm-up epoch that includes compilation).
- DDP equivalence: KD and BD-KD on digits in 1 process and in 2 gloo processes with the same
  global batch: the largest difference of any final weight and of any test metric.

Writes benchmarks/results/scale.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bdkd.config import validate  # noqa: E402
from bdkd.engine import Trainer  # noqa: E402

BASE = {
    "data": {"dataset": "fashion_mnist", "val_size": 1000, "train_size": 10000, "batch_size": 128},
    "schedule": {"name": "constant"},
    "train": {"epochs": 2, "progress": False, "device": "cpu"},
}


def epoch_seconds(trainer: Trainer, epoch: int = 0) -> float:
    start = time.perf_counter()
    trainer.train_epoch(epoch)
    return time.perf_counter() - start


def cache_rows(tmp: Path, rounds: int) -> list[str]:
    teacher = Trainer(
        validate(
            {**BASE, "method": {"name": "scratch"}, "networks": {"student": {"model": "cnn_large"}}}
        ),
        tmp / "teacher",
    )
    teacher._save(0)
    nets = {
        "teacher": {"model": "cnn_large", "checkpoint": str(tmp / "teacher")},
        "student": {"model": "cnn_small"},
    }
    live = Trainer(validate({**BASE, "method": {"name": "kd"}, "networks": nets}), tmp / "live")
    cached_cfg = {**BASE, "method": {"name": "kd"}, "networks": nets}
    cached_cfg["train"] = {**BASE["train"], "teacher_cache": str(tmp / "cache")}
    filler = Trainer(validate(cached_cfg), tmp / "filler")
    epoch_seconds(filler, 0)  # warm-up (fills epoch 0)
    fill = epoch_seconds(filler, 1)  # live teacher + writing the cache, warm
    cached = Trainer(validate(cached_cfg), tmp / "cached")  # reads the filled epochs
    alone = Trainer(
        validate(
            {**BASE, "method": {"name": "scratch"}, "networks": {"student": {"model": "cnn_small"}}}
        ),
        tmp / "alone",
    )
    times: dict[str, list[float]] = {"live": [], "cached": [], "alone": []}
    for r in range(rounds + 1):
        for name, trainer in (("live", live), ("cached", cached), ("alone", alone)):
            t = epoch_seconds(trainer, 0)
            if r:
                times[name].append(t)
    m = {k: statistics.median(v) for k, v in times.items()}
    return [
        "## Teacher-logit cache (offline KD)",
        "",
        "| mode | s / epoch | vs live teacher |",
        "|---|---|---|",
        f"| live teacher (cnn_large) | {m['live']:.2f} | 1.00 |",
        f"| first run, live teacher + writing the cache (fp16) | {fill:.2f} | {fill / m['live']:.2f} |",
        f"| cached teacher logits | {m['cached']:.2f} | {m['cached'] / m['live']:.2f} |",
        f"| student alone (no distillation) | {m['alone']:.2f} | {m['alone'] / m['live']:.2f} |",
        "",
        f"The cached epoch costs {m['cached'] / m['alone']:.2f}x a student-only epoch.",
        "",
    ]


def compile_rows(tmp: Path, rounds: int) -> list[str]:
    def make(compiled: bool, name: str) -> Trainer:
        cfg = {
            **BASE,
            "method": {"name": "scratch"},
            "networks": {"student": {"model": "cnn_medium"}},
        }
        cfg["train"] = {**BASE["train"], "compile": compiled}
        return Trainer(validate(cfg), tmp / name)

    eager, compiled = make(False, "eager"), make(True, "compiled")
    start = time.perf_counter()
    compiled.train_epoch(0)
    first = time.perf_counter() - start
    eager.train_epoch(0)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(rounds):
        times["eager"].append(epoch_seconds(eager, 1))
        times["compiled"].append(epoch_seconds(compiled, 1))
    e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
    return [
        "## torch.compile (cnn_medium alone, Fashion-MNIST 10,000 images)",
        "",
        "| mode | s / epoch | speedup |",
        "|---|---|---|",
        f"| eager | {e:.2f} | 1.00 |",
        f"| compiled (after warm-up) | {c:.2f} | {e / c:.2f} |",
        "",
        f"The first compiled epoch, compilation included, took {first:.1f} s.",
        "",
    ]


def ddp_rows(tmp: Path) -> list[str]:
    configs = ROOT / "configs" / "digits"
    same = [
        "train.epochs=2",
        "train.progress=false",
        "data.train_size=1280",
        "data.batch_size=128",
        "train.threads=1",
    ]
    bdkd = [sys.executable, "-m", "bdkd"]
    subprocess.run(
        [
            *bdkd,
            "train",
            str(configs / "teacher.yaml"),
            "train.epochs=2",
            "train.progress=false",
            "--out",
            str(tmp / "dt"),
        ],
        check=True,
        capture_output=True,
    )
    rows = [
        "## DDP equivalence (digits, 2 gloo processes vs 1, same global batch 128)",
        "",
        "| method | 1 process s | 2 processes s | max weight difference | max test-metric difference |",
        "|---|---|---|---|---|",
    ]
    for method in ("kd", "bdkd"):
        extra = [f"networks.teacher.checkpoint={tmp / 'dt'}"] if method == "kd" else []
        runs = {}
        for n in (1, 2):
            out = tmp / f"{method}{n}"
            start = time.perf_counter()
            subprocess.run(
                [
                    *bdkd,
                    "train",
                    str(configs / f"{method}.yaml"),
                    *same,
                    *extra,
                    "--out",
                    str(out),
                    "--nproc",
                    str(n),
                ],
                check=True,
                capture_output=True,
            )
            runs[n] = (out, time.perf_counter() - start)
        wa = torch.load(runs[1][0] / "checkpoints" / "last.pt", weights_only=True)["networks"]
        wb = torch.load(runs[2][0] / "checkpoints" / "last.pt", weights_only=True)["networks"]
        wdiff = max(
            float((wa[n][k].float() - wb[n][k].float()).abs().max()) for n in wa for k in wa[n]
        )
        ra = json.loads((runs[1][0] / "summary.json").read_text())["results"]
        rb = json.loads((runs[2][0] / "summary.json").read_text())["results"]
        mdiff = max(
            abs(ra[n][k] - rb[n][k]) for n in ra for k in ("accuracy", "ece", "nll", "brier")
        )
        rows.append(
            f"| {method} | {runs[1][1]:.1f} | {runs[2][1]:.1f} | {wdiff:.2e} | {mdiff:.2e} |"
        )
    rows += [
        "",
        "Wall-clock includes start-up; on 2 CPU cores two processes bring no speed, only the equivalence is the point here.",
        "",
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    lines = [
        "# Scale: cache, compile, DDP",
        "",
        f"Generated by `python benchmarks/scale.py --rounds {args.rounds}`. torch {torch.__version__}, "
        f"{platform.machine()}, CPU, {torch.get_num_threads()} threads. Times are medians of alternating rounds in one process.",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lines += cache_rows(tmp, args.rounds)
        lines += compile_rows(tmp, args.rounds)
        lines += ddp_rows(tmp)
    out = ROOT / "benchmarks" / "results" / "scale.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
