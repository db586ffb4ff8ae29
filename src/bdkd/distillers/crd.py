"""CRD: contrastive representation distillation (Tian et al., ICLR 2020).

Each network's embedding (the classifier's input by default) goes through its own linear
head to ``feat_dim`` and is L2-normalised. Two memory banks hold every training sample's
student and teacher embedding; a sample's positive is its own slot in the other network's
bank and its ``nce_k`` negatives are slots drawn uniformly. Scores ``exp(<v, m> / nce_t) /
Z`` (Z fixed from the first batch, as the reference code does) enter the NCE loss of
:func:`bdkd.losses.feature.crd_nce_loss` in both directions (student anchor against the
teacher bank, teacher anchor against the student bank); after the loss, each sample's
slots move to ``normalize(m * old + (1 - m) * new)`` with momentum ``nce_m``.

Needs each sample's index in the training set (the engine passes it) and the number of
training samples (the memory size). The negatives are a counter-based hash of (sample index,
step, draw), so the same samples draw the same negatives however the batch is split over
processes; under DDP the bank update and Z gather every process's samples first, so two
processes train what one does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from bdkd.distillers.base import DistillerOutput, RowLayout, register_distiller
from bdkd.distillers.feature import FeatureDistiller, as_vector, feature_width
from bdkd.hparams import HParamError, NonNegative, NonNegativeInt, PositiveInt, Range, Unit
from bdkd.losses.feature import crd_nce_loss

__all__ = ["CRDDistiller", "draw_negatives"]

_MASK = (1 << 63) - 1


def _mix(x: Tensor) -> Tensor:
    """A splitmix64-style bit mixer on int64 tensors (wrapping arithmetic), kept
    non-negative."""
    x = x * -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed 64-bit integer
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * -4658895280553007687  # 0xBF58476D1CE4E5B9
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * -7723592293110705685  # 0x94D049BB133111EB
    x = x ^ ((x >> 31) & ((1 << 33) - 1))
    return x & _MASK


def draw_negatives(index: Tensor, step: int, k: int, n: int, seed: int = 0) -> Tensor:
    """(N, k) slot indices in [0, n) for samples ``index`` at ``step``: a hash of (seed,
    step, sample, draw), independent of how the batch is split."""
    draws = torch.arange(k, device=index.device, dtype=torch.int64)
    base = (int(seed) * 1_000_003 + int(step)) * n + index.to(torch.int64)
    return _mix(base[:, None] * k + draws[None, :] + 0x632BE5AB) % n


def _gather(x: Tensor) -> Tensor:
    """Every process's ``x`` concatenated in rank order (``x`` itself without a group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class Embed(nn.Module):
    """CRD's head: a linear map to ``feat_dim`` and L2 normalisation."""

    def __init__(self, width: int, feat_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, feat_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


@register_distiller("crd")
class CRDDistiller(FeatureDistiller):
    """CRD: ``ce_weight CE + feature_weight (L_NCE(s -> teacher bank) + L_NCE(t -> student
    bank))``, plus a logit term when ``logit`` is set ("CRD + KD": ``logit: kd``). Defaults:
    the reference code's CIFAR-100 setting (weight 0.8, feat_dim 128, nce_k 16384, nce_t
    0.07, nce_m 0.5); ``nce_k`` must be below the number of training samples."""

    term = "crd"
    feature_use = "embedding"
    single = True
    uses_index = True

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        *,
        feature_weight: Annotated[float, Range(ge=0, space=(0.3, 0.8, 2.0))] = 0.8,
        feat_dim: PositiveInt = 128,
        nce_k: PositiveInt = 16384,
        nce_t: Annotated[float, Range(gt=0)] = 0.07,
        nce_m: Unit = 0.5,
        ce_weight: NonNegative = 1.0,
        logit: str = "none",
        logit_weight: NonNegative = 1.0,
        logit_kwargs: Mapping[str, Any] | None = None,
        warmup_epochs: NonNegativeInt = 0,
        num_samples: int | None = None,
        layout: RowLayout | None = None,
    ) -> None:
        super().__init__(
            networks,
            feature_weight=feature_weight,
            ce_weight=ce_weight,
            logit=logit,
            logit_weight=logit_weight,
            logit_kwargs=logit_kwargs,
            warmup_epochs=warmup_epochs,
            layout=layout,
        )
        if num_samples is None:
            raise ValueError("crd needs num_samples, the number of training samples")
        if nce_k >= num_samples:
            raise HParamError(
                "nce_k",
                f"must be below the number of training samples ({num_samples}) the memory "
                f"bank holds, got {nce_k}",
            )
        self.embed_s = Embed(feature_width(self.shapes["student"][0]), feat_dim)
        self.embed_t = Embed(feature_width(self.shapes["teacher"][0]), feat_dim)
        self.nce_k, self.nce_t, self.nce_m, self.num_samples = nce_k, nce_t, nce_m, num_samples
        std = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(num_samples, feat_dim) * 2 * std - std)
        self.register_buffer("memory_t", torch.rand(num_samples, feat_dim) * 2 * std - std)
        self.register_buffer("z", torch.full((2,), -1.0, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def extra_modules(self, network: str) -> list[nn.Module]:
        return [self.embed_s, self.embed_t] if network == "student" else []

    def _scores(self, anchor: Tensor, memory: Tensor, slots: Tensor, which: int) -> Tensor:
        bank = memory[slots].detach()  # (N, K + 1, D)
        scores = torch.exp(torch.einsum("nkd,nd->nk", bank, anchor.float()) / self.nce_t)
        if self.z[which] < 0:  # fixed once from the first batch, over every process
            total = _gather(scores.detach().double().sum().reshape(1)).sum()
            count = _gather(scores.new_tensor([scores.numel()], dtype=torch.float64)).sum()
            self.z[which] = total / count * self.num_samples
        return scores / self.z[which].to(scores.dtype)

    @torch.no_grad()
    def _update(self, memory: Tensor, index: Tensor, values: Tensor) -> None:
        index, values = _gather(index), _gather(values.detach().float())
        moved = F.normalize(memory[index] * self.nce_m + values * (1 - self.nce_m), dim=1)
        memory.index_copy_(0, index, moved.to(memory.dtype))

    def forward(
        self,
        inputs: Tensor,
        labels: Tensor,
        epoch: int = 0,
        cached: Mapping[str, Tensor] | None = None,
        index: Tensor | None = None,
    ) -> DistillerOutput:
        if index is None:
            raise ValueError("crd needs each sample's index in the training set")
        feats, logits = self.run_tapped(inputs, cached)
        v_s = self.embed_s(as_vector(feats["student"][0]))
        v_t = self.embed_t(as_vector(feats["teacher"][0]))
        index = index.to(v_s.device).long()
        negatives = draw_negatives(index, int(self.steps), self.nce_k, self.num_samples)
        slots = torch.cat([index[:, None], negatives], dim=1)
        loss_s = crd_nce_loss(self._scores(v_s, self.memory_t, slots, 0), self.num_samples)
        loss_t = crd_nce_loss(self._scores(v_t, self.memory_s, slots, 1), self.num_samples)
        self._update(self.memory_s, index, v_s)
        self._update(self.memory_t, index, v_t)
        self.steps += 1
        return self.combine(feats, logits, labels, epoch, {self.term: loss_s + loss_t})
