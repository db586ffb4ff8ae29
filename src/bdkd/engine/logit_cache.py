"""A teacher-logit cache for offline distillation.

The frozen teacher's logits on sample i of epoch e depend only on (teacher weights, sample,
its augmentation in epoch e). bdkd draws augmentation parameters per (seed, epoch, sample)
(:meth:`bdkd.data.Augment.epoch_params`), so the logits of the first run can be stored in a
memory-mapped ``(epochs, N, C)`` array and replayed exactly by later runs (another student,
other hyper-parameters) without running the teacher. ``meta.json`` records what the logits
were computed from; a cache whose key differs (another teacher checkpoint, dataset, subset,
seed or augmentation) or whose array is damaged is refused with a clear error. Without
augmentation (``static=True``) a sample's logits are the same in every epoch: one slice is
stored, filled in the first epoch and read in all others.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bdkd.files import make_dirs, write_json

DTYPES = {"fp16": np.float16, "fp32": np.float32}


class CacheError(ValueError):
    """A teacher-logit cache that is stale, corrupt or does not fit this run."""


def state_hash(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, shapes, dtypes and values)."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class TeacherLogitCache:
    """Memory-mapped teacher logits, one slice per epoch, filled by the first run."""

    def __init__(
        self,
        path: str | Path,
        *,
        epochs: int,
        n: int,
        num_classes: int,
        dtype: str,
        key: dict[str, Any],
        create: bool = True,
        static: bool = False,
    ) -> None:
        self.path = Path(path)
        self.static = static
        epochs = 1 if static else epochs
        self.shape = (epochs, n, num_classes)
        self.dtype = dtype
        self.key = key
        meta_path, array_path = self.path / "meta.json", self.path / "logits.npy"
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
            except json.JSONDecodeError:
                raise CacheError(
                    f"teacher cache {self.path}: meta.json is corrupt; delete the directory to rebuild it"
                ) from None
            if meta.get("key") != key:
                changed = sorted(
                    k
                    for k in set(key) | set(meta.get("key", {}))
                    if meta.get("key", {}).get(k) != key.get(k)
                )
                raise CacheError(
                    f"teacher cache {self.path} is stale: it was built for a different {changed}; "
                    "delete it or point train.teacher_cache elsewhere"
                )
            if tuple(meta.get("shape", ())) != self.shape or meta.get("dtype") != dtype:
                raise CacheError(
                    f"teacher cache {self.path} holds shape {meta.get('shape')} {meta.get('dtype')}, this run needs "
                    f"{list(self.shape)} {dtype}"
                )
            try:
                self.array = np.load(array_path, mmap_mode="r+")
            except (OSError, ValueError) as err:
                raise CacheError(
                    f"teacher cache {self.path}: logits.npy is missing or corrupt ({err})"
                ) from None
            if self.array.shape != self.shape or self.array.dtype != DTYPES[dtype]:
                raise CacheError(
                    f"teacher cache {self.path}: logits.npy has shape {self.array.shape} {self.array.dtype}, expected {self.shape}"
                )
            self.filled = [bool(v) for v in meta["filled"]]
        elif create:
            if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
                raise CacheError(
                    f"teacher cache {self.path} exists and is not a bdkd teacher cache (no "
                    "meta.json); point train.teacher_cache at a new or empty directory"
                )
            make_dirs(self.path)
            self.array = np.lib.format.open_memmap(
                array_path, mode="w+", dtype=DTYPES[dtype], shape=self.shape
            )
            self.filled = [False] * epochs
            self._write_meta()
        else:
            raise CacheError(f"teacher cache {self.path} does not exist")

    def _write_meta(self) -> None:
        write_json(
            self.path / "meta.json",
            {
                "shape": list(self.shape),
                "dtype": self.dtype,
                "key": self.key,
                "filled": self.filled,
            },
        )

    def _slot(self, epoch: int) -> int:
        return 0 if self.static else epoch

    def complete(self, epoch: int) -> bool:
        """Whether epoch ``epoch``'s logits are all stored."""
        return self.filled[self._slot(epoch)]

    def read(self, epoch: int, index: Tensor) -> Tensor:
        """The stored logits (float32) of samples ``index`` in ``epoch``."""
        rows = np.asarray(self.array[self._slot(epoch)][index.cpu().numpy()], dtype=np.float32)
        return torch.from_numpy(rows)

    def write(self, epoch: int, index: Tensor, logits: Tensor) -> None:
        """Store the teacher's logits of samples ``index`` in ``epoch``."""
        self.array[self._slot(epoch)][index.cpu().numpy()] = (
            logits.detach().float().cpu().numpy().astype(self.array.dtype)
        )

    def mark_complete(self, epoch: int) -> None:
        """Flush the epoch's slice to disk, then record it as filled."""
        self.array.flush()
        self.filled[self._slot(epoch)] = True
        self._write_meta()

    def reload(self) -> None:
        """Re-read which epochs are filled (another process may have marked them)."""
        self.filled = [bool(v) for v in json.loads((self.path / "meta.json").read_text())["filled"]]
