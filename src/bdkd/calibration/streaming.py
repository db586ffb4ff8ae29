"""Streaming calibration: every metric accumulated batch by batch (and across processes),
for classification (:class:`CalibrationAccumulator`) and for the pixels of segmentation
(:class:`SegmentationAccumulator`); :func:`calibration_metrics` for one set of logits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bdkd.calibration.metrics import (
    ArrayLike,
    ReliabilityBins,
    adaptive_from_pairs,
    as_tensor,
    binned_sums,
    check_bins,
    check_labels,
    check_scores,
    classwise_sums,
    confidence,
    ece_from_sums,
    mce_from_sums,
    reliability_from_sums,
)

__all__ = ["CalibrationAccumulator", "SegmentationAccumulator", "calibration_metrics"]


# --------------------------------------------------------------------------- streaming


@dataclass
class CalibrationAccumulator:
    """Accumulates every metric batch by batch; ``compute()`` equals the one-shot functions.

    ``update(logits, labels)`` takes logits (NLL needs them). Counts and sums live in float64
    tensors that add across batches and processes (:meth:`merge`, :meth:`all_reduce`);
    adaptive ECE needs the (confidence, correct) pairs themselves, which concatenate.
    """

    num_classes: int
    n_bins: int = 15

    def __post_init__(self) -> None:
        check_bins(self.n_bins)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        self.bins = torch.zeros(self.n_bins, 3, dtype=torch.float64)
        self.class_bins = torch.zeros(self.num_classes, self.n_bins, 3, dtype=torch.float64)
        # [count, correct, top5 correct, nll sum, brier sum]
        self.totals = torch.zeros(5, dtype=torch.float64)
        self._conf: list[Tensor] = []
        self._correct: list[Tensor] = []

    def update(self, logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> None:
        """Add one batch of logits (N, C) and labels (N,); with ``mask`` (N,) bool, only the
        rows where it is True."""
        if mask is not None:
            keep = as_tensor(mask, "mask").bool()
            logits, labels = as_tensor(logits, "logits")[keep], as_tensor(labels, "labels")[keep]
            if logits.shape[0] == 0:
                return
        z = check_scores(logits, "logits")
        if z.shape[1] != self.num_classes:
            raise ValueError(
                f"logits have {z.shape[1]} classes, the accumulator {self.num_classes}"
            )
        y = check_labels(labels, z.shape[0], z.shape[1])
        z = z.double()
        log_p = torch.log_softmax(z, dim=1)
        p = log_p.exp()
        conf, correct = confidence(p, y)
        onehot = torch.zeros_like(p)
        onehot[torch.arange(p.shape[0]), y] = 1.0
        k = min(5, self.num_classes)
        top5 = (p.topk(k, dim=1).indices == y.unsqueeze(1)).any(dim=1)
        self.bins += binned_sums(conf, correct, self.n_bins)
        self.class_bins += classwise_sums(p, y, self.n_bins)
        self.totals += torch.tensor(
            [
                z.shape[0],
                float(correct.sum()),
                float(top5.sum()),
                float(-log_p[torch.arange(z.shape[0]), y].sum()),
                float(((p - onehot) ** 2).sum()),
            ],
            dtype=torch.float64,
        )
        self._conf.append(conf)
        self._correct.append(correct)

    @property
    def count(self) -> int:
        """Samples seen so far."""
        return int(self.totals[0])

    def merge(self, other: CalibrationAccumulator) -> None:
        """Add another accumulator's state (e.g. another process's) into this one."""
        if (other.num_classes, other.n_bins) != (self.num_classes, self.n_bins):
            raise ValueError("cannot merge accumulators with different num_classes or n_bins")
        self.bins += other.bins
        self.class_bins += other.class_bins
        self.totals += other.totals
        self._conf.extend(other._conf)
        self._correct.extend(other._correct)

    def all_reduce(self) -> None:
        """Sum the state over every process of the default ``torch.distributed`` group."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        for t in (self.bins, self.class_bins, self.totals):
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        pairs = (
            torch.stack([torch.cat(self._conf), torch.cat(self._correct).double()])
            if self._conf
            else torch.zeros(2, 0, dtype=torch.float64)
        )
        gathered: list[Tensor | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, pairs)
        merged = torch.cat([g for g in gathered if g is not None], dim=1)
        self._conf, self._correct = [merged[0]], [merged[1].bool()]

    def compute(self) -> dict[str, float]:
        """Every metric over all samples seen: accuracy, top5, ECE, MCE, adaptive and
        classwise ECE, NLL, Brier."""
        n = float(self.totals[0])
        if n == 0:
            raise ValueError("no samples: call update() before compute()")
        return {
            "accuracy": float(self.totals[1]) / n,
            "top5": float(self.totals[2]) / n,
            "ece": ece_from_sums(self.bins, n),
            "mce": mce_from_sums(self.bins),
            "adaptive_ece": adaptive_from_pairs(
                torch.cat(self._conf), torch.cat(self._correct), self.n_bins
            ),
            "classwise_ece": ece_from_sums(self.class_bins, n) / self.num_classes,
            "nll": float(self.totals[3]) / n,
            "brier": float(self.totals[4]) / n,
        }


