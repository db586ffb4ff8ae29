"""Calibration metrics, a streaming accumulator, temperature scaling, per-bin statistics.

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

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CalibrationAccumulator",
    "ReliabilityBins",
    "SegmentationAccumulator",
    "adaptive_ece",
    "apply_temperature",
    "binned_sums",
    "brier",
    "calibration_metrics",
    "classwise_ece",
    "ece",
    "ece_from_sums",
    "fit_temperature",
    "mce",
    "nll",
    "reliability_bins",
    "split_for_fitting",
]

ArrayLike = Any  # torch.Tensor | numpy.ndarray | nested sequence


# --------------------------------------------------------------------------- input checks


def _as_tensor(x: ArrayLike, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a torch tensor or a numpy array ({err})") from None


def _check_labels(labels: ArrayLike, n: int, num_classes: int) -> Tensor:
    y = _as_tensor(labels, "labels")
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


def _check_scores(x: ArrayLike, name: str) -> Tensor:
    t = _as_tensor(x, name)
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


def _check_probs(probs: ArrayLike, labels: ArrayLike) -> tuple[Tensor, Tensor]:
    p = _check_scores(probs, "probs")
    if (p < 0).any() or (p > 1).any():
        raise ValueError("probs must lie in [0, 1]; pass softmax outputs, or logits to nll()")
    sums = p.sum(dim=1)
    if ((sums - 1).abs() > 1e-3).any():
        worst = float((sums - 1).abs().max())
        raise ValueError(f"each row of probs must sum to 1 (worst row is off by {worst:.3g})")
    return p, _check_labels(labels, p.shape[0], p.shape[1])


def _check_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    return n_bins


# --------------------------------------------------------------------------- binning


def _bin_index(values: Tensor, n_bins: int) -> Tensor:
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
    idx = _bin_index(values, n_bins)
    out = torch.zeros(n_bins, 3, dtype=torch.float64, device=values.device)
    out[:, 0].index_add_(0, idx, torch.ones_like(values, dtype=torch.float64))
    out[:, 1].index_add_(0, idx, values.double())
    out[:, 2].index_add_(0, idx, hits.to(values.device).double())
    return out.cpu()


def _classwise_sums(probs: Tensor, labels: Tensor, n_bins: int) -> Tensor:
    """(C, M, 3) per-class, per-bin [count, sum of q_ik, sum of 1[y = k]], summed on the
    probabilities' device and returned on the CPU."""
    n, c = probs.shape
    dev = probs.device
    idx = _bin_index(probs, n_bins) + n_bins * torch.arange(c, device=dev).unsqueeze(0)
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


def _mce_from_sums(sums: Tensor) -> float:
    count = sums[:, 0]
    nonempty = count > 0
    gaps = (sums[nonempty, 2] - sums[nonempty, 1]).abs() / count[nonempty]
    return float(gaps.max()) if gaps.numel() else 0.0


def _adaptive_from_pairs(conf: Tensor, correct: Tensor, n_bins: int) -> float:
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


