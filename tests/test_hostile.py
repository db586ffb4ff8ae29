"""Hostile and careless input: payload files never run, nothing a user owns is deleted or
replaced without --force, bad values are one-line errors naming the key, divergence stops
cleanly, disk errors name the path. Each case asserts the outcome, not only the exit code."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bdkd.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "digits"
FAST = ["train.epochs=1", "train.progress=false"]


class Payload:
    """Pickles as ``os.system("touch MARKER")``: loading it with plain pickle runs a command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def digest(path: Path) -> str:
    """SHA-256 of a file, or of every file under a directory (names and contents)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def fails(args, capsys, *expected: str) -> str:
    """Run the CLI: exit 2, no traceback, one error line (the last one on stderr, after any
    progress lines), every expected fragment in it."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and [ln for ln in lines if " error: " in ln] == lines[-1:], err
    for fragment in expected:
        assert fragment in lines[-1], (fragment, err)
    return lines[-1]


def train(run: Path, *extra: str, config: str = "scratch") -> None:
    args = ["train", str(CONFIGS / f"{config}.yaml"), *FAST, *extra, "--out", str(run)]
    assert main(args) == 0


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "done"
    train(run)
    return run


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def payload_checkpoint(path: Path, marker: Path, like: Path | None = None) -> Path:
    """A file that looks like a bdkd checkpoint and carries a command payload."""
    state = (
        torch.load(like, weights_only=True) if like else {"networks": {}, "config": {}, "format": 2}
    )
    state["extra_payload"] = Payload(marker)
    torch.save(state, path)
    return path


# --------------------------------------------------------------------------- payloads


