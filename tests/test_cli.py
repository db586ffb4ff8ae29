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
