"""Hidden-state distillation for causal LMs: the student's hidden states, through a learned
linear projection per mapped layer, matched to the teacher's at the target positions.

``hidden.layers`` pairs indices of the two models' ``hidden_states`` (0 the embeddings, i
the output of layer i, -1 the last, after the final norm); empty pairs the last hidden
states. ``hidden.loss`` is ``cosine`` (``1 - cos(W s, t)`` per token) or ``mse`` (``mean_h
(W s - t)^2`` per token), averaged over the valid target tokens (or summed and divided by
the accumulation normaliser) and over the pairs, times ``hidden.weight``. The projections
(bias-free ``H_s -> H_t``, as DistillKit's and TinyBERT's) train with the student's
optimizer, are kept in the checkpoint and are not part of the saved student. Combines with
every token objective.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "HIDDEN_LOSSES",
    "HiddenStates",
    "build_hidden",
    "hidden_state_loss",
    "resolve_layers",
]

HIDDEN_LOSSES = ("cosine", "mse")


def hidden_state_loss(
    student: Tensor, teacher: Tensor, mask: Tensor, loss: str, normalizer: float | None = None
) -> Tensor:
    """Per-token ``cosine`` or ``mse`` between (B, T, H) states at ``mask`` (B, T): their
    mean, or their sum over ``normalizer``."""
    keep = mask.bool()
    s, t = student[keep].float(), teacher[keep].float()
    if loss == "cosine":
        per_token = 1 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    elif loss == "mse":
        per_token = (s - t).pow(2).mean(-1)
    else:
        raise ValueError(f"hidden.loss must be one of {list(HIDDEN_LOSSES)}, got {loss!r}")
    if normalizer is not None:
        return per_token.sum() / normalizer
    return per_token.mean() if per_token.numel() else per_token.sum()


def resolve_layers(
    pairs: Sequence[Sequence[int]], student_layers: int, teacher_layers: int
) -> list[tuple[int, int]]:
    """``pairs`` as non-negative indices into ``hidden_states`` (``L + 1`` entries for ``L``
    layers); empty: the last of each. Out of range is a ValueError naming the pair."""
    if not pairs:
        return [(student_layers, teacher_layers)]
    out = []
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"each pair is [student layer, teacher layer], got {list(pair)}")
        resolved = []
        for index, layers, who in ((pair[0], student_layers, "student"), (pair[1], teacher_layers, "teacher")):  # fmt: skip
            if not -(layers + 1) <= int(index) <= layers:
                raise ValueError(
                    f"{list(pair)}: the {who} has hidden states 0..{layers} (or -1 for the last)"
                )
            resolved.append(int(index) % (layers + 1))
        out.append((resolved[0], resolved[1]))
    return out


class HiddenStates(nn.Module):
    """The projections of the mapped layers and the weighted loss over them."""

    def __init__(
        self,
        pairs: Sequence[tuple[int, int]],
        student_width: int,
        teacher_width: int,
        *,
        loss: str = "cosine",
        weight: float = 1.0,
    ) -> None:
        super().__init__()
        if loss not in HIDDEN_LOSSES:
            raise ValueError(f"hidden.loss must be one of {list(HIDDEN_LOSSES)}, got {loss!r}")
        self.pairs, self.loss, self.weight = list(pairs), loss, weight
        self.projections = nn.ModuleList(
            nn.Linear(student_width, teacher_width, bias=False) for _ in self.pairs
        )
        for proj in self.projections:  # start as the identity where the widths agree
            if student_width == teacher_width:
                nn.init.eye_(proj.weight)

    def forward(
        self,
        student_states: Sequence[Tensor],
        teacher_states: Sequence[Tensor],
        mask: Tensor,
        normalizer: float | None = None,
    ) -> Tensor:
        """``weight`` times the mean over pairs of :func:`hidden_state_loss`; the states are
        the models' ``hidden_states`` already cut to the positions of ``mask``."""
        total = mask.new_zeros((), dtype=torch.float32)
        for proj, (i, j) in zip(self.projections, self.pairs, strict=True):
            s = proj(student_states[i].to(proj.weight.dtype))
            total = total + hidden_state_loss(s, teacher_states[j].detach(), mask, self.loss, normalizer)  # fmt: skip
        return self.weight * total / len(self.pairs)


def _shape(model: nn.Module) -> tuple[int, int]:
    config = model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(config.num_hidden_layers), int(config.hidden_size)


def build_hidden(
    student: nn.Module,
    teacher: nn.Module,
    *,
    weight: float,
    loss: str,
    layers: Sequence[Sequence[int]],
) -> HiddenStates | None:
    """The hidden-state term of a run (None at weight 0); a layer out of range is a
    ValueError naming the pair."""
    if weight == 0:
        return None
    (s_layers, s_width), (t_layers, t_width) = _shape(student), _shape(teacher)
    pairs = resolve_layers(layers, s_layers, t_layers)
    return HiddenStates(pairs, s_width, t_width, loss=loss, weight=weight)
