"""Evaluation of a distilled causal LM: next-token calibration, agreement, ROUGE-L.

Next-token prediction is a classification over the vocabulary at every valid position, so
the calibration metrics of :mod:`bdkd.calibration` apply per token: ECE, NLL (whose
exponential is the perplexity) and Brier, plus next-token accuracy, the teacher agreement
(how often the student's top-1 token is the teacher's, and the mean forward KL to the
teacher), and ROUGE-L between generated and reference responses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from bdkd.calibration import ReliabilityBins, binned_sums, ece_from_sums, reliability_from_sums
from bdkd.divergences import forward_kl
from bdkd.llm.batch import TopKTeacher
from bdkd.llm.fused import bucket_log_probs, teacher_buckets


@dataclass
class TokenMetrics:
    """Streams (B, T, V) student logits, next-token labels, a mask and optionally the teacher's
    logits; ``compute()`` gives perplexity, accuracy, token ECE / NLL / Brier and agreement.

    Only top-label quantities are kept per token (confidence, correctness), so memory does not
    grow with the vocabulary; sums are float64 and add across batches.
    """

    n_bins: int = 15
    bins: Tensor = field(init=False)
    totals: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.bins = torch.zeros(self.n_bins, 3, dtype=torch.float64)
        # tokens, correct, nll sum, brier sum, teacher tokens, top-1 agreement, forward KL sum
        self.totals = torch.zeros(7, dtype=torch.float64)
        self.labels = torch.zeros(0, dtype=torch.float64)  # target-token counts, by id

    def add_labels(self, other: TokenMetrics) -> None:
        """Add ``other``'s target-token counts to this one's."""
        self._grow(other.labels.numel())
        self.labels[: other.labels.numel()] += other.labels

    def _grow(self, size: int) -> None:
        if size > self.labels.numel():
            grown = torch.zeros(size, dtype=torch.float64)
            grown[: self.labels.numel()] = self.labels
            self.labels = grown

    @torch.no_grad()
    def update(
        self,
        logits: Tensor,
        labels: Tensor,
        mask: Tensor | None = None,
        teacher_logits: Tensor | TopKTeacher | None = None,
    ) -> None:
        """Add a batch: ``logits`` (..., V), ``labels`` (...) next-token ids, ``mask`` (...);
        the teacher as its logits (..., V) or as its top-k cache for the valid tokens (the
        forward KL is then the one between the k + 1 bucket distributions)."""
        if labels.shape != logits.shape[:-1]:
            raise ValueError(
                f"labels must have shape {tuple(logits.shape[:-1])}, got {tuple(labels.shape)}"
            )
        if mask is None:
            mask = torch.ones_like(labels, dtype=torch.bool)
        z = logits[mask].float()
        y = labels[mask].long()
        if z.numel() == 0:
            return
        if int(y.min()) < 0 or int(y.max()) >= z.shape[-1]:
            raise ValueError(f"labels must lie in [0, {z.shape[-1] - 1}] at valid positions")
        log_p = torch.log_softmax(z, dim=-1)
        conf, pred = log_p.max(dim=-1)
        conf = conf.exp()
        correct = pred == y
        p_y = log_p.gather(1, y[:, None]).squeeze(1)
        # Brier = sum_k p_k^2 - 2 p_y + 1, without a one-hot of the vocabulary
        brier = (2 * log_p).exp().sum(-1) - 2 * p_y.exp() + 1
        self.bins += binned_sums(conf.double(), correct, self.n_bins)
        self._grow(z.shape[-1])
        self.labels += torch.bincount(y.cpu(), minlength=self.labels.numel()).double()
        row = [
            z.shape[0],
            float(correct.sum()),
            float(-p_y.sum()),
            float(brier.sum()),
            0.0,
            0.0,
            0.0,
        ]
        if isinstance(teacher_logits, TopKTeacher):
            # a cached teacher (its rows are the valid tokens in order): agreement with its
            # top-1 token, forward KL between the k + 1 bucket distributions
            cached = teacher_logits
            t_ids = cached.ids.to(z.device)
            if t_ids.shape[0] != z.shape[0]:
                raise ValueError(
                    f"the cached teacher has {t_ids.shape[0]} tokens, the batch {z.shape[0]}"
                )
            t_b = teacher_buckets(cached.log_probs.to(z.device), cached.tail_log_mass.to(z.device))
            s_b = bucket_log_probs(log_p, t_ids)
            p_t = t_b.exp()
            kl = torch.where(p_t > 0, p_t * (t_b - s_b), torch.zeros_like(p_t))
            row[4] = z.shape[0]
            row[5] = float((t_ids[:, 0] == pred).sum())
            row[6] = float(kl.sum())
        elif teacher_logits is not None:
            t = teacher_logits[mask].float()
            row[4] = t.shape[0]
            row[5] = float((t.argmax(-1) == pred).sum())
            row[6] = float(forward_kl(z, t, reduction="sum"))
        self.totals += torch.tensor(row, dtype=torch.float64)

    def all_reduce(self) -> None:
        """Sum the state over every process of the default ``torch.distributed`` group."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            for t in (self.bins, self.totals, self.labels):
                dist.all_reduce(t, op=dist.ReduceOp.SUM)

    def reliability(self) -> ReliabilityBins:
        """Per-bin statistics of every target token (for reliability diagrams)."""
        return reliability_from_sums(self.bins, float(self.totals[1]) / float(self.totals[0]))

    def compute(self) -> dict[str, float]:
        """``perplexity``, ``accuracy``, ``ece``, ``nll``, ``brier``, ``majority_rate`` (the
        frequency of the most common target token: the accuracy of always predicting it) and,
        with a teacher, ``teacher_top1_agreement`` and ``teacher_forward_kl`` (mean per
        token)."""
        n = float(self.totals[0])
        if n == 0:
            raise ValueError("no valid tokens: call update() with a mask that selects some")
        nll = float(self.totals[2]) / n
        out = {
            "tokens": n,
            "perplexity": math.exp(nll),
            "accuracy": float(self.totals[1]) / n,
            "ece": ece_from_sums(self.bins, n),
            "nll": nll,
            "brier": float(self.totals[3]) / n,
        }
        if self.labels.numel():
            out["majority_rate"] = float(self.labels.max()) / n
        if self.totals[4] > 0:
            out["teacher_top1_agreement"] = float(self.totals[5] / self.totals[4])
            out["teacher_forward_kl"] = float(self.totals[6] / self.totals[4])
        return out


def _lcs(a: Sequence[object], b: Sequence[object]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(candidate: Sequence[object] | str, reference: Sequence[object] | str) -> float:
    """ROUGE-L F1 (beta = 1) from the longest common subsequence; strings are split on
    whitespace (lower-cased), sequences of token ids are used as they are."""
    if isinstance(candidate, str):
        candidate = candidate.lower().split()
    if isinstance(reference, str):
        reference = reference.lower().split()
    if not candidate or not reference:
        return 0.0
    lcs = _lcs(candidate, reference)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def mean_rouge_l(
    candidates: Sequence[Sequence[object] | str], references: Sequence[Sequence[object] | str]
) -> float:
    """Mean ROUGE-L F1 over pairs."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
    if not candidates:
        raise ValueError("no candidates to score")
    return sum(rouge_l(c, r) for c, r in zip(candidates, references, strict=True)) / len(candidates)
