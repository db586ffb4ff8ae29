"""Writing files safely: atomic replacement, one-line errors naming the path, strict JSON.

Every file bdkd writes goes through :func:`atomic_path`: the content is written to a
temporary file in the same directory, flushed, then renamed over the target, so a crash or
a full disk leaves either the old file or the new one, never a torn one, and the temporary
file is removed on any failure. Errors (read-only directory, full disk, a path component
that is a file, torch's ``unexpected pos`` on a short write) become :class:`OutputError`,
one line naming the path.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


class UnreadableFile(ValueError):
    """A file that cannot be read safely: missing, truncated, foreign, or carrying code."""


class OutputError(OSError):
    """A file or directory that cannot be written (the message names it and says why)."""


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def make_dirs(path: str | Path) -> Path:
    """``mkdir -p`` with a one-line error naming the path (e.g. when a component is a file)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create directory {path}: {_reason(err)}") from None
    if not path.is_dir():
        raise OutputError(f"cannot create directory {path}: a file is in the way")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed over
    ``path``. On any error the temporary file is removed and ``path`` is left as it was.

    ``suffix`` is the temporary file's ending (some writers decide the format by it, e.g.
    ``.png`` for matplotlib, ``.npz`` for numpy).
    """
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {_reason(err)}") from None
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; a written file gets the usual mode
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OutputError):
            raise
        raise OutputError(f"cannot write {path}: {_reason(err)}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    return write_bytes(path, text.encode("utf-8"))


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf) replaced by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def dumps_json(obj: Any, *, indent: int | None = None) -> str:
    """Strict JSON (no NaN / Infinity tokens): non-finite numbers are written as null."""
    return json.dumps(finite_or_none(obj), indent=indent, allow_nan=False)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as strict, indented JSON, atomically."""
    return write_text(path, dumps_json(obj, indent=2) + "\n")


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one strict JSON line and flush it to disk (a one-line error if that fails)."""
    path = Path(path)
    try:
        with open(path, "a") as f:
            f.write(dumps_json(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise OutputError(f"cannot write {path}: {_reason(err)}") from None


def check_new_file(path: str | Path, *, force: bool, what: str = "output") -> Path:
    """Refuse to overwrite an existing ``path`` unless ``force``; refuse a directory always.

    Only checks: nothing is written. The error says which flag allows the overwrite.
    """
    path = Path(path)
    if path.is_dir():
        raise FileExistsError(f"{what} {path} is a directory; give a file name")
    if path.exists() and not force:
        raise FileExistsError(f"{what} {path} exists; pass --force to overwrite it")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write {path}: {parent} is a file, not a directory")
            break
    return path


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors.

    Only tensors and plain data are admitted; anything else (a class, a function, a
    ``__reduce__`` payload) is refused by torch's restricted unpickler before it can run.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableFile(f"{path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = " ".join(str(err).split())
        found = re.search(r"GLOBAL (\S+?)[,.]?(?: |$)", text)
        detail = f"GLOBAL {found.group(1)}" if found else text[:160]
        if "Weights only load failed" in text:
            raise UnreadableFile(
                f"{path} holds objects other than tensors and plain data ({detail}); "
                "refused without running any of it"
            ) from None
        raise UnreadableFile(f"{path} is corrupt or truncated ({detail})") from None
    except Exception as err:  # torch raises several types for torn or foreign files
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UnreadableFile(
            f"{path} is corrupt or truncated ({type(err).__name__}: {first}); it was left untouched"
        ) from None


LOGIT_KEYS = ("logits", "labels")


def _read_logit_arrays(path: Path) -> dict[str, Any]:
    """Every array of a ``.npz`` or ``.pt`` logits file (``deployed`` as text)."""
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                raw = {k: np.array(data[k]) for k in data.files}
        except (ValueError, OSError) as err:
            raise ValueError(f"{path}: not a readable .npz file ({err})") from None
        arrays: dict[str, Any] = {}
        for key, value in raw.items():
            if value.dtype.kind in "US":
                arrays[key] = str(value)
            elif value.dtype.kind in "biufc":
                arrays[key] = torch.from_numpy(value)
            else:
                raise ValueError(f"{path}: array {key!r} holds {value.dtype}, not numbers")
        return arrays
    if path.suffix in (".pt", ".pth"):
        try:
            data = safe_torch_load(path)
        except UnreadableFile as err:
            raise ValueError(f"not a readable torch file: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(
                f"{path}: expected a dict with 'logits' and 'labels', got {type(data).__name__}"
            )
        return {k: v if isinstance(v, str) else torch.as_tensor(v) for k, v in data.items()}
    raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .npz or .pt")


def _choose_network(arrays: dict[str, Any], path: Path, network: str | None) -> str | None:
    """Point ``logits`` (and ``val_logits``) at one network's of a file holding several."""
    nets = sorted(k[len("logits_") :] for k in arrays if k.startswith("logits_"))
    if network is None and ("logits" in arrays or not nets):
        return None
    deployed = arrays.get("deployed")
    chosen = network or (deployed if deployed in nets else None)
    if chosen is None and len(nets) == 1:
        chosen = nets[0]
    if chosen is None:
        raise ValueError(
            f"{path} holds the logits of several networks {nets} and names none as deployed; "
            "choose one with --network"
        )
    if chosen not in nets:
        raise ValueError(f"{path}: no logits of network {chosen!r}; it has {nets or ['logits']}")
    arrays["logits"] = arrays[f"logits_{chosen}"]
    if f"val_logits_{chosen}" in arrays:
        arrays["val_logits"] = arrays[f"val_logits_{chosen}"]
    return chosen


