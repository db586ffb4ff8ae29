"""Run directories: created by bdkd with a marker, replaced only when bdkd made them.

A run directory (``bdkd train``, ``bdkd llm-distill``, ``bdkd demo``) carries a marker file
``.bdkd-run`` (JSON: kind, run id, bdkd version). The rules:

- an existing non-empty directory is used only with ``--force``, and only if it carries the
  marker; the current directory, its ancestors and the ancestors of given paths (the
  config file) are never used;
- :func:`check_run_dir` only looks (call it before anything expensive); the directory is
  touched only by :func:`create_run_dir`, after the whole run has been built and validated;
- ``--force`` removes only the entries bdkd writes into a run directory
  (:data:`OWNED_ENTRIES`, and sub-directories that are bdkd run directories themselves);
  anything else a user put there is kept;
- the run id links checkpoints to the directory that wrote them (resume refuses a
  checkpoint of another run).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bdkd.files import append_jsonl, make_dirs, write_json, write_text

MARKER = ".bdkd-run"

OWNED_ENTRIES = (
    MARKER,
    "config.yaml",
    "metrics.jsonl",
    "summary.json",
    "report.md",
    "reliability.png",
    "risk_coverage.png",
    # an LLM teacher cache (bdkd llm-cache-teacher)
    "meta.json",
    "ids.npy",
    "log_probs.npy",
    "tail.npy",
)
"""Files bdkd writes inside a run directory. Sub-directories that carry the marker
themselves (the demo's runs) are bdkd's too."""

STUDENT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
)
"""What ``save_pretrained`` writes for a student (and a LoRA student's base)."""

OWNED_DIRECTORIES: dict[str, tuple[str, ...]] = {
    "checkpoints": ("last.pt", ".last.pt.*", "best.pt", ".best.pt.*"),
    "predictions": ("*.npz", ".*.npz.*"),
    "tensorboard": ("events.out.tfevents.*",),
    # an LLM student (save_pretrained) and its LoRA adapter
    "student-base": STUDENT_FILES,
    "student": STUDENT_FILES,
    "student-adapter": ("adapter_config.json", "adapter_model.safetensors", "README.md"),
    # bdkd eval RUN --shift
    "shift": ("shift*.json", "shift*.md", "shift*.png", ".shift*"),
}
"""Directories bdkd writes inside a run directory, with the names of the files it writes
there: ``--force`` removes only those (and the directory when nothing else is left)."""

__all__ = [
    "MARKER",
    "OWNED_ENTRIES",
    "RunDirError",
    "append_jsonl",
    "check_run_dir",
    "create_run_dir",
    "default_run_dir",
    "read_jsonl",
    "read_marker",
    "refuse_links",
    "truncate_metrics",
    "write_text_atomic",
]


class RunDirError(ValueError):
    """A run directory that would be overwritten, or that cannot be resumed."""


def read_marker(path: str | Path) -> dict[str, Any] | None:
    """The marker of run directory ``path``, or None when it has none (or a damaged one)."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "run_id" in data else None


def _protected(path: Path, protect: Sequence[str | Path]) -> str | None:
    """Why ``path`` must never be a run directory that gets replaced, or None."""
    target = path.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        return "it is the current directory or one of its parents"
    for other in protect:
        other = Path(other).resolve()
        if target == other or target in other.parents:
            return f"it holds {other}"
    if target == Path(target.anchor):
        return "it is a file-system root"
    return None


def check_run_dir(
    path: str | Path, *, force: bool, kind: str = "run", protect: Sequence[str | Path] = ()
) -> Path:
    """Check that ``path`` can become a run directory; writes nothing.

    Accepted: a path that does not exist (its parents are created later), an empty
    directory, or, with ``force``, a directory carrying bdkd's marker. ``protect`` lists
    paths whose directories must survive (the config file).
    """
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            raise RunDirError(f"{kind} directory {path}: {parent} is a file, not a directory")
        if parent.exists():
            break
    if not path.is_dir():
        return path
    if not any(path.iterdir()):
        return path
    if not force:
        raise RunDirError(
            f"{kind} directory {path} already exists; pass --force to replace it, "
            f"--resume {path} to continue it, or choose another --out / output.name"
        )
    why = _protected(path, protect)
    if why is not None:
        raise RunDirError(f"refusing to replace {path} with --force: {why}")
    if read_marker(path) is None:
        raise RunDirError(
            f"refusing to replace {path} with --force: it was not made by bdkd (no {MARKER} "
            "marker); bdkd replaces only its own run directories, so choose another --out"
        )
    return path


def refuse_links(path: str | Path, kind: str = "run") -> Path:
    """Refuse a run directory that is a symbolic link or holds one anywhere inside (a file
    or a directory): bdkd writes into its run directories, and a write through a link would
    land outside the run (a downloaded run whose ``predictions/`` points at a user's folder
    would overwrite it). Links are looked at, never followed."""
    path = Path(path)
    if path.is_symlink():
        raise RunDirError(
            f"{kind} directory {path} is a symbolic link; bdkd writes only into real "
            "directories (give the directory it points to, if it is yours)"
        )
    if not path.is_dir():
        return path
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in [*dirs, *files]:
            entry = Path(root) / name
            if entry.is_symlink():
                raise RunDirError(
                    f"{kind} directory {path} holds a symbolic link, {entry} -> "
                    f"{os.readlink(entry)}; bdkd never writes through links in a run directory "
                    "(they lead outside it): remove the link, or copy the run without it"
                )
    return path


def _remove_owned(path: Path) -> None:
    """Remove what bdkd wrote in run directory ``path``; keep everything else (a user's file,
    even inside ``checkpoints/``, stays, and so does the directory holding it). Symbolic
    links are removed as links, never followed."""
    for entry in sorted(path.iterdir()):
        if entry.is_symlink() or not entry.is_dir():
            if entry.name in OWNED_ENTRIES or entry.name in OWNED_DIRECTORIES:
                entry.unlink()
        elif read_marker(entry) is not None:
            _remove_owned(entry)
        elif entry.name in OWNED_DIRECTORIES:
            patterns = OWNED_DIRECTORIES[entry.name]
            for inner in entry.iterdir():
                if (inner.is_symlink() or inner.is_file()) and any(
                    inner.match(p) for p in patterns
                ):
                    inner.unlink()
        else:
            continue
        if entry.is_dir() and not entry.is_symlink() and not any(entry.iterdir()):
            entry.rmdir()


def create_run_dir(
    path: str | Path,
    *,
    force: bool,
    kind: str = "run",
    protect: Sequence[str | Path] = (),
    subdirs: Sequence[str] = ("checkpoints",),
) -> str:
    """Make ``path`` a fresh run directory and return its new run id.

    Checks again (:func:`check_run_dir`); with ``force`` an existing bdkd run directory
    loses the entries bdkd wrote (:data:`OWNED_ENTRIES`) and keeps everything else.
    """
    path = check_run_dir(path, force=force, kind=kind, protect=protect)
    if path.is_dir() and read_marker(path) is not None:
        _remove_owned(path)
    make_dirs(path)
    for sub in subdirs:
        make_dirs(path / sub)
    run_id = uuid.uuid4().hex
    from bdkd import __version__

    write_json(path / MARKER, {"kind": kind, "run_id": run_id, "bdkd": __version__})
    return run_id


def default_run_dir(config_path: str | Path, output_dir: str, name: str | None, seed: int) -> Path:
    """``output_dir/name``, with ``name`` defaulting to ``<config stem>-seed<seed>``."""
    return Path(output_dir) / (name or f"{Path(config_path).stem}-seed{seed}")


def check_name(name: str | None, key: str = "output.name") -> None:
    """A run name must be one plain path component (no separators, not '.' or '..')."""
    if name is None:
        return
    bad = (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or os.sep in name
        or "\x00" in name
    )
    if bad:
        raise RunDirError(
            f"config key {key!r}: must be a plain directory name inside output.dir, got {name!r}"
        )


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file through a temp file and a rename."""
    write_text(path, text)


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


def truncate_metrics(path: Path, keep: int, key: str = "epoch") -> None:
    """Keep only the lines whose ``key`` is < ``keep`` (what the checkpoint already covers)."""
    kept = [r for r in read_jsonl(path) if r.get(key, 0) < keep]
    write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
