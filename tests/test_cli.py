"""The command line's plumbing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bdkd import __version__
from bdkd.cli import main


def test_demo_prints_the_divergence_table(capsys):
    assert main(["demo"]) == 0
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