def _confidence(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    conf, pred = probs.max(dim=1)
    return conf, (pred == labels)


# --------------------------------------------------------------------------- one-shot metrics


def ece(probs: ArrayLike, labels: ArrayLike, *, n_bins: int = 15) -> float:
    """Expected calibration error over ``n_bins`` equal-width confidence bins."""
    p, y = _check_probs(probs, labels)
    conf, correct = _confidence(p, y)
    return ece_from_sums(binned_sums(conf, correct, _check_bins(n_bins)), p.shape[0])


def mce(probs: ArrayLike, labels: ArrayLike, *, n_bins: int = 15) -> float:
    """Maximum calibration error: the largest |accuracy - confidence| of a non-empty bin."""
    p, y = _check_probs(probs, labels)
    conf, correct = _confidence(p, y)
    return _mce_from_sums(binned_sums(conf, correct, _check_bins(n_bins)))


def adaptive_ece(probs: ArrayLike, labels: ArrayLike, *, n_bins: int = 15) -> float:
    """ECE over ``n_bins`` equal-mass bins of the sorted confidences."""
    p, y = _check_probs(probs, labels)
    conf, correct = _confidence(p, y)
    return _adaptive_from_pairs(conf, correct, _check_bins(n_bins))


def classwise_ece(probs: ArrayLike, labels: ArrayLike, *, n_bins: int = 15) -> float:
    """Mean over classes of the ECE of each class's probability against ``1[y = k]``."""
    p, y = _check_probs(probs, labels)
    sums = _classwise_sums(p, y, _check_bins(n_bins))
    return ece_from_sums(sums, p.shape[0]) / p.shape[1]


def nll(logits: ArrayLike, labels: ArrayLike) -> float:
    """Negative log-likelihood ``-mean log softmax(logits)[y]`` (takes logits, not probs)."""
    z = _check_scores(logits, "logits")
    y = _check_labels(labels, z.shape[0], z.shape[1])
    return float(-torch.log_softmax(z.double(), dim=1)[torch.arange(z.shape[0]), y].mean())


def brier(probs: ArrayLike, labels: ArrayLike) -> float:
    """Brier score ``mean_i sum_k (q_ik - 1[y_i = k])^2``."""
    p, y = _check_probs(probs, labels)
    p = p.double()
    onehot = torch.zeros_like(p)
    onehot[torch.arange(p.shape[0]), y] = 1.0
    return float(((p - onehot) ** 2).sum(dim=1).mean())


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
        _check_bins(self.n_bins)
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
            keep = _as_tensor(mask, "mask").bool()
            logits, labels = _as_tensor(logits, "logits")[keep], _as_tensor(labels, "labels")[keep]
            if logits.shape[0] == 0:
                return
        z = _check_scores(logits, "logits")
        if z.shape[1] != self.num_classes:
            raise ValueError(
                f"logits have {z.shape[1]} classes, the accumulator {self.num_classes}"
            )
        y = _check_labels(labels, z.shape[0], z.shape[1])
        z = z.double()
        log_p = torch.log_softmax(z, dim=1)
        p = log_p.exp()
        conf, correct = _confidence(p, y)
        onehot = torch.zeros_like(p)
        onehot[torch.arange(p.shape[0]), y] = 1.0
        k = min(5, self.num_classes)
        top5 = (p.topk(k, dim=1).indices == y.unsqueeze(1)).any(dim=1)
        self.bins += binned_sums(conf, correct, self.n_bins)
        self.class_bins += _classwise_sums(p, y, self.n_bins)
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
            "mce": _mce_from_sums(self.bins),
            "adaptive_ece": _adaptive_from_pairs(
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
        _check_bins(self.n_bins)
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
        self.class_bins += _classwise_sums(p, y, self.n_bins)
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
        count = self.bins[:, 0].numpy()
        centers = (np.arange(self.n_bins) + 0.5) / self.n_bins
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = np.where(count > 0, self.bins[:, 2].numpy() / count, 0.0)
            mean_conf = np.where(count > 0, self.bins[:, 1].numpy() / count, centers)
        n = float(self.totals[0])
        return ReliabilityBins(
            count=count,
            accuracy=acc,
            confidence=mean_conf,
            ece=ece_from_sums(self.bins, n),
            mean_confidence=float(self.bins[:, 1].sum()) / n,
            mean_accuracy=float(self.totals[1]) / n,
        )

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
            "mce": _mce_from_sums(self.bins),
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
    z = _check_scores(logits, "logits")
    acc = CalibrationAccumulator(num_classes=z.shape[1], n_bins=n_bins)
    acc.update(z, labels)
    return acc.compute()


# --------------------------------------------------------------------------- temperature scaling

_MIN_INV_T, _MAX_INV_T = 1e-3, 1e3


def fit_temperature(logits: ArrayLike, labels: ArrayLike, *, max_iter: int = 100) -> float:
    """Temperature T > 0 minimising the NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    Fit it on a held-out split, never on the test split. The NLL is convex in ``b = 1/T``,
    so a safeguarded Newton iteration on ``b`` (float64) finds the global minimum; T is
    kept within [1e-3, 1e3] (it runs to the bound only when the NLL keeps falling, e.g. for
    perfectly separated data). Scaling by T never changes accuracy.
    """
    z = _check_scores(logits, "logits").double()
    y = _check_labels(labels, z.shape[0], z.shape[1])
    zy = z[torch.arange(z.shape[0]), y]

    def nll_at(b: float) -> float:
        return float((torch.logsumexp(b * z, dim=1) - b * zy).mean())

    b = 1.0
    f = nll_at(b)
    for _ in range(max_iter):
        q = torch.softmax(b * z, dim=1)
        mean_z = (q * z).sum(1)
        grad = float((mean_z - zy).mean())
        hess = float(((q * z * z).sum(1) - mean_z**2).mean())
        step = grad / hess if hess > 1e-12 else math.copysign(b, grad)
        new_b = min(max(b - step, _MIN_INV_T), _MAX_INV_T)
        new_f = nll_at(new_b)
        while new_f > f and abs(new_b - b) > 1e-12:  # backtrack
            new_b = 0.5 * (new_b + b)
            new_f = nll_at(new_b)
        if abs(new_b - b) <= 1e-10 * max(1.0, b):
            b = new_b
            break
        b, f = new_b, new_f
    return 1.0 / b


def apply_temperature(logits: ArrayLike, temperature: float) -> Tensor:
    """``logits / temperature`` as a float64 tensor."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return _check_scores(logits, "logits").double() / temperature


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


def reliability_bins(probs: ArrayLike, labels: ArrayLike, *, n_bins: int = 15) -> ReliabilityBins:
    """Count, accuracy and mean confidence of each of ``n_bins`` equal-width confidence bins
    (empty bins: accuracy 0, confidence the bin's centre), with the ECE over them."""
    p, y = _check_probs(probs, labels)
    n_bins = _check_bins(n_bins)
    conf, correct = _confidence(p, y)
    sums = binned_sums(conf, correct, n_bins).numpy()
    count = sums[:, 0]
    centers = (np.arange(n_bins) + 0.5) / n_bins
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(count > 0, sums[:, 2] / count, 0.0)
        mean_conf = np.where(count > 0, sums[:, 1] / count, centers)
    return ReliabilityBins(
        count=count,
        accuracy=acc,
        confidence=mean_conf,
        ece=ece_from_sums(torch.from_numpy(sums), p.shape[0]),
        mean_confidence=float(conf.double().mean()),
        mean_accuracy=float(correct.double().mean()),
    )


def split_for_fitting(
    logits: ArrayLike, labels: ArrayLike, *, fraction: float, seed: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A random ``fraction`` of the samples to fit a temperature on and the rest to report
    on: ``(fit_logits, fit_labels, report_logits, report_labels)``, drawn by ``seed``."""
    z = _check_scores(logits, "logits")
    y = _check_labels(labels, z.shape[0], z.shape[1])
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the fitting fraction must be in (0, 1), got {fraction}")
    n = z.shape[0]
    cut = int(round(n * fraction))
    if cut < 1 or cut >= n:
        raise ValueError(f"{n} samples cannot be split with a fitting fraction of {fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return z[order[:cut]], y[order[:cut]], z[order[cut:]], y[order[cut:]]


def __getattr__(name: str) -> object:
    """``reliability_diagram`` moved to :mod:`bdkd.report` and ``load_logits`` to
    :mod:`bdkd.files`; both stay importable from here."""
    if name == "reliability_diagram":
        from bdkd.report import reliability_diagram

        return reliability_diagram
    if name == "load_logits":
        from bdkd.files import load_logits

        return load_logits
    raise AttributeError(f"module 'bdkd.calibration' has no attribute {name!r}")