@dataclass
class SegmentationAccumulator:
    """Pixel-level metrics of dense predictions, streamed over batches and processes.

    ``update(logits (N, C, H, W), labels (N, H, W))`` counts only pixels whose label is not
    ``ignore_index``. ``compute()`` gives pixel ``accuracy``, ``miou`` (mean over classes
    present in the labels or the predictions of IoU = TP / (TP + FP + FN)), ``per_class_iou``
    (None for a class seen nowhere), and the calibration metrics of every valid pixel as a
    sample: ``ece``, ``mce``, ``classwise_ece``, ``nll``, ``brier`` (adaptive ECE would need
    every pixel's confidence kept, so it is not computed). With ``temperature`` set, the same
    calibration metrics of ``logits / temperature`` come as ``ece_after_ts``,
    ``nll_after_ts``, ``brier_after_ts``. With ``sample_fraction`` > 0, a uniform random
    sample of that fraction of the valid pixels' logits is kept (``sample()``): what a
    temperature is fitted on, and what reliability figures and saved predictions show.
    """

    num_classes: int
    n_bins: int = 15
    ignore_index: int = 255
    temperature: float | None = None
    sample_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_bins(self.n_bins)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        c = self.num_classes
        self.confusion = torch.zeros(c, c, dtype=torch.float64)  # [true, predicted]
        self.bins = torch.zeros(self.n_bins, 3, dtype=torch.float64)
        self.class_bins = torch.zeros(c, self.n_bins, 3, dtype=torch.float64)
        self.scaled_bins = torch.zeros(self.n_bins, 3, dtype=torch.float64)
        # [pixels, correct, nll sum, brier sum, scaled nll sum, scaled brier sum]
        self.totals = torch.zeros(6, dtype=torch.float64)
        self._generator = torch.Generator().manual_seed(self.seed)
        self._sample: list[tuple[Tensor, Tensor]] = []

    def update(self, logits: Tensor, labels: Tensor, mask: Tensor | None = None) -> None:
        """Add a batch of logits (N, C, H, W) and label maps (N, H, W)."""
        if logits.dim() != 4 or labels.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                f"expected logits (N, C, H, W) and labels (N, H, W), got {tuple(logits.shape)} "
                f"and {tuple(labels.shape)}"
            )
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits have {logits.shape[1]} classes, the accumulator {self.num_classes}"
            )
        y = labels.reshape(-1).long().cpu()
        valid = y != self.ignore_index
        if mask is not None:
            valid &= mask.reshape(-1).bool().cpu()
        z = logits.detach().permute(0, 2, 3, 1).reshape(-1, self.num_classes).cpu()[valid]
        y = y[valid]
        if y.numel() == 0:
            return
        if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
            raise ValueError(
                f"labels must lie in [0, {self.num_classes - 1}] or be {self.ignore_index}"
            )
        if not torch.isfinite(z).all():
            raise ValueError("logits contain NaN or infinite values")
        z = z.double()
        log_p = torch.log_softmax(z, dim=1)
        p = log_p.exp()
        conf, pred = p.max(dim=1)
        correct = pred == y
        self.confusion += (
            torch.bincount(y * self.num_classes + pred, minlength=self.num_classes**2)
            .reshape(self.num_classes, self.num_classes)
            .double()
        )
        self.bins += binned_sums(conf, correct, self.n_bins)
        self.class_bins += classwise_sums(p, y, self.n_bins)
        rows = torch.arange(y.numel())
        brier = (p**2).sum(1) - 2 * p[rows, y] + 1
        row = [
            y.numel(),
            float(correct.sum()),
            float(-log_p[rows, y].sum()),
            float(brier.sum()),
            0.0,
            0.0,
        ]
        if self.temperature is not None:
            log_q = torch.log_softmax(z / self.temperature, dim=1)
            q = log_q.exp()
            q_conf, q_pred = q.max(dim=1)
            self.scaled_bins += binned_sums(q_conf, q_pred == y, self.n_bins)
            row[4] = float(-log_q[rows, y].sum())
            row[5] = float(((q**2).sum(1) - 2 * q[rows, y] + 1).sum())
        self.totals += torch.tensor(row, dtype=torch.float64)
        if self.sample_fraction > 0:
            keep = torch.rand(y.numel(), generator=self._generator) < self.sample_fraction
            self._sample.append((z[keep].float(), y[keep]))

    def all_reduce(self) -> None:
        """Sum the state over every process of the default ``torch.distributed`` group (the
        pixel sample is gathered too)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        for t in (self.confusion, self.bins, self.class_bins, self.scaled_bins, self.totals):
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        if self.sample_fraction > 0:
            z, y = self.sample()
            parts: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (z, y))
            self._sample = [tuple(part) for part in parts]

    def sample(self) -> tuple[Tensor, Tensor]:
        """The kept sample of valid pixels: logits (M, C) float32 and labels (M,)."""
        if not self._sample:
            return torch.zeros(0, self.num_classes), torch.zeros(0, dtype=torch.long)
        return torch.cat([z for z, _ in self._sample]), torch.cat([y for _, y in self._sample])

    def reliability(self) -> ReliabilityBins:
        """Per-bin statistics of every valid pixel (for reliability diagrams)."""
        return reliability_from_sums(self.bins, float(self.totals[1]) / float(self.totals[0]))

    def compute(self) -> dict[str, Any]:
        """The metrics over every valid pixel seen (see the class docstring)."""
        n = float(self.totals[0])
        if n == 0:
            raise ValueError("no valid pixels: every label was the ignore index")
        tp = self.confusion.diag()
        union = self.confusion.sum(0) + self.confusion.sum(1) - tp
        present = union > 0
        iou = torch.where(present, tp / union.clamp_min(1), torch.nan)
        out: dict[str, Any] = {
            "accuracy": float(self.totals[1]) / n,
            "miou": float(iou[present].mean()),
            "per_class_iou": [None if torch.isnan(v) else float(v) for v in iou],
            "ece": ece_from_sums(self.bins, n),
            "mce": mce_from_sums(self.bins),
            "classwise_ece": ece_from_sums(self.class_bins, n) / self.num_classes,
            "nll": float(self.totals[2]) / n,
            "brier": float(self.totals[3]) / n,
            "pixels": int(n),
        }
        if self.temperature is not None:
            out.update(
                temperature=self.temperature,
                ece_after_ts=ece_from_sums(self.scaled_bins, n),
                nll_after_ts=float(self.totals[4]) / n,
                brier_after_ts=float(self.totals[5]) / n,
            )
        return out


def calibration_metrics(
    logits: ArrayLike, labels: ArrayLike, *, n_bins: int = 15
) -> dict[str, float]:
    """Every metric of :class:`CalibrationAccumulator` for one set of logits."""
    z = check_scores(logits, "logits")
    acc = CalibrationAccumulator(num_classes=z.shape[1], n_bins=n_bins)
    acc.update(z, labels)
    return acc.compute()
