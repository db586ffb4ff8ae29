"""Calibration metrics of one set of predictions, the binning they share, per-bin statistics.

Definitions (docs/calibration.md; Guo et al. 2017 for ECE and temperature scaling), with ``conf_i = max_k q_ik`` and ``M`` bins:

- ECE: equal-width bins ``((m-1)/M, m/M]`` (a confidence of exactly 0 goes to the first),
  ``sum_m |B_m|/n |acc(B_m) - conf(B_m)|``;
- MCE: ``max_m |acc(B_m) - conf(B_m)|`` over non-empty bins;
- adaptive ECE: the same sum over M equal-mass bins (sorted confidences split into M groups
  as ``numpy.array_split`` does: the first ``n mod M`` groups hold one more);
- classwise ECE: for each class k, bin ``q_ik`` in M equal-width bins with accuracy the
  fraction of ``y_i = k``; the mean over classes of ``sum_m |B_mk|/n |acc - conf|``;
- NLL: ``-mean log q_{i, y_i}`` from ``log_softmax`` of the logits;
- Brier: ``mean_i sum_k (q_ik - 1[y_i = k])^2`` (summed over classes, not divided by C).

Every metric accepts torch tensors or numpy arrays and returns a Python float. Sums are
accumulated in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ArrayLike",
    "ReliabilityBins",
    "adaptive_ece",
    "adaptive_from_pairs",
    "as_tensor",
    "bin_index",
    "binned_sums",
    "brier",
    "check_bins",
    "check_labels",
    "check_probs",
    "check_scores",
    "classwise_ece",
    "classwise_sums",
    "confidence",
    "ece",
    "ece_from_sums",
    "mce",
    "mce_from_sums",
    "nll",
    "reliability_bins",
]

ArrayLike = Any  # torch.Tensor | numpy.ndarray | nested sequence


# --------------------------------------------------------------------------- input checks


def as_tensor(x: ArrayLike, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a torch tensor or a numpy array ({err})") from None


def check_labels(labels: ArrayLike, n: int, num_classes: int) -> Tensor:
    y = as_tensor(labels, "labels")
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(
            f"labels must have shape ({n},) to match the predictions, got {tuple(y.shape)}"
        )
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"labels must be integer class indices, got dtype {y.dtype}")
    y = y.long()
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got values in [{lo}, {hi}]")
    return y


def check_scores(x: ArrayLike, name: str) -> Tensor:
    t = as_tensor(x, name)
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape (N, C), got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty: need at least one sample")
    if t.shape[1] < 2:
        raise ValueError(f"{name} needs at least 2 classes, got {t.shape[1]}")
    if not t.is_floating_point():
        t = t.double()
    elif t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).any(dim=1).sum())
        raise ValueError(f"{name} contains NaN or infinite values in {bad} row(s)")
    return t


def check_probs(probs: ArrayLike, labels: ArrayLike) -> tuple[Tensor, Tensor]:
    p = check_scores(probs, "probs")
    if (p < 0).any() or (p > 1).any():
        raise ValueError("probs must lie in [0, 1]; pass softmax outputs, or logits to nll()")
    sums = p.sum(dim=1)
    if ((sums - 1).abs() > 1e-3).any():
        worst = float((sums - 1).abs().max())
        raise ValueError(f"each row of probs must sum to 1 (worst row is off by {worst:.3g})")
    return p, check_labels(labels, p.shape[0], p.shape[1])


def check_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    return n_bins


# --------------------------------------------------------------------------- binning


def bin_index(values: Tensor, n_bins: int) -> Tensor:
    """Equal-width bin of each value in [0, 1]: bins ((m-1)/M, m/M], 0 in the first.

    The edges are rounded to the values' own dtype, so a float32 0.6 sits on the edge 9/15
    exactly as a float64 0.6 does.
    """
    inner = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)[1:-1]
    inner = inner.to(device=values.device, dtype=values.dtype)
    return torch.bucketize(values.contiguous(), inner, right=False)


def binned_sums(values: Tensor, hits: Tensor, n_bins: int) -> Tensor:
    """(M, 3) per-bin [count, sum of values, sum of hits] (float64) over equal-width bins of
    ``values`` in [0, 1]: what streaming ECE sums across batches. Summed on the values'
    device, returned on the CPU (where the accumulators live)."""
    idx = bin_index(values, n_bins)
    out = torch.zeros(n_bins, 3, dtype=torch.float64, device=values.device)
    out[:, 0].index_add_(0, idx, torch.ones_like(values, dtype=torch.float64))
    out[:, 1].index_add_(0, idx, values.double())
    out[:, 2].index_add_(0, idx, hits.to(values.device).double())
    return out.cpu()


def classwise_sums(probs: Tensor, labels: Tensor, n_bins: int) -> Tensor:
    """(C, M, 3) per-class, per-bin [count, sum of q_ik, sum of 1[y = k]], summed on the
    probabilities' device and returned on the CPU."""
    n, c = probs.shape
    dev = probs.device
    idx = bin_index(probs, n_bins) + n_bins * torch.arange(c, device=dev).unsqueeze(0)
    onehot = torch.zeros(n, c, dtype=torch.float64, device=dev)
    onehot[torch.arange(n, device=dev), labels.to(dev)] = 1.0
    out = torch.zeros(c * n_bins, 3, dtype=torch.float64, device=dev)
    flat = idx.reshape(-1)
    out[:, 0].index_add_(0, flat, torch.ones(n * c, dtype=torch.float64, device=dev))
    out[:, 1].index_add_(0, flat, probs.double().reshape(-1))
    out[:, 2].index_add_(0, flat, onehot.reshape(-1))
    return out.reshape(c, n_bins, 3).cpu()


