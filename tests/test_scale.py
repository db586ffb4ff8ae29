"""Scale: 2-process gloo DDP equals one process; resume under DDP; the teacher-logit cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bdkd.cli import main
from bdkd.engine.logit_cache import CacheError, TeacherLogitCache

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "digits"
# 1,280 training images = 10 global batches of 128, so each of 2 ranks takes 64 per step
SAME = [
    "train.epochs=2",
    "train.progress=false",
    "data.train_size=1280",
    "data.batch_size=128",
    "train.threads=1",
]


@pytest.fixture
def teacher(digits_teacher):
    return digits_teacher


def _weights(run: Path):
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["networks"]


def _bdkd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bdkd", *args]


@pytest.mark.parametrize("method", ["kd", "bdkd"])
def test_two_process_ddp_matches_one_process(method, teacher, tmp_path):
    config = str(CONFIGS / f"{method}.yaml")
    extra = [f"networks.teacher.checkpoint={teacher}"] if method == "kd" else []
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main(["train", config, *SAME, *extra, "--out", str(single)]) == 0
    done = subprocess.run(
        _bdkd("train", config, *SAME, *extra, "--out", str(ddp), "--nproc", "2"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    a = json.loads((single / "summary.json").read_text())["results"]
    b = json.loads((ddp / "summary.json").read_text())["results"]
    for net in a:
        for key in ("accuracy", "ece", "nll", "brier"):
            assert a[net][key] == pytest.approx(b[net][key], rel=1e-3, abs=1e-4), (net, key)
    wa, wb = _weights(single), _weights(ddp)
    for net in wa:
        for key, value in wa[net].items():
            torch.testing.assert_close(value, wb[net][key], rtol=1e-4, atol=1e-5)
    la = [json.loads(line)["train"] for line in (single / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(line)["train"] for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    for ta, tb in zip(la, lb, strict=True):
        for key in ta:
            assert ta[key] == pytest.approx(tb[key], rel=1e-4, abs=1e-6), key
    # only rank 0 wrote: one metrics line per epoch
    assert len(lb) == 2


def test_resume_under_ddp(tmp_path):
    config = str(CONFIGS / "bdkd.yaml")
    args = [
        "train.epochs=4",
        "train.progress=false",
        "data.train_size=640",
        "data.batch_size=8",
        "train.threads=1",
    ]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run(
        _bdkd("train", config, *args, "--out", str(whole), "--nproc", "2"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # both processes crash inside the third epoch (injected at a fixed step, so the test
    # does not depend on timing), as a kill there would leave them
    script = tmp_path / "crash.py"
    script.write_text(
        "import sys\n"
        "from bdkd.engine import loop\n"
        "real = loop.Trainer.train_epoch\n"
        "def crash(self, epoch):\n"
        "    if epoch == 2:\n"
        "        raise SystemExit(9)\n"
        "    return real(self, epoch)\n"
        "loop.Trainer.train_epoch = crash\n"
        "from bdkd.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    crashed = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            "train",
            config,
            *args,
            "--out",
            str(killed),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert crashed.returncode != 0
    metrics = killed / "metrics.jsonl"
    assert not (killed / "summary.json").exists()
    assert len(metrics.read_text().splitlines()) == 2
    done = subprocess.run(
        _bdkd("train", "--resume", str(killed), "--nproc", "2"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    wa, wb = _weights(whole), _weights(killed)
    for net in wa:
        for key, value in wa[net].items():
            torch.testing.assert_close(value, wb[net][key], rtol=1e-5, atol=1e-6)
    assert len(metrics.read_text().splitlines()) == 4


def test_cached_teacher_logits_give_the_same_losses(teacher, tmp_path):
    config = str(CONFIGS / "kd.yaml")
    base = [*SAME, f"networks.teacher.checkpoint={teacher}", "train.teacher_cache_dtype=fp32"]
    cache = tmp_path / "cache"
    live, filling, reading = tmp_path / "live", tmp_path / "filling", tmp_path / "reading"
    assert main(["train", config, *base, "--out", str(live)]) == 0
    assert (
        main(["train", config, *base, f"train.teacher_cache={cache}", "--out", str(filling)]) == 0
    )
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["filled"] == [True, True] and meta["shape"] == [2, 1280, 10]
    assert np.abs(np.load(cache / "logits.npy")).sum() > 0
    # with a filled cache the teacher is not run at all during training
    from bdkd.config import load_config
    from bdkd.engine import Trainer

    cfg = load_config(config, [*base, f"train.teacher_cache={cache}"])
    trainer = Trainer(cfg, tmp_path / "no-teacher")

    def refuse(*_args, **_kwargs):
        raise AssertionError("the teacher ran although its logits are cached")

    trainer.distiller.networks["teacher"].forward = refuse
    trainer.train_epoch(0)
    assert (
        main(["train", config, *base, f"train.teacher_cache={cache}", "--out", str(reading)]) == 0
    )
    terms = [
        [json.loads(line)["train"] for line in (r / "metrics.jsonl").read_text().splitlines()]
        for r in (live, filling, reading)
    ]
    assert terms[0] == terms[1] == terms[2]
    wa, wc = _weights(live), _weights(reading)
    for key, value in wa["student"].items():
        assert torch.equal(value, wc["student"][key]), key


def test_fp16_cache_is_close_and_stale_or_corrupt_caches_are_refused(teacher, tmp_path, capsys):
    config = str(CONFIGS / "kd.yaml")
    base = [*SAME, "train.epochs=1", f"networks.teacher.checkpoint={teacher}"]
    cache = tmp_path / "cache16"
    assert (
        main(["train", config, *base, f"train.teacher_cache={cache}", "--out", str(tmp_path / "a")])
        == 0
    )
    assert (
        main(["train", config, *base, f"train.teacher_cache={cache}", "--out", str(tmp_path / "b")])
        == 0
    )
    ta = json.loads((tmp_path / "a" / "metrics.jsonl").read_text())["train"]
    tb = json.loads((tmp_path / "b" / "metrics.jsonl").read_text())["train"]
    for key in ta:
        assert ta[key] == pytest.approx(tb[key], rel=2e-3), key
    capsys.readouterr()
    # another teacher: stale
    other = tmp_path / "other-teacher"
    assert (
        main(
            [
                "train",
                str(CONFIGS / "teacher.yaml"),
                "train.epochs=1",
                "train.progress=false",
                "train.seed=5",
                "--out",
                str(other),
            ]
        )
        == 0
    )
    capsys.readouterr()
    args = [
        "train",
        config,
        *base,
        f"networks.teacher.checkpoint={other}",
        f"train.teacher_cache={cache}",
        "--out",
        str(tmp_path / "c"),
    ]
    assert main(args) == 2
    assert "is stale: it was built for a different ['teacher']" in capsys.readouterr().err
    # a damaged array
    (cache / "logits.npy").write_bytes(b"garbage")
    assert (
        main(["train", config, *base, f"train.teacher_cache={cache}", "--out", str(tmp_path / "d")])
        == 2
    )
    assert "logits.npy is missing or corrupt" in capsys.readouterr().err
    # online methods cannot use it
    assert (
        main(
            [
                "train",
                str(CONFIGS / "dml.yaml"),
                *base[:-1],
                f"train.teacher_cache={tmp_path / 'x'}",
                "--out",
                str(tmp_path / "e"),
            ]
        )
        == 2
    )
    assert "only offline methods" in capsys.readouterr().err


def test_cache_object_checks_shape_and_dtype(tmp_path):
    key = {"teacher": "abc"}
    c = TeacherLogitCache(tmp_path / "c", epochs=2, n=4, num_classes=3, dtype="fp32", key=key)
    idx = torch.tensor([3, 1])
    c.write(0, idx, torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    c.mark_complete(0)
    again = TeacherLogitCache(tmp_path / "c", epochs=2, n=4, num_classes=3, dtype="fp32", key=key)
    assert again.complete(0) and not again.complete(1)
    torch.testing.assert_close(again.read(0, torch.tensor([1])), torch.tensor([[4.0, 5.0, 6.0]]))
    with pytest.raises(CacheError, match="this run needs"):
        TeacherLogitCache(tmp_path / "c", epochs=3, n=4, num_classes=3, dtype="fp32", key=key)
    with pytest.raises(CacheError, match="does not exist"):
        TeacherLogitCache(
            tmp_path / "none", epochs=3, n=4, num_classes=3, dtype="fp32", key=key, create=False
        )


def test_state_hash_covers_batchnorm_buffers_and_values():
    from torch import nn

    from bdkd.engine.logit_cache import state_hash

    a = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    b = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    b.load_state_dict(a.state_dict())
    assert state_hash(a) == state_hash(b)
    b[1].running_mean += 1
    assert state_hash(a) != state_hash(b)


def test_without_augmentation_one_cached_slice_serves_every_epoch(teacher, tmp_path):
    config = str(CONFIGS / "kd.yaml")
    base = [
        *SAME,
        "train.epochs=3",
        "data.augment=false",
        f"networks.teacher.checkpoint={teacher}",
        "train.teacher_cache_dtype=fp32",
    ]
    cache = tmp_path / "cache"
    live, cached = tmp_path / "live", tmp_path / "cached"
    assert main(["train", config, *base, "--out", str(live)]) == 0
    from bdkd.config import load_config
    from bdkd.engine import Trainer

    cfg = load_config(config, [*base, f"train.teacher_cache={cache}"])
    trainer = Trainer(cfg, cached)
    calls = {"n": 0}
    real = trainer.distiller.networks["teacher"].forward

    def counting(x):
        calls["n"] += 1
        return real(x)

    trainer.distiller.networks["teacher"].forward = counting
    trainer.fit()
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["shape"] == [1, 1280, 10] and meta["filled"] == [True]
    # training ran the teacher in the first epoch only (10 steps); evaluation once on val,
    # once on test
    evals = len(trainer.loaders.val) + len(trainer.loaders.test)
    assert calls["n"] == 10 + evals
    a = [json.loads(line)["train"] for line in (live / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line)["train"] for line in (cached / "metrics.jsonl").read_text().splitlines()]
    assert a == b