def test_checkpoint_payloads_never_run(finished_run, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil_file = payload_checkpoint(tmp_path / "evil.pt", marker)
    fails(["eval", evil_file], capsys, "refused without running any of it", "posix.system")
    assert not marker.exists()

    run = copy_run(finished_run, tmp_path / "evil_run")
    ckpt = run / "checkpoints" / "last.pt"
    payload_checkpoint(ckpt, marker, like=finished_run / "checkpoints" / "last.pt")
    fails(["eval", run], capsys, "refused without running any of it")
    assert not marker.exists()
    fails(["train", "--resume", run], capsys, "refused without running any of it")
    assert not marker.exists()
    kd = CONFIGS / "kd.yaml"
    out = tmp_path / "kd"
    fails(
        ["train", kd, *FAST, f"networks.teacher.checkpoint={run}", "--out", out],
        capsys,
        "networks.teacher.checkpoint",
        "refused without running any of it",
    )
    assert not marker.exists() and not out.exists()
    evil_logits = tmp_path / "logits.pt"
    torch.save(
        {"logits": torch.zeros(4, 3), "labels": torch.zeros(4), "x": Payload(marker)}, evil_logits
    )
    fails(["calibrate", evil_logits], capsys, "not a readable torch file")
    assert not marker.exists()


def test_llm_resume_payload_never_runs(tiny_llm_config, tmp_path, capsys):
    run = tmp_path / "llm"
    assert main(["llm-distill", str(tiny_llm_config), "train.steps=2", "--out", str(run)]) == 0
    marker = tmp_path / "PWNED"
    ckpt = run / "checkpoints" / "last.pt"
    payload_checkpoint(ckpt, marker, like=ckpt)
    fails(["llm-distill", "--resume", run], capsys, "refused without running any of it")
    assert not marker.exists()


# --------------------------------------------------------------------------- --force


def test_force_never_replaces_the_current_directory(tmp_path, capsys, monkeypatch):
    (tmp_path / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(tmp_path)
    before = digest(tmp_path)
    fails(["train", CONFIGS / "scratch.yaml", *FAST, "--force", "--out", "."], capsys, "--force")
    assert digest(tmp_path) == before


def test_force_never_replaces_a_directory_bdkd_did_not_make(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.csv").write_text("1,2,3")
    before = digest(mine)
    fails(
        ["train", CONFIGS / "scratch.yaml", *FAST, "--force", "--out", mine],
        capsys,
        "not made by bdkd",
    )
    assert digest(mine) == before


def test_force_keeps_the_good_run_when_the_new_one_fails_validation(
    finished_run, digits_teacher, tmp_path, capsys
):
    run = copy_run(finished_run, tmp_path / "good")
    before = digest(run)
    # fails only when a batch goes through the network (a wrong input width)
    fails(
        [
            "train",
            CONFIGS / "scratch.yaml",
            *FAST,
            "networks.student.kwargs.in_features=7",
            "--force",
            "--out",
            run,
        ],
        capsys,
    )
    assert digest(run) == before
    fails(
        [
            "train",
            CONFIGS / "kd.yaml",
            *FAST,
            f"networks.teacher.checkpoint={digits_teacher}",
            "method.temperature=0",
            "--force",
            "--out",
            run,
        ],
        capsys,
        "config key 'method.temperature': must be > 0, got 0",
    )
    assert digest(run) == before


def test_force_replaces_only_what_bdkd_wrote(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "r")
    (run / "my_notes.txt").write_text("keep me")
    old_id = json.loads((run / ".bdkd-run").read_text())["run_id"]
    train(run, "train.seed=3", "--force")
    assert (run / "my_notes.txt").read_text() == "keep me"
    assert json.loads((run / "summary.json").read_text())["seed"] == 3
    assert json.loads((run / ".bdkd-run").read_text())["run_id"] != old_id


def test_force_keeps_a_users_files_inside_bdkds_directories(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "r")
    (run / "checkpoints" / "best_by_hand.pt").write_bytes(b"mine")
    (run / "tensorboard").mkdir(exist_ok=True)
    (run / "tensorboard" / "notes.md").write_text("mine")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.csv").write_text("1,2")
    (run / "predictions").mkdir(exist_ok=True)
    (run / "student").symlink_to(elsewhere, target_is_directory=True)
    old = (run / "checkpoints" / "last.pt").read_bytes()
    train(run, "train.seed=3", "--force")
    assert (run / "checkpoints" / "best_by_hand.pt").read_bytes() == b"mine"
    assert (run / "tensorboard" / "notes.md").read_text() == "mine"
    assert (run / "checkpoints" / "last.pt").read_bytes() != old
    # a link named like a bdkd directory is removed as a link; what it points to stays
    assert not (run / "student").exists() and (elsewhere / "data.csv").read_text() == "1,2"


def test_force_never_replaces_the_directory_holding_the_config(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "r")
    for name in ("scratch.yaml", "base.yaml"):
        shutil.copy(CONFIGS / name, run / name)
    before = digest(run)
    fails(
        ["train", run / "scratch.yaml", *FAST, "--force", "--out", run],
        capsys,
        "refusing to replace",
        "it holds",
    )
    assert digest(run) == before


def test_output_name_must_stay_inside_output_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fails(
        ["train", CONFIGS / "scratch.yaml", *FAST, "output.dir=runs", "output.name=../../x"],
        capsys,
        "config key 'output.name'",
    )
    assert not (tmp_path.parent / "x").exists() and not (tmp_path / "runs").exists()


def test_failed_validation_leaves_no_half_made_run_directory(digits_teacher, tmp_path, capsys):
    run = tmp_path / "r"
    fails(
        [
            "train",
            CONFIGS / "dml.yaml",
            *FAST,
            f"train.teacher_cache={tmp_path / 'c'}",
            "--out",
            run,
        ],
        capsys,
        "train.teacher_cache",
    )
    assert not run.exists() and not (tmp_path / "c").exists()
    train(run, config="dml")  # the corrected rerun needs no --force


# --------------------------------------------------------------------------- resume


def test_resume_refuses_a_checkpoint_of_another_run(finished_run, tmp_path, capsys):
    a = copy_run(finished_run, tmp_path / "a")
    b = tmp_path / "b"
    train(b, "train.seed=1")
    shutil.copy(b / "checkpoints" / "last.pt", a / "checkpoints" / "last.pt")
    before = digest(a)
    fails(["train", "--resume", a], capsys, "written by another run")
    assert digest(a) == before


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (("train", "seed", 5), "train.seed"),
        (("train", "epochs", 3), "train.epochs"),
        (("method", "name", "uskd"), "method.name"),
    ],
)
def test_resume_refuses_an_edited_config(finished_run, tmp_path, capsys, edit, key):
    import yaml

    run = copy_run(finished_run, tmp_path / "r")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    section, name, value = edit
    cfg[section][name] = value
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    before = digest(run)
    fails(["train", "--resume", run], capsys, "cannot resume", key)
    assert digest(run) == before


def test_resume_refuses_an_edited_model(finished_run, tmp_path, capsys):
    import yaml

    run = copy_run(finished_run, tmp_path / "r")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["networks"]["student"]["model"] = "mlp_large"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    fails(["train", "--resume", run], capsys, "networks.student.model")


def test_checkpoint_without_config_is_a_one_line_error(finished_run, tmp_path, capsys):
    state = torch.load(finished_run / "checkpoints" / "last.pt", weights_only=True)
    del state["config"]
    torch.save(state, tmp_path / "noconfig.pt")
    fails(["eval", tmp_path / "noconfig.pt"], capsys, "no ['config'] entry")


# --------------------------------------------------------------------------- overwrites


def test_no_output_file_is_overwritten_without_force(finished_run, tmp_path, capsys):
    prev = tmp_path / "prev.npz"
    prev.write_bytes(b"precious")
    fails(["eval", finished_run, "--save-logits", tmp_path / "prev"], capsys, "prev.npz exists")
    assert prev.read_bytes() == b"precious"

    logits = tmp_path / "l.npz"
    np.savez(logits, logits=np.random.randn(50, 3), labels=np.arange(50) % 3)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    fails(["calibrate", logits, "--diagram", notes], capsys, "ending in .png")
    assert notes.read_text() == "my notes"
    png = tmp_path / "fig.png"
    png.write_bytes(b"old figure")
    fails(["calibrate", logits, "--diagram", png], capsys, "exists; pass --force")
    fails(["compare", finished_run, "--figure", png], capsys, "exists; pass --force")
    assert png.read_bytes() == b"old figure"
    assert main(["calibrate", str(logits), "--diagram", str(png), "--force"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.grad_clip=-1", "config key 'train.grad_clip': must be > 0"),
        ("train.threads=0", "config key 'train.threads': must be >= 1"),
        ("eval.bins=100000000", "config key 'eval.bins': must be >= 1 and <= 10000"),
        ("train.seed=-1", "config key 'train.seed'"),
        ("optim.lr=0", "config key 'optim.lr': must be > 0"),
        ("optim.lr=.nan", "config key 'optim.lr': must be a finite number"),
        ("optim.momentum=1.5", "config key 'optim.momentum'"),
        ("data.batch_size=0", "config key 'data.batch_size'"),
        ("schedule.milestones=[-3]", "config key 'schedule.milestones[0]'"),
        ("method.kl_weight=-1", "config key 'method.kl_weight': must be >= 0"),
    ],
)
def test_numeric_ranges_name_the_key(override, fragment, tmp_path, capsys):
    config = "dml" if "kl_weight" in override else "scratch"
    out = tmp_path / "x"
    fails(["train", CONFIGS / f"{config}.yaml", *FAST, override, "--out", out], capsys, fragment)
    assert not out.exists()


def test_floats_in_exponent_notation_are_accepted(tmp_path):
    from bdkd.config import load_config

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        f"base: {CONFIGS / 'scratch.yaml'}\noptim: {{lr: 1e-3, weight_decay: 5E-4}}\n"
    )
    cfg = load_config(cfg_file, ["schedule.min_lr=1e-6"])
    assert cfg.optim.lr == 0.001 and cfg.optim.weight_decay == 0.0005
    assert cfg.schedule.min_lr == 1e-6


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("objective.temperature=0", "config key 'objective.temperature': must be > 0"),
        ("train.eval_every=0", "config key 'train.eval_every': must be >= 1"),
        ("train.micro_batch=0", "config key 'train.micro_batch': must be >= 1"),
        ("train.steps=0", "config key 'train.steps': must be >= 1"),
        ("objective.params={beta: 2}", "'objective.params.beta': is not a hyper-parameter"),
        ("objective.params={high: -1}", "config key 'objective.params.high': must be >= 0"),
        ("objective.params={rule: medium}", "'objective.params.rule': must be one of"),
    ],
)
def test_llm_numeric_ranges_name_the_key(override, fragment, tiny_llm_config, tmp_path, capsys):
    out = tmp_path / "x"
    fails(["llm-distill", tiny_llm_config, override, "--out", out], capsys, fragment)
    assert not out.exists()


