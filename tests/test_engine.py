"""The engine through the CLI on digits: every method, run directories, resume, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bdkd.cli import main
from bdkd.distillers import available_methods

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "digits"
FAST = ["train.epochs=1", "train.progress=false", "data.batch_size=128"]
SUMMARY_KEYS = {"accuracy", "ece", "adaptive_ece", "classwise_ece", "nll", "brier", "ece_after_ts"}


@pytest.fixture
def teacher_run(digits_teacher):
    return digits_teacher


def _check_run_dir(run: Path, method: str):
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "report.md",
        "reliability.png",
        "checkpoints/last.pt",
    ):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == method and summary["dataset"] == "digits"
    assert summary["seed"] == 0 and summary["epochs"] == 1
    for role, metrics in summary["results"].items():
        assert SUMMARY_KEYS <= set(metrics), role
        assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["nll"] > 0
    assert summary["deployed"] in summary["results"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["train"] and all(isinstance(v, float) for v in record["train"].values())
    assert set(record["val"]) == set(summary["results"])
    return summary, record


CONFIG_OF = {m: m for m in available_methods() if m != "offline"}


@pytest.mark.parametrize("method", sorted(CONFIG_OF))
def test_one_epoch_of_each_method_writes_a_complete_run(method, teacher_run, tmp_path, capsys):
    run = tmp_path / method
    args = ["train", str(CONFIGS / f"{CONFIG_OF[method]}.yaml"), *FAST, "--out", str(run)]
    if (CONFIGS / f"{method}.yaml").read_text().count("checkpoint:"):
        args.insert(2, f"networks.teacher.checkpoint={teacher_run}")
    assert main(args) == 0, capsys.readouterr().err
    summary, record = _check_run_dir(run, method)
    # every named loss term of every trained network is logged
    if method in ("dml", "kdcl", "bdkd"):
        assert {"teacher/ce", "student/ce"} <= set(record["train"])
    if method == "bdkd":
        assert {"student/bdkd", "teacher/reverse_kl", "student/reverse_heavier"} <= set(
            record["train"]
        )
    if method == "uskd":
        assert {"student/target", "student/non_target", "student/weak"} <= set(record["train"])


def test_existing_run_is_not_overwritten_without_force(teacher_run, tmp_path, capsys):
    run = tmp_path / "r"
    args = ["train", str(CONFIGS / "scratch.yaml"), *FAST, "--out", str(run)]
    assert main(args) == 0
    before = (run / "summary.json").read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (run / "summary.json").read_bytes() == before
    assert main([*args, "--force", "train.seed=1"]) == 0
    assert json.loads((run / "summary.json").read_text())["seed"] == 1


def test_offline_method_without_teacher_weights_is_an_error(tmp_path, capsys):
    args = [
        "train",
        str(CONFIGS / "kd.yaml"),
        *FAST,
        "networks.teacher.checkpoint=null",
        "--out",
        str(tmp_path / "x"),
    ]
    assert main(args) == 2
    assert "needs trained weights: set networks.teacher.checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_bad_overrides_and_configs_are_one_line_errors(tmp_path, capsys):
    assert (
        main(
            ["train", str(CONFIGS / "scratch.yaml"), "train.epohcs=2", "--out", str(tmp_path / "y")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "unknown config key train.'epohcs'" in err and err.count("\n") == 1
    assert (
        main(
            [
                "train",
                str(CONFIGS / "bdkd.yaml"),
                "method.rule=medium",
                "--out",
                str(tmp_path / "z"),
            ]
        )
        == 2
    )
    assert "rule must be" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                str(CONFIGS / "scratch.yaml"),
                "networks.student.model=resnet9",
                "--out",
                str(tmp_path / "w"),
            ]
        )
        == 2
    )
    assert "unknown model 'resnet9'" in capsys.readouterr().err


def _final_state(run: Path):
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def _assert_states_equal(a, b):
    for name in a["networks"]:
        for key, value in a["networks"][name].items():
            assert torch.equal(value, b["networks"][name][key]), (name, key)
    assert a["epoch"] == b["epoch"]


RESUME_ARGS = [
    "train.epochs=4",
    "train.progress=false",
    "data.batch_size=4",
    "train.threads=1",
]


def test_kill_and_resume_gives_bitwise_identical_results(tmp_path):
    config = str(CONFIGS / "bdkd.yaml")
    whole = tmp_path / "whole"
    assert main(["train", config, *RESUME_ARGS, "--out", str(whole)]) == 0

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bdkd", "train", config, *RESUME_ARGS, "--out", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.01)
    time.sleep(0.05)  # into the third epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    done = len((killed / "metrics.jsonl").read_text().splitlines())
    assert 2 <= done < 4

    assert main(["train", "--resume", str(killed)]) == 0
    _assert_states_equal(_final_state(whole), _final_state(killed))
    a = json.loads((whole / "summary.json").read_text())["results"]
    b = json.loads((killed / "summary.json").read_text())["results"]
    assert a == b
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 4


def test_corrupt_checkpoint_is_refused_and_kept(tmp_path, capsys):
    run = tmp_path / "r"
    assert (
        main(["train", str(CONFIGS / "scratch.yaml"), *FAST, "train.epochs=2", "--out", str(run)])
        == 0
    )
    ckpt = run / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    torn = ckpt.read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    assert "is corrupt or truncated" in capsys.readouterr().err
    assert ckpt.read_bytes() == torn
    assert main(["eval", str(run)]) == 2


def test_eval_and_compare(teacher_run, tmp_path, capsys):
    assert (
        main(["eval", str(teacher_run), "--split", "val", "--save-logits", str(tmp_path / "l.npz")])
        == 0
    )
    out = capsys.readouterr().out
    assert "val split, 144 samples" in out and "| teacher |" in out
    assert main(["calibrate", str(tmp_path / "l.npz")]) == 0
    capsys.readouterr()
    assert main(["eval", str(teacher_run), "--save-logits", str(tmp_path / "l.npz")]) == 2
    assert "pass --force" in capsys.readouterr().err
    other = tmp_path / "scratch"
    assert main(["train", str(CONFIGS / "scratch.yaml"), *FAST, "--out", str(other)]) == 0
    capsys.readouterr()
    png = tmp_path / "cmp.png"
    assert main(["compare", str(teacher_run), str(other), "--figure", str(png)]) == 0
    out = capsys.readouterr().out
    assert "teacher: teacher (mlp_large)" in out and "scratch: student (mlp_small)" in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["compare", str(tmp_path)]) == 2
    assert "no summary.json" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_runs_keep_losses_finite(precision, tmp_path):
    import math

    run = tmp_path / precision
    assert (
        main(
            [
                "train",
                str(CONFIGS / "bdkd.yaml"),
                *FAST,
                f"train.precision={precision}",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert all(math.isfinite(v) for v in record["train"].values())
    summary = json.loads((run / "summary.json").read_text())
    assert all(math.isfinite(m["nll"]) for m in summary["results"].values())


def test_compiled_networks_train_and_save_plain_state_dicts(tmp_path):
    run = tmp_path / "compiled"
    assert (
        main(
            ["train", str(CONFIGS / "scratch.yaml"), *FAST, "train.compile=true", "--out", str(run)]
        )
        == 0
    )
    state = _final_state(run)
    assert not any("_orig_mod" in k for k in state["networks"]["student"])
    assert main(["eval", str(run)]) == 0


def test_frozen_teacher_is_evaluated_once_and_still_reported(teacher_run, tmp_path, monkeypatch):
    from bdkd.engine import loop

    calls = []
    real = loop.evaluate_networks

    def spy(networks, *args, **kwargs):
        calls.append(sorted(networks))
        return real(networks, *args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_networks", spy)
    run = tmp_path / "kd"
    args = ["train", str(CONFIGS / "kd.yaml"), *FAST, "train.epochs=3", "--out", str(run)]
    assert main([*args, f"networks.teacher.checkpoint={teacher_run}"]) == 0
    # val: the student each epoch and at the end, the teacher once; test: both once
    assert calls.count(["teacher"]) == 1 and calls.count(["student"]) == 4
    assert calls.count(["student", "teacher"]) == 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["val"]["teacher"] == records[0]["val"]["teacher"] for r in records)
    summary = json.loads((run / "summary.json").read_text())
    assert {"accuracy", "ece", "ece_after_ts"} <= set(summary["results"]["teacher"])


def test_a_run_without_a_validation_split_trains_on_all_of_train(tmp_path, capsys):
    run = tmp_path / "all"
    args = ["train", str(CONFIGS / "scratch.yaml"), *FAST, "data.val_size=0"]
    assert main([*args, "--out", str(run)]) == 2
    assert "eval.temperature_scaling" in capsys.readouterr().err and not run.exists()
    assert main([*args, "eval.temperature_scaling=false", "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert "temperature" not in summary["results"]["student"]
    record = json.loads((run / "metrics.jsonl").read_text())
    assert record["val"] == {}
    import numpy as np

    with np.load(run / "predictions" / "student.npz") as saved:
        assert sorted(saved.files) == ["labels", "logits"]
    assert main(["eval", str(run), "--split", "val"]) == 2
    assert "no validation split" in capsys.readouterr().err


def test_tensorboard_scalars_are_written_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    assert main(["train", str(CONFIGS / "scratch.yaml"), *FAST, "--out", str(run)]) == 0
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/student/ce" in tags and "val/student/ece" in tags
