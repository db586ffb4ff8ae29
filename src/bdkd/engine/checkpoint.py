"""Checkpoints: written atomically, read without ever running code, with every RNG state.

A checkpoint holds only tensors and plain data (dicts, lists, strings, numbers), so it is
read with ``torch.load(..., weights_only=True)``: a file carrying anything else (e.g. a
pickled object whose ``__reduce__`` runs a command) is refused before any of it runs.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bdkd.config import ConfigError, check_bounded
from bdkd.files import UnreadableFile, atomic_path, safe_torch_load


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit (the message says which file)."""


REQUIRED_KEYS = ("networks", "config")


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the same directory, fsync, then rename over ``path``.

    A crash or a full disk at any moment leaves either the old file or the new one, never a
    torn file; a failure is an :class:`bdkd.files.OutputError` naming ``path``.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a bdkd checkpoint; a missing, truncated, foreign or unsafe file gives a
    :class:`CheckpointError` (and never runs code from the file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = safe_torch_load(path, map_location)
    except UnreadableFile as err:
        raise CheckpointError(f"checkpoint {err}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is not a bdkd checkpoint (not a dict)")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a bdkd checkpoint (no {missing} entry)")
    if not isinstance(state["networks"], dict) or not isinstance(state["config"], dict):
        raise CheckpointError(f"checkpoint {path}: 'networks' and 'config' must be mappings")
    try:  # its stored config is plain data within the bounds of a config file
        check_bounded(state["config"], f"checkpoint {path}, its stored config")
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    return state


def rng_state() -> dict[str, Any]:
    """Every global RNG state (Python, numpy, torch CPU and CUDA)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        # plain data, so that the checkpoint loads with weights_only=True
        "numpy": [
            str(name),
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def network_weights(path: str | Path, network: str | None = None) -> tuple[dict[str, Any], str]:
    """The state dict of one network in a checkpoint (default: the run's deployed network).

    ``path`` may be a run directory (its ``checkpoints/last.pt``) or a checkpoint file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    name = network or state.get("deployed")
    if name not in state["networks"]:
        raise CheckpointError(
            f"checkpoint {path} has no network {name!r}; it has {sorted(state['networks'])}"
        )
    return state["networks"][name], name


def load_network_state(net: torch.nn.Module, weights: dict[str, Any], where: str) -> None:
    """``net.load_state_dict(weights)`` with a one-line error naming ``where``."""
    try:
        net.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])[:400]
        raise CheckpointError(f"{where}: the weights do not fit the network ({detail})") from None