def test_cli_flags_are_range_checked(finished_run, tmp_path, capsys):
    fails(["eval", finished_run, "--bins", "100000000"], capsys, "--bins must be in [1, 10000]")
    logits = tmp_path / "l.npz"
    np.savez(logits, logits=np.random.randn(50, 3), labels=np.arange(50) % 3)
    fails(["calibrate", logits, "--bins", "0"], capsys, "--bins must be in")
    fails(["train", CONFIGS / "scratch.yaml", "--nproc", "0"], capsys, "--nproc must be >= 1")
    short = tmp_path / "short.npz"
    np.savez(short, logits=np.random.randn(50, 3), labels=np.arange(40) % 3)
    fails(["calibrate", short], capsys, "50 rows of 'logits' but 40 'labels'")


# --------------------------------------------------------------------------- divergence


def test_divergence_stops_at_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, capsys, monkeypatch
):
    from bdkd.distillers import ScratchDistiller

    run = tmp_path / "r"
    real = ScratchDistiller.forward

    def poisoned(self, inputs, labels, epoch=0, cached=None):
        out = real(self, inputs, labels, epoch, cached)
        if self.training and epoch == 1:
            out.losses["student"]["ce"] = out.losses["student"]["ce"] * float("nan")
        return out

    monkeypatch.setattr(ScratchDistiller, "forward", poisoned)
    args = ["train", CONFIGS / "scratch.yaml", "train.epochs=3", "train.progress=false"]
    err = fails([*args, "--out", run], capsys, "training diverged at epoch 2, step 1/")
    assert "term 'ce' of network 'student' is nan" in err and "lower the learning rate" in err
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1  # the last good checkpoint, written after epoch 1
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and "NaN" not in lines[0]
    assert not (run / "summary.json").exists()


def test_a_real_divergence_is_reported_not_trained_through(tmp_path, capsys):
    run = tmp_path / "r"
    err = fails(
        ["train", CONFIGS / "scratch.yaml", *FAST, "optim.lr=1e30", "--out", run],
        capsys,
        "training diverged at epoch 1",
        "lower the learning rate",
    )
    assert "no checkpoint was written" in err
    for path in run.rglob("*.json*"):
        json.loads(path.read_text().splitlines()[0], parse_constant=pytest.fail)


def test_metrics_json_is_strict():
    from bdkd.files import dumps_json

    text = dumps_json({"a": float("nan"), "b": [float("inf"), 1.5]})
    assert json.loads(text, parse_constant=pytest.fail) == {"a": None, "b": [None, 1.5]}


# --------------------------------------------------------------------------- disk errors


def test_out_below_a_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    fails(
        ["train", CONFIGS / "scratch.yaml", *FAST, "--out", tmp_path / "file" / "sub"],
        capsys,
        "is a file",
    )


