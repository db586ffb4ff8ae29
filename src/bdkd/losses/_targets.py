"""Helpers shared by the target-aware objectives (DKD, NKD, USKD)."""

from __future__ import annotations

import torch
from torch import Tensor


def check_target(logits: Tensor, target: Tensor) -> None:
    """Raise a clear error unless ``target`` holds one class index per row of ``logits``."""
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
    if target.shape != logits.shape[:1]:
        raise ValueError(
            f"target must have shape ({logits.shape[0]},) (one class index per row), "
            f"got {tuple(target.shape)}"
        )
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= logits.shape[1]):
        raise ValueError(
            f"target class indices must lie in [0, {logits.shape[1] - 1}], "
            f"got range [{int(target.min())}, {int(target.max())}]"
        )
    if logits.shape[1] < 2:
        raise ValueError("target-aware objectives need at least 2 classes")


def non_target(values: Tensor, target: Tensor) -> Tensor:
    """The (N, C - 1) entries of ``values`` (N, C) with each row's target column removed."""
    n, c = values.shape
    keep = torch.ones_like(values, dtype=torch.bool)
    keep[torch.arange(n, device=values.device), target.long()] = False
    return values[keep].reshape(n, c - 1)


def at_target(values: Tensor, target: Tensor) -> Tensor:
    """The (N,) entries of ``values`` (N, C) at each row's target column."""
    return values.gather(1, target.long().unsqueeze(1)).squeeze(1)
