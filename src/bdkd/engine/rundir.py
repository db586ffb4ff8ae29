"""The run directory: created without clobbering, with metrics.jsonl kept consistent."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


class RunDirError(ValueError):
    """A run directory that would be overwritten, or that cannot be resumed."""


def prepare_run_dir(path: Path, *, force: bool) -> Path:
    """Create ``path``; if it holds anything, refuse unless ``force`` (which clears it)."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run directory {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        if not force:
            raise RunDirError(
                f"run directory {path} already exists; pass --force to overwrite it, "
                f"--resume {path} to continue it, or set output.name"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "checkpoints").mkdir(exist_ok=True)
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file through a temp file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of ``path`` (a torn last line is ignored)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def truncate_metrics(path: Path, keep_epochs: int) -> None:
    """Keep only the lines of epochs < ``keep_epochs`` (what the checkpoint already covers)."""
    kept = [r for r in read_jsonl(path) if r.get("epoch", 0) < keep_epochs]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