def test_read_only_directory_is_a_one_line_error_naming_the_path(tmp_path, capsys, monkeypatch):
    import tempfile

    from bdkd import files

    real = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):  # what a read-only file system answers
        if dir is not None and str(dir).startswith(str(tmp_path / "ro")):
            raise PermissionError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    fails(
        ["train", CONFIGS / "scratch.yaml", *FAST, "--out", tmp_path / "ro"],
        capsys,
        "cannot write",
        str(tmp_path / "ro"),
        "Read-only file system",
    )


def test_full_disk_keeps_the_last_good_checkpoint_and_no_temp_files(tmp_path, capsys, monkeypatch):
    from bdkd.engine import checkpoint

    run = tmp_path / "r"
    real = torch.save
    calls = {"n": 0}

    def disk_fills(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second epoch's checkpoint: half written, then ENOSPC
            Path(f).write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", disk_fills)
    ckpt = run / "checkpoints" / "last.pt"
    fails(
        ["train", CONFIGS / "scratch.yaml", "train.epochs=2", "train.progress=false", "--out", run],
        capsys,
        f"cannot write {ckpt}: No space left on device",
    )
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.pt"]


def test_file_size_limit_in_a_real_process_is_one_line(tmp_path):
    """A real short write (RLIMIT_FSIZE, as on a full disk): torch's error becomes one line
    naming the checkpoint, and no temporary file is left."""
    run = tmp_path / "r"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8_000, 8_000))

    args = [sys.executable, "-m", "bdkd", "train", str(CONFIGS / "scratch.yaml"), *FAST]
    done = subprocess.run(
        [*args, "--out", str(run)], preexec_fn=limit, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr[-2000:]
    err = done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr and "cannot write" in err and "last.pt" in err
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_teacher_cache_never_writes_into_a_foreign_directory(digits_teacher, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "logits.npy").write_bytes(b"my own array")
    before = digest(mine)
    out = tmp_path / "kd"
    fails(
        [
            "train",
            CONFIGS / "kd.yaml",
            *FAST,
            f"networks.teacher.checkpoint={digits_teacher}",
            f"train.teacher_cache={mine}",
            "--out",
            out,
        ],
        capsys,
        "is not a bdkd teacher cache",
    )
    assert digest(mine) == before and not out.exists()


def test_demo_force_never_replaces_the_current_directory(tmp_path, capsys, monkeypatch):
    (tmp_path / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(tmp_path)
    before = digest(tmp_path)
    fails(["demo", "--no-install", "--force", "--out", "."], capsys, "refusing to replace")
    assert digest(tmp_path) == before


def test_a_model_of_the_other_task_is_refused_before_training(tmp_path, capsys):
    run = tmp_path / "run"
    fails(
        ["train", CONFIGS / "scratch.yaml", *FAST, "networks.student.model=seg_unet", "--out", run],
        capsys,
        "networks.student.model",
        "segmentation model",
    )
    assert not run.exists()


def test_a_checkpoint_older_than_a_new_config_key_still_resumes(finished_run):
    """A key added to bdkd after the checkpoint was written, at its default, is no
    difference; any other edit still is."""
    from bdkd.config import ConfigError, load_config, validate
    from bdkd.engine.loop import check_checkpoint_matches
    from bdkd.engine.rundir import read_marker

    path = finished_run / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    cfg = load_config(finished_run / "config.yaml").to_dict()
    marker = read_marker(finished_run)
    del state["config"]["schedule"]["power"]  # as written before the key existed

    def normalise(d):
        return validate(d).to_dict()

    check_checkpoint_matches(state, cfg, marker, path, normalise)
    with pytest.raises(ConfigError, match="schedule.power"):
        check_checkpoint_matches(state, cfg, marker, path)
    state["config"]["train"]["seed"] = 7
    with pytest.raises(ConfigError, match="train.seed"):
        check_checkpoint_matches(state, cfg, marker, path, normalise)


# --------------------------------------------------------------------------- the trust boundary
# A run directory or checkpoint made by someone else is data: the import paths its stored
# config names are refused unless the user consents (--trust-code / BDKD_TRUST_CODE=1).

EVIL_MODULE = """import pathlib
pathlib.Path({marker!r}).touch()


def build(num_classes=10, **kwargs):
    from bdkd.models import create_model
    return create_model("mlp_small", num_classes, in_features=64)


def dataset(**kwargs):
    pathlib.Path({marker!r}).touch()
    raise RuntimeError("never reached")
"""


def tamper_config(run: Path, edit) -> None:
    """Apply ``edit`` to the run's config.yaml and to its checkpoint's stored config."""
    import yaml

    text = yaml.safe_load((run / "config.yaml").read_text())
    edit(text)
    (run / "config.yaml").write_text(yaml.safe_dump(text))
    ckpt = run / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    edit(state["config"])
    torch.save(state, ckpt)


def payloads(run: Path, marker: Path) -> dict:
    """Config edits that would each run code: (key, import path, edit)."""
    pickle_file = run / "predictions" / "data.pkl"
    import pickle

    pickle_file.write_bytes(pickle.dumps(Payload(marker)))
    command = f"!!python/object/apply:os.system ['touch {marker}']"

    def model(path: str, **kwargs):
        def edit(d):
            d["networks"]["student"] = {"model": path, "kwargs": kwargs}

        return "networks.student.model", path, edit

    def dataset(d):
        d["data"]["dataset"] = "evil:dataset"

    return {
        "evil_beside_the_run": model("evil:build"),
        "yaml_unsafe_load": model("yaml:unsafe_load", stream=command),
        "joblib_load": model("joblib:load", filename=str(pickle_file)),
        "sympy_sympify": model("sympy:sympify", a=f"__import__('os').system('touch {marker}')"),
        "dataset_factory": ("data.dataset", "evil:dataset", dataset),
    }


@pytest.mark.parametrize(
    "payload",
    ["evil_beside_the_run", "yaml_unsafe_load", "joblib_load", "sympy_sympify", "dataset_factory"],
)
def test_a_shared_run_never_runs_the_code_its_config_names(
    finished_run, tmp_path, capsys, monkeypatch, payload
):
    marker = tmp_path / "PWNED"
    run = copy_run(finished_run, tmp_path / "shared")
    (run / "evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    (tmp_path / "evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    monkeypatch.chdir(tmp_path)  # evil.py lies in the working directory too
    key, path, edit = payloads(run, marker)[payload]
    tamper_config(run, edit)
    before = digest(run)
    out = tmp_path / "student.onnx"
    for args in (
        ["eval", run],
        ["export", run, "--out", out],
        ["train", "--resume", run],
        ["eval", run / "checkpoints" / "last.pt"],
    ):
        fails(args, capsys, key, path, "--trust-code")
        assert not marker.exists(), args
    assert digest(run) == before and not out.exists()


def test_trusting_a_runs_code_is_the_users_explicit_choice(
    finished_run, tmp_path, capsys, monkeypatch
):
    marker = tmp_path / "RAN"
    run = copy_run(finished_run, tmp_path / "mine")
    code = tmp_path / "code"
    code.mkdir()
    (code / "mine_nets.py").write_text(EVIL_MODULE.format(marker=str(marker)))

    def edit(d):
        d["networks"]["student"]["model"] = "mine_nets:build"

    tamper_config(run, edit)
    monkeypatch.chdir(code)  # the working directory is never importable by itself
    fails(["eval", run, "--trust-code"], capsys, "cannot import 'mine_nets'", "PYTHONPATH")
    assert not marker.exists()
    monkeypatch.syspath_prepend(str(code))
    assert main(["eval", str(run), "--trust-code"]) == 0 and marker.exists()
    marker.unlink()
    monkeypatch.delitem(sys.modules, "mine_nets")  # imported again, so it runs again
    monkeypatch.setenv("BDKD_TRUST_CODE", "1")
    assert main(["eval", str(run)]) == 0 and marker.exists()


def test_python_m_bdkd_never_imports_from_the_working_directory(finished_run, tmp_path):
    marker = tmp_path / "PWNED"
    run = copy_run(finished_run, tmp_path / "shared")

    def edit(d):
        d["networks"]["student"]["model"] = "evil:build"

    tamper_config(run, edit)
    (tmp_path / "evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    done = subprocess.run(
        [sys.executable, "-m", "bdkd", "eval", str(run), "--trust-code"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert done.returncode == 2 and "cannot import 'evil'" in done.stderr, done.stderr[-800:]
    assert not marker.exists()


# --------------------------------------------------------------------------- bounded parsing

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


def nested_bomb() -> list:
    """A small pickled structure that expands to 10^30 values (shared references)."""
    x: list = ["x"] * 10
    for _ in range(30):
        x = [x] * 10
    return x


def test_alias_bombs_are_refused_at_once(finished_run, tmp_path, capsys, tiny_llm_config):
    import time

    started = time.perf_counter()
    config = tmp_path / "bomb.yaml"
    config.write_text(f"base: {CONFIGS / 'scratch.yaml'}\nmethod: {{name: scratch}}\n" + BOMB)
    assert len(config.read_bytes()) < 1000
    fails(["train", config, "--out", tmp_path / "x"], capsys, str(config), "alias bomb")
    llm = tmp_path / "llm_bomb.yaml"
    llm.write_text(tiny_llm_config.read_text() + BOMB)
    fails(["llm-distill", llm, "--out", tmp_path / "y"], capsys, "alias bomb")
    run = copy_run(finished_run, tmp_path / "bombed")
    ckpt = run / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    state["config"]["networks"]["student"]["kwargs"] = {"bomb": nested_bomb()}
    torch.save(state, ckpt)
    assert ckpt.stat().st_size < (finished_run / "checkpoints" / "last.pt").stat().st_size + 5000
    for args in (["eval", run], ["export", run, "--out", tmp_path / "s.onnx"]):
        fails(args, capsys, "alias bomb")
    fails(["train", "--resume", run], capsys, "alias bomb")
    assert time.perf_counter() - started < 60
    big = tmp_path / "big.yaml"
    big.write_text("method: {name: scratch}\n# " + "x" * (2 << 20) + "\n")
    fails(["train", big], capsys, "refused unread")


# --------------------------------------------------------------------------- links


def test_resume_never_writes_through_a_link_in_the_run(finished_run, tmp_path, capsys):
    mine = tmp_path / "my_predictions"
    mine.mkdir()
    (mine / "student.npz").write_bytes(b"my own file")
    before = digest(mine)
    run = copy_run(finished_run, tmp_path / "downloaded")
    shutil.rmtree(run / "predictions")
    (run / "predictions").symlink_to(mine, target_is_directory=True)
    fails(["train", "--resume", run], capsys, "symbolic link", "predictions")
    fails(["export", run, "--out", tmp_path / "s.onnx"], capsys, "symbolic link")
    assert digest(mine) == before
    linked = copy_run(finished_run, tmp_path / "linked_file")
    (linked / "report.md").unlink()
    (linked / "report.md").symlink_to(mine / "student.npz")
    fails(["train", "--resume", linked], capsys, "symbolic link", "report.md")
    assert digest(mine) == before


def test_llm_resume_never_writes_through_a_linked_student(tiny_llm_config, tmp_path, capsys):
    run = tmp_path / "llm"
    assert main(["llm-distill", str(tiny_llm_config), "train.steps=2", "--out", str(run)]) == 0
    mine = tmp_path / "my_model"
    shutil.copytree(run / "student", mine)
    before = digest(mine)
    shutil.rmtree(run / "student")
    (run / "student").symlink_to(mine, target_is_directory=True)
    fails(["llm-distill", "--resume", run], capsys, "symbolic link", "student")
    assert digest(mine) == before


# --------------------------------------------------------------------------- replace only after success

BAD_BACKWARD = """import torch


class Explodes(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("this layer cannot be differentiated")


class Net(torch.nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.fc = torch.nn.Linear(64, num_classes)

    def forward(self, x):
        return Explodes.apply(self.fc(x.flatten(1)))


def build(num_classes=10):
    return Net(num_classes)
"""


def test_force_keeps_the_good_run_when_the_first_backward_fails(
    finished_run, tmp_path, capsys, monkeypatch
):
    (tmp_path / "badnets.py").write_text(BAD_BACKWARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    run = copy_run(finished_run, tmp_path / "good")
    before = digest(run)
    fails(
        [
            "train",
            CONFIGS / "scratch.yaml",
            *FAST,
            "networks.student.model=badnets:build",
            "--force",
            "--out",
            run,
        ],
        capsys,
        "first training step",
        "cannot be differentiated",
        "nothing was written",
    )
    assert digest(run) == before


def test_export_force_never_replaces_a_good_file_with_a_broken_one(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "r")
    good = tmp_path / "student.pt"
    assert main(["export", str(run), "--out", str(good), "--format", "torchscript"]) == 0
    before = digest(good)
    ckpt = run / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    for value in state["networks"]["student"].values():
        value.fill_(float("nan"))
    torch.save(state, ckpt)
    fails(
        ["export", run, "--out", good, "--format", "torchscript", "--force"],
        capsys,
        "non-finite outputs",
        "nothing was written",
    )
    assert digest(good) == before
    fresh = tmp_path / "fresh.onnx"
    fails(["export", run, "--out", fresh], capsys, "non-finite outputs")
    assert not fresh.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- silent before


def test_export_refuses_another_runs_checkpoint(finished_run, tmp_path, capsys):
    other = tmp_path / "other"
    train(other, "train.seed=5")
    run = copy_run(finished_run, tmp_path / "r")
    shutil.copy(other / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    fails(["export", run, "--out", tmp_path / "s.onnx", "--calibrated"], capsys, "another run")
    assert not (tmp_path / "s.onnx").exists()


@pytest.mark.parametrize("value", [-1.0, 0.0, 1e9, "NaN"])
def test_a_tampered_temperature_is_refused(finished_run, tmp_path, capsys, value):
    run = copy_run(finished_run, tmp_path / "r")
    text = (run / "summary.json").read_text()
    summary = json.loads(text)
    summary["results"]["student"]["temperature"] = value
    (run / "summary.json").write_text(json.dumps(summary).replace('"NaN"', "NaN"))
    out = tmp_path / "s.onnx"
    fails(["export", run, "--out", out, "--calibrated"], capsys, "temperature")
    assert not out.exists()


def test_a_summary_that_is_not_a_summary_is_one_line(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "r")
    for text, fragment in (
        ("{not json", "not readable JSON"),
        ("[1, 2]", "not a mapping"),
        (
            '{"results": {"student": {"accuracy": "high"}}, "models": {"student": "m"}, '
            '"deployed": "student"}',
            "not a number",
        ),
        ('{"results": {"student": {}}, "models": {}, "deployed": "student"}', "'models'"),
    ):
        (run / "summary.json").write_text(text)
        fails(["export", run, "--out", tmp_path / "s.onnx"], capsys, "summary.json", fragment)
        fails(["compare", run], capsys, "summary.json", fragment)


def test_complex_logits_are_refused(tmp_path, capsys):
    path = tmp_path / "logits.npz"
    np.savez(path, logits=np.ones((4, 3), dtype=np.complex64), labels=np.zeros(4, dtype=np.int64))
    fails(["calibrate", path], capsys, "complex")


def test_sixteen_bit_images_are_read_by_value(tmp_path):
    from PIL import Image

    from bdkd.data.folders import read_image

    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    assert int(read_image(path, mode="L")[0, 0, 0]) == 128  # not 255
    assert int(read_image(path, mode="RGB")[0, 0, 1]) == 128


def voc_tree(root: Path, label: np.ndarray, size: int = 8) -> Path:
    """A Pascal VOC folder with one training, one validation and one test pair."""
    from PIL import Image

    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    names = {"train": ["a", "b"], "val": ["c"]}
    for split, items in names.items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(items))
        for name in items:
            Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(
                root / "JPEGImages" / f"{name}.jpg"
            )
            # a negative map can only be a 32-bit image: saved as TIFF under the .png name
            # (Pillow reads files by their content, whatever they are called)
            kind = "TIFF" if label.dtype == np.int32 else "PNG"
            Image.fromarray(label).save(root / "SegmentationClass" / f"{name}.png", format=kind)
    return root


@pytest.mark.parametrize(
    "label, fragment",
    [
        (np.full((8, 8), 257, dtype=np.uint16), "outside"),
        (np.full((8, 8), -3, dtype=np.int32), "outside"),
        (np.zeros((5, 8), dtype=np.uint8), "size"),
    ],
    ids=["16-bit", "negative", "other-size"],
)
def test_bad_label_maps_are_refused(tmp_path, label, fragment):
    from bdkd.data import DataError, load_dataset

    root = voc_tree(tmp_path / "voc", label)
    with pytest.raises(DataError, match=fragment) as err:
        load_dataset("voc", root=root, val_size=0, height=8, width=8)
    assert "SegmentationClass" in str(err.value)
    with pytest.raises(DataError, match=fragment):  # streamed: found while reading a batch
        splits = load_dataset("voc", root=root, val_size=0, height=8, width=8, memory_limit_mb=0)
        for _ in splits.train:
            pass


def test_weights_that_match_nothing_are_an_error(tmp_path, capsys, digits_teacher):
    weights = tmp_path / "w.pt"
    torch.save({"backbone.layer.weight": torch.zeros(3, 3)}, weights)
    common = [
        "train",
        CONFIGS / "kd.yaml",
        *FAST,
        "networks.teacher.checkpoint=null",
        f"networks.teacher.weights={weights}",
        "networks.teacher.weights_strict=false",
    ]
    fails([*common, "--out", tmp_path / "a"], capsys, "matches none", "none-ok")
    assert not (tmp_path / "a").exists()
    assert (
        main(
            [str(a) for a in common[:-1]]
            + ["networks.teacher.weights_strict=none-ok", "--out", str(tmp_path / "b")]
        )
        == 0
    )


# --------------------------------------------------------------------------- teacher cache integrity


@pytest.fixture
def llm_cache(tiny_llm_config, tmp_path) -> tuple[Path, Path]:
    cfg = tmp_path / "offline.yaml"
    cfg.write_text(
        tiny_llm_config.read_text().replace("on_policy_fraction: 0.5", "on_policy_fraction: 0")
    )
    cache = tmp_path / "cache"
    assert main(["llm-cache-teacher", str(cfg), "--out", str(cache), "--k", "8"]) == 0
    return cfg, cache


def test_an_edited_teacher_cache_is_refused(llm_cache, tmp_path, capsys):
    from bdkd.llm.cache import array_checksum

    cfg, cache = llm_cache
    run = ["llm-distill", cfg, f"train.teacher_cache={cache}", "--out", tmp_path / "r"]

    def edit_array(name, change, fix_checksum=False):
        data = np.load(cache / name)
        original = data.copy()
        change(data)
        np.save(cache / name, data)
        meta = json.loads((cache / "meta.json").read_text())
        saved = dict(meta["checksums"])
        if fix_checksum:
            meta["checksums"][name] = array_checksum(cache / name)
            (cache / "meta.json").write_text(json.dumps(meta))
        return original, saved

    def restore(name, original, saved):
        np.save(cache / name, original)
        meta = json.loads((cache / "meta.json").read_text())
        meta["checksums"] = saved
        (cache / "meta.json").write_text(json.dumps(meta))

    for name in ("log_probs.npy", "ids.npy", "tail.npy"):
        original, saved = edit_array(name, lambda a: a.__setitem__(0, a[0] + 1))
        fails(run, capsys, name, "checksum")
        restore(name, original, saved)
    original, saved = edit_array(
        "log_probs.npy", lambda a: a.__setitem__(slice(0, 3), 0.0), fix_checksum=True
    )
    fails(run, capsys, "log_probs.npy", "more than 1")
    restore("log_probs.npy", original, saved)
    original, saved = edit_array(
        "ids.npy", lambda a: a.__setitem__((0, 1), a[0, 0]), fix_checksum=True
    )
    fails(run, capsys, "ids.npy", "repeat")
    restore("ids.npy", original, saved)
    meta = json.loads((cache / "meta.json").read_text())
    meta["splits"]["val"]["offset"] = meta["tokens"] + 5
    (cache / "meta.json").write_text(json.dumps(meta))
    fails(run, capsys, "meta.json", "offset")
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- tracebacks before

OWN_MODELS = """import torch


def raises_in_init(num_classes=10):
    raise ZeroDivisionError("the factory divided by zero")


class BadForward(torch.nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.fc = torch.nn.Linear(64, num_classes)

    def forward(self, x):
        raise KeyError("no such feature")


def raises_in_forward(num_classes=10):
    return BadForward(num_classes)
"""


@pytest.mark.parametrize(
    "model, fragments",
    [
        ("own_models:raises_in_init", ("own_models:raises_in_init", "the factory divided by zero")),
        ("own_models:raises_in_forward", ("own_models:raises_in_forward", "no such feature")),
        ("broken_syntax:build", ("broken_syntax", "SyntaxError")),
    ],
)
def test_an_own_models_exception_is_one_line(tmp_path, capsys, monkeypatch, model, fragments):
    (tmp_path / "own_models.py").write_text(OWN_MODELS)
    (tmp_path / "broken_syntax.py").write_text("def build(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "r"
    fails(
        ["train", CONFIGS / "scratch.yaml", *FAST, f"networks.student.model={model}", "--out", out],
        capsys,
        *fragments,
    )
    assert not out.exists()


def test_a_corrupt_image_found_late_in_a_streamed_folder_is_one_line(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "images"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(6):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(
                    root / split / c / f"{i}.png"
                )
    bad = root / "test" / "b" / "5.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    config = tmp_path / "folder.yaml"
    config.write_text(
        f"data: {{dataset: image_folder, root: {root}, memory_limit_mb: 0, val_size: 2, batch_size: 4}}\n"
        "method: {name: scratch}\nnetworks: {student: {model: cnn, kwargs: {width: 2}}}\n"
        "train: {epochs: 1, progress: false}\n"
    )
    fails(["train", config, "--out", tmp_path / "r"], capsys, str(bad), "not a readable image")


def hf_dir_with_payload(tiny_lms, tmp_path, marker: Path) -> Path:
    """A save_pretrained directory whose pytorch_model.bin carries a command payload."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_lms["student"]))
    out = tmp_path / "payload_model"
    model.save_pretrained(str(out), safe_serialization=False)
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_lms["student"]))
    tok.save_pretrained(str(out))
    for f in out.glob("*.safetensors"):
        f.unlink()
    state = {"model.embed_tokens.weight": torch.zeros(2, 2), "x": Payload(marker)}
    torch.save(state, out / "pytorch_model.bin")
    return out


def test_llm_model_files_that_are_not_models_are_one_line(tiny_lms, qa_jsonl, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    model = hf_dir_with_payload(tiny_lms, tmp_path, marker)
    fails(["llm-eval", model, "--data", qa_jsonl, "--out", tmp_path / "o"], capsys, str(model))
    assert not marker.exists()
    broken = tmp_path / "broken_tokenizer"
    shutil.copytree(tiny_lms["student"], broken)
    (broken / "tokenizer.json").write_text("{ not a tokenizer")
    fails(["llm-eval", broken, "--data", qa_jsonl, "--out", tmp_path / "p"], capsys, "tokenizer")


def test_llm_texts_longer_than_the_models_positions_are_one_line(
    tiny_llm_config, tiny_lms, tmp_path, capsys
):
    long = tmp_path / "long.jsonl"  # the tiny models have 128 positions
    rows = [{"prompt": f"Say it {i}:", "completion": " word" * 200} for i in range(12)]
    long.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fails(
        [
            "llm-distill",
            tiny_llm_config,
            f"data.files=[{long}]",
            "data.max_length=512",
            "--out",
            tmp_path / "r",
        ],
        capsys,
        "data.max_length",
        "128 positions",
    )
    assert not (tmp_path / "r").exists()
    fails(
        ["llm-eval", tiny_lms["student"], "--data", long, "--out", tmp_path / "o"],
        capsys,
        "--max-length",
        "128 positions",
    )
    fails(
        [
            "llm-distill",
            tiny_llm_config,
            "student.model=null",
            "student.config={hidden_size: -1}",
            "--out",
            tmp_path / "s",
        ],
        capsys,
        "student.config",
    )


def under_file_limit(args: list[str], limit: int) -> subprocess.CompletedProcess:
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "bdkd", *args],
        preexec_fn=apply,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_full_disk_while_caching_or_saving_an_llm_is_one_line(
    tiny_llm_config, tmp_path, capsys, monkeypatch
):
    cfg = tmp_path / "offline.yaml"
    cfg.write_text(
        tiny_llm_config.read_text().replace("on_policy_fraction: 0.5", "on_policy_fraction: 0")
    )
    # a real file-size limit while the teacher cache's arrays are made
    done = under_file_limit(
        ["llm-cache-teacher", str(cfg), "--out", str(tmp_path / "cache"), "--k", "64"], 60_000
    )
    err = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-1500:]
    assert "cannot write" in err and "cache" in err, err
    # the disk fills while the trained student is saved
    import transformers

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", disk_full)
    run = tmp_path / "run"
    fails(
        ["llm-distill", cfg, "train.steps=1", "--out", run],
        capsys,
        f"cannot write {run / 'student'}",
        "No space left on device",
    )