def ece_from_sums(sums: Tensor, n: float) -> float:
    """ECE from per-bin sums (:func:`binned_sums`, summed over batches or processes) of
    ``n`` samples."""
    return float((sums[..., 2] - sums[..., 1]).abs().sum() / n)


def mce_from_sums(sums: Tensor) -> float:
    count = sums[:, 0]
    nonempty = count > 0
    gaps = (sums[nonempty, 2] - sums[nonempty, 1]).abs() / count[nonempty]
    return float(gaps.max()) if gaps.numel() else 0.0


def adaptive_from_pairs(conf: Tensor, correct: Tensor, n_bins: int) -> float:
    order = torch.argsort(conf, stable=True)
    conf, correct = conf[order].double(), correct[order].double()
    n = conf.numel()
    total = 0.0
    for chunk_conf, chunk_correct in zip(
        torch.tensor_split(conf, n_bins), torch.tensor_split(correct, n_bins), strict=True
    ):
        if chunk_conf.numel():
            total += abs(float(chunk_correct.sum() - chunk_conf.sum()))
    return total / n


def confidence(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    conf, pred = probs.max(dim=1)
    return conf, (pred == labels)


# --------------------------------------------------------------------------- one-shot metrics


def ece(probs: ArrayLike, labels: ArrayLike, *, n_bins: int = 15) -> float:
    """Expected calibration error over ``n_bins`` equal-width confidence bins."""
    p, y = check_probs(probs, labels)
    conf, correct = confidence(p, y)
    return ece_from_sums(binned_sums(conf, correct, check_bins(n_bins)), p.shape[0])


def mce(probs: ArrayLike, labels: ArrayLike, *, n_bins: int = 15) -> float:
    """Maximum calibration error: the largest |accuracy - confidence| of a non-empty bin."""
    p, y = check_probs(probs, labels)
    conf, correct = confidence(p, y)
    return mce_from_sums(binned_sums(conf, correct, check_bins(n_bins)))


def adaptive_ece(probs: ArrayLike, labels: ArrayLike, *, n_bins: int = 15) -> float:
    """ECE over ``n_bins`` equal-mass bins of the sorted confidences."""
    p, y = check_probs(probs, labels)
    conf, correct = confidence(p, y)
    return adaptive_from_pairs(conf, correct, check_bins(n_bins))


def classwise_ece(probs: ArrayLike, labels: ArrayLike, *, n_bins: int = 15) -> float:
    """Mean over classes of the ECE of each class's probability against ``1[y = k]``."""
    p, y = check_probs(probs, labels)
    sums = classwise_sums(p, y, check_bins(n_bins))
    return ece_from_sums(sums, p.shape[0]) / p.shape[1]


def nll(logits: ArrayLike, labels: ArrayLike) -> float:
    """Negative log-likelihood ``-mean log softmax(logits)[y]`` (takes logits, not probs)."""
    z = check_scores(logits, "logits")
    y = check_labels(labels, z.shape[0], z.shape[1])
    return float(-torch.log_softmax(z.double(), dim=1)[torch.arange(z.shape[0]), y].mean())


def brier(probs: ArrayLike, labels: ArrayLike) -> float:
    """Brier score ``mean_i sum_k (q_ik - 1[y_i = k])^2``."""
    p, y = check_probs(probs, labels)
    p = p.double()
    onehot = torch.zeros_like(p)
    onehot[torch.arange(p.shape[0]), y] = 1.0
    return float(((p - onehot) ** 2).sum(dim=1).mean())


# --------------------------------------------------------------------------- per-bin statistics


@dataclass
class ReliabilityBins:
    """Per-bin statistics of top-label confidence (what a reliability diagram draws)."""

    count: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    ece: float
    mean_confidence: float
    mean_accuracy: float


def reliability_from_sums(sums: Tensor, mean_accuracy: float) -> ReliabilityBins:
    """:class:`ReliabilityBins` of per-bin sums (``binned_sums``: count, confidence sum,
    hit sum) accumulated over any number of predictions (tokens, pixels, images);
    ``mean_accuracy`` is the overall accuracy (empty bins: accuracy 0, confidence the bin's
    centre)."""
    s = sums.double().cpu().numpy()
    n_bins, count = s.shape[0], s[:, 0]
    n = float(count.sum())
    centers = (np.arange(n_bins) + 0.5) / n_bins
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(count > 0, s[:, 2] / count, 0.0)
        mean_conf = np.where(count > 0, s[:, 1] / count, centers)
    return ReliabilityBins(
        count=count,
        accuracy=acc,
        confidence=mean_conf,
        ece=ece_from_sums(torch.from_numpy(s), n),
        mean_confidence=float(s[:, 1].sum()) / n if n else 0.0,
        mean_accuracy=mean_accuracy,
    )


def reliability_bins(probs: ArrayLike, labels: ArrayLike, *, n_bins: int = 15) -> ReliabilityBins:
    """Count, accuracy and mean confidence of each of ``n_bins`` equal-width confidence bins
    (empty bins: accuracy 0, confidence the bin's centre), with the ECE over them."""
    p, y = check_probs(probs, labels)
    n_bins = check_bins(n_bins)
    conf, correct = confidence(p, y)
    return reliability_from_sums(binned_sums(conf, correct, n_bins), float(correct.double().mean()))
