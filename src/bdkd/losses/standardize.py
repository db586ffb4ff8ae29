"""Logit standardization (Sun et al., CVPR 2024, "Logit Standardization in KD")."""

from __future__ import annotations

import torch
from torch import Tensor


def standardize_logits(logits: Tensor, *, eps: float = 1e-7) -> Tensor:
    """``(z - mean(z)) / (std(z) + eps)`` per row (last dim), computed in at least float32.

    Applied to both networks' logits before any objective (the offline distiller's
    ``logit_standardization`` option); the CIFAR recipe pairs it with KD at base temperature 2
    and weight 9. The standard deviation is the sample one (Bessel, ``torch.std``), as in
    the reference code (docs/methods.md).
    """
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    mean = z.mean(dim=-1, keepdim=True)
    std = z.std(dim=-1, keepdim=True)
    return (z - mean) / (std + eps)