def load_logits(path: str | Path, network: str | None = None) -> dict[str, Any]:
    """Read saved logits: a ``.npz`` or ``.pt`` file holding ``logits`` (N, C) and
    ``labels`` (N,), optionally ``val_logits`` and ``val_labels`` for fitting a temperature.

    A file of several networks (``logits_<name>``, as ``bdkd eval --save-logits`` writes
    for a run of two) gives ``network``'s logits, else those of the network it names as
    ``deployed``, else its only one; the choice is returned under ``_network``. Logits must
    be real numbers (complex values are refused, never silently cut to their real part)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file (expected a .npz or .pt with 'logits' and 'labels')"
        )
    arrays = _read_logit_arrays(path)
    chosen = _choose_network(arrays, path, network)
    missing = [k for k in LOGIT_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing {missing}; found keys {sorted(arrays)}")
    if ("val_logits" in arrays) != ("val_labels" in arrays):
        raise ValueError(f"{path}: 'val_logits' and 'val_labels' must be given together")
    for logits_key, labels_key in (("logits", "labels"), ("val_logits", "val_labels")):
        if logits_key not in arrays:
            continue
        z, y = arrays[logits_key], arrays[labels_key]
        if not isinstance(z, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise ValueError(f"{path}: {logits_key!r} and {labels_key!r} must be arrays")
        if z.is_complex() or y.is_complex():
            raise ValueError(
                f"{path}: {logits_key!r} holds complex numbers; logits and labels must be real"
            )
        if z.dim() != 2 or y.dim() != 1:
            raise ValueError(
                f"{path}: {logits_key!r} must be (N, C) and {labels_key!r} (N,), got "
                f"{tuple(z.shape)} and {tuple(y.shape)}"
            )
        if z.shape[0] != y.shape[0]:
            raise ValueError(
                f"{path}: {z.shape[0]} rows of {logits_key!r} but {y.shape[0]} {labels_key!r}"
            )
    if "val_logits" in arrays and arrays["val_logits"].shape[1] != arrays["logits"].shape[1]:
        raise ValueError(
            f"{path}: 'val_logits' has {arrays['val_logits'].shape[1]} classes, 'logits' "
            f"{arrays['logits'].shape[1]}"
        )
    if chosen is not None:
        arrays["_network"] = chosen
    return arrays
