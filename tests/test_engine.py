"""The engine through the CLI on digits: every method, run directories, resume, errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bdkd.cli import main
from bdkd.distillers import available_methods, feature_use
from bdkd.losses.registry import OBJECTIVES

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
        assert metrics["nll"] > 0  # the numbers themselves: tests/test_golden.py
    assert summary["deployed"] in summary["results"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["train"] and all(isinstance(v, float) for v in record["train"].values())
    assert set(record["val"]) == set(summary["results"])
    return summary, record


CONFIG_OF = {m: m for m in available_methods() if (CONFIGS / f"{m}.yaml").is_file()}


def test_every_classification_method_has_a_digits_config():
    spatial = {m for m in OBJECTIVES if OBJECTIVES[m].spatial}
    assert set(available_methods()) - set(CONFIG_OF) == {"offline"} | spatial


# the feature methods' configs run in tests/test_feature_kd.py (AT and ReviewKD read the
# digits CNN teacher, the others the MLP one)
LOGIT_METHODS = sorted(m for m in CONFIG_OF if feature_use(m) is None)


@pytest.mark.parametrize("method", LOGIT_METHODS)
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
    assert "'method.rule': must be one of ['hard', 'soft']" in capsys.readouterr().err
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


def test_a_crash_mid_epoch_and_resume_give_bitwise_identical_results(tmp_path, monkeypatch):
    """The run is interrupted inside its third epoch (the crash is injected at a fixed step,
    so the test does not depend on timing), then resumed: weights, metrics and summary equal
    those of the uninterrupted run bit for bit."""
    from bdkd.engine import loop

    config = str(CONFIGS / "bdkd.yaml")
    whole = tmp_path / "whole"
    assert main(["train", config, *RESUME_ARGS, "--out", str(whole)]) == 0

    killed = tmp_path / "killed"
    real = loop.Trainer.train_epoch

    def crash_in_third_epoch(self, epoch):
        if epoch == 2:
            real_step = self.step_module

            def crash(*args, **kwargs):
                raise KeyboardInterrupt  # as a kill would, mid-epoch

            self.step_module = crash
            try:
                return real(self, epoch)
            finally:
                self.step_module = real_step
        return real(self, epoch)

    monkeypatch.setattr(loop.Trainer, "train_epoch", crash_in_third_epoch)
    assert main(["train", config, *RESUME_ARGS, "--out", str(killed)]) == 130
    monkeypatch.undo()
    assert not (killed / "summary.json").exists()
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 2
    assert torch.load(killed / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2

    assert main(["train", "--resume", str(killed)]) == 0
    _assert_states_equal(_final_state(whole), _final_state(killed))
    a = json.loads((whole / "summary.json").read_text())["results"]
    b = json.loads((killed / "summary.json").read_text())["results"]
    assert a == b
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 4


def test_a_sigkilled_run_resumes(tmp_path):
    """A real SIGKILL, sent by the training process to itself right after its second
    checkpoint (a fixed point, not a race with a timer): the resumed run ends like an
    uninterrupted one."""
    config = str(CONFIGS / "bdkd.yaml")
    whole = tmp_path / "whole"
    assert main(["train", config, *RESUME_ARGS, "--out", str(whole)]) == 0
    killed = tmp_path / "killed"
    script = tmp_path / "die.py"
    script.write_text(
        "import os, signal, sys\n"
        "from bdkd.engine.loop import Trainer\n"
        "real = Trainer._save\n"
        "def save_then_die(self, epoch):\n"
        "    real(self, epoch)\n"
        "    if epoch == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "Trainer._save = save_then_die\n"
        "from bdkd.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, str(script), "train", config, *RESUME_ARGS, "--out", str(killed)],
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-1000:]
    assert not (killed / "summary.json").exists()
    assert torch.load(killed / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    assert main(["train", "--resume", str(killed)]) == 0
    _assert_states_equal(_final_state(whole), _final_state(killed))


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


# --------------------------------------------------------------------------- options


def test_lr_factor_schedules():
    from bdkd.config import ScheduleConfig
    from bdkd.engine.build import lr_factor

    step = ScheduleConfig(name="multistep", milestones=[2, 4], gamma=0.1)
    assert [lr_factor(e, step, 6, 0.1) for e in range(6)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    warm = ScheduleConfig(name="constant", warmup_epochs=4)
    assert [lr_factor(e, warm, 6, 0.1) for e in range(6)] == pytest.approx(
        [0.25, 0.5, 0.75, 1, 1, 1]
    )
    cos = ScheduleConfig(name="cosine", min_lr=0.01)
    values = [lr_factor(e, cos, 4, 0.1) for e in range(4)]
    import math

    expected = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert values == pytest.approx(expected)  # floor min_lr / lr = 0.1, never below
    assert min(lr_factor(e, cos, 4, 0.1) for e in range(4)) > 0.1
    poly = ScheduleConfig(name="poly", power=0.9)
    assert [lr_factor(e, poly, 4, 0.1) for e in range(4)] == pytest.approx(
        [(1 - e / 4) ** 0.9 for e in range(4)]
    )


def test_optimizers_and_their_options():
    from bdkd.config import OptimConfig
    from bdkd.engine.build import build_optimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    sgd = build_optimizer(params, OptimConfig(name="sgd", lr=0.1, momentum=0.8, nesterov=True))
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert group["nesterov"] and group["momentum"] == 0.8 and group["lr"] == 0.1
    adamw = build_optimizer(
        params, OptimConfig(name="adamw", lr=0.01, betas=[0.8, 0.95], weight_decay=0.02)
    )
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["betas"] == (0.8, 0.95)
    assert adamw.param_groups[0]["weight_decay"] == 0.02


def test_adamw_and_grad_clip_in_a_run(tmp_path, monkeypatch):
    from bdkd.engine import loop

    norms = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        norms.append(max_norm)
        total = real(params, max_norm, *args, **kwargs)
        after = torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        assert after <= max_norm * (1 + 1e-4)  # clipped
        return total

    monkeypatch.setattr(loop.torch.nn.utils, "clip_grad_norm_", spy)
    run = tmp_path / "r"
    args = [*FAST, "optim.name=adamw", "optim.lr=1e-3", "train.grad_clip=0.01"]
    assert main(["train", str(CONFIGS / "scratch.yaml"), *args, "--out", str(run)]) == 0
    assert norms and set(norms) == {0.01}
    state = _final_state(run)
    assert "exp_avg" in next(iter(state["optimizers"]["student"]["state"].values()))


def test_checkpoint_network_picks_a_named_network_of_another_run(tmp_path):
    # an online run holds teacher and student; start a new run's student from its teacher
    online = tmp_path / "bdkd"
    assert main(["train", str(CONFIGS / "bdkd.yaml"), *FAST, "--out", str(online)]) == 0
    state = _final_state(online)
    run = tmp_path / "from_teacher"
    args = [
        *FAST,
        "networks.student.model=mlp_large",
        f"networks.student.checkpoint={online}",
        "networks.student.checkpoint_network=teacher",
        "optim.lr=1e-12",  # leave the weights as loaded
        "optim.momentum=0",
        "optim.weight_decay=0",
    ]
    assert main(["train", str(CONFIGS / "scratch.yaml"), *args, "--out", str(run)]) == 0
    loaded = _final_state(run)["networks"]["student"]
    for key, value in state["networks"]["teacher"].items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=1e-9)


def test_channels_last_trains_what_the_default_layout_trains(tmp_path):
    """train.channels_last changes the memory layout of the networks and batches, not what
    is computed: the same run's test metrics agree to float precision."""
    args = [str(CONFIGS / "scratch.yaml"), *FAST, "networks.student.model=cnn_tiny"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", *args, "--out", str(a)]) == 0
    assert main(["train", *args, "train.channels_last=true", "--out", str(b)]) == 0
    ra = json.loads((a / "summary.json").read_text())["results"]["student"]
    rb = json.loads((b / "summary.json").read_text())["results"]["student"]
    for key in ("accuracy", "nll", "ece"):
        assert ra[key] == pytest.approx(rb[key], rel=1e-3, abs=1e-4), key
