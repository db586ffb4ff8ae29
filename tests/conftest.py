"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from bdkd.cli import main

DIGITS = Path(__file__).resolve().parents[1] / "configs" / "digits"


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> Path:
    """A digits teacher run (2 epochs of configs/digits/teacher.yaml) for offline methods."""
    out = tmp_path_factory.mktemp("teacher") / "teacher"
    args = [
        "train",
        str(DIGITS / "teacher.yaml"),
        "train.epochs=2",
        "train.progress=false",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    return out
