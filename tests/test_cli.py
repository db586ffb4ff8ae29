"""The command line's plumbing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bdkd import __version__
from bdkd.cli import main


def test_demo_prints_the_divergence_table(capsys):
    assert main(["demo", "--divergences"]) == 0
    out = capsys.readouterr().out
    assert "| same as teacher" in out and "FKL" in out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage: bdkd" in capsys.readouterr().out


def test_version_and_module_entry_point():
    with pytest.raises(SystemExit):
        main(["--version"])
    done = subprocess.run(
        [sys.executable, "-m", "bdkd", "--version"], capture_output=True, text=True, check=True
    )
    assert __version__ in done.stdout


def _save_logits(path, n=400, seed=0, with_val=False):
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 5, generator=g) * 4
    y = torch.randint(0, 5, (n,), generator=g)
    z[torch.arange(n), y] += 3
    arrays = {"logits": z, "labels": y}
    if with_val:
        arrays.update(val_logits=z[: n // 2], val_labels=y[: n // 2])
    if str(path).endswith(".npz"):
        np.savez(path, **{k: v.numpy() for k, v in arrays.items()})
    else:
        torch.save(arrays, path)
    return path


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_calibrate_prints_before_and_after(tmp_path, capsys, suffix):
    path = _save_logits(tmp_path / f"l{suffix}")
    png = tmp_path / "rel.png"
    assert main(["calibrate", str(path), "--diagram", str(png), "--bins", "10"]) == 0
    out = capsys.readouterr().out
    assert "| before" in out and "| after TS (T=" in out and "10 bins" in out
    assert "fitted on a random 200 of 400 samples" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_calibrate_uses_validation_logits_when_present(tmp_path, capsys):
    path = _save_logits(tmp_path / "l.npz", with_val=True)
    assert main(["calibrate", str(path)]) == 0
    assert "fitted on the file's val_logits/val_labels" in capsys.readouterr().out


def test_calibrate_errors_are_one_line(tmp_path, capsys):
    import numpy as np

    assert main(["calibrate", str(tmp_path / "missing.npz")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    np.savez(bad, scores=np.zeros((3, 2)))
    assert main(["calibrate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "missing ['logits', 'labels']; found keys ['scores']" in err
    assert err.count("\n") == 1
    labels_out_of_range = tmp_path / "range.npz"
    np.savez(labels_out_of_range, logits=np.zeros((3, 2)), labels=np.array([0, 1, 2]))
    assert main(["calibrate", str(labels_out_of_range)]) == 2
    assert "labels must lie in [0, 1]" in capsys.readouterr().err
    text = tmp_path / "l.txt"
    text.write_text("x")
    assert main(["calibrate", str(text)]) == 2
    assert "unsupported file type" in capsys.readouterr().err


def test_demo_trains_every_run_two_at_a_time_and_reads_its_table(tmp_path, monkeypatch, capsys):
    from bdkd import demo

    monkeypatch.setattr(demo, "fashion_mnist_present", lambda *a: False)  # digits fallback
    out = tmp_path / "demo"
    assert main(["demo", "--no-install", "--out", str(out), "train.epochs=1"]) == 0
    printed = capsys.readouterr().out
    assert "BD-KD's student: ECE" in printed and "student from scratch" in printed
    report = (out / "report.md").read_text().splitlines()
    # the report opens with the figure and the one-line reading
    assert report[2].startswith("![reliability") and report[4].startswith("**BD-KD's student")
    assert (out / "reliability.png").is_file()
    for name in ("teacher", "scratch", "kd", "dml", "bdkd"):
        assert (out / name / "summary.json").is_file(), name


def test_demo_reading_names_the_best_calibrated_student():
    from bdkd.demo import reading

    row = {"accuracy": 0.8, "ece": 0.05}
    rows = {"scratch": row, "kd": row, "dml": {**row, "ece": 0.02}, "bdkd": {**row, "ece": 0.01}}
    assert "the best calibrated student here" in reading(rows)
    rows["dml"] = {**row, "ece": 0.005}
    assert "DML's student is better calibrated" in reading(rows)


def test_demo_validates_every_config_before_training(tmp_path, monkeypatch, capsys):
    from bdkd import demo

    monkeypatch.setattr(demo, "fashion_mnist_present", lambda *a: False)
    out = tmp_path / "demo"
    assert main(["demo", "--no-install", "--out", str(out), "method.temperature=0"]) == 2
    assert "method.temperature" in capsys.readouterr().err and not out.exists()
