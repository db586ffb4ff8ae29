"""What a batch of token sequences is on the LLM side (the bottom of :mod:`bdkd.llm`).

:class:`LMBatch` holds token ids, attention mask and the mask of the tokens that count as
targets; :class:`TopKTeacher` a teacher given by its top-k cache for a batch's target tokens.
Every other module of :mod:`bdkd.llm` imports them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["LMBatch", "TopKTeacher"]


@dataclass
class LMBatch:
    """Token ids (B, T), attention mask (B, T) and the mask of tokens that count as targets
    (B, T): the response tokens, excluding prompt and padding."""

    input_ids: Tensor
    attention_mask: Tensor
    loss_mask: Tensor

    def target_mask(self) -> Tensor:
        """Positions t whose next token t + 1 is a valid target, shape (B, T - 1)."""
        return self.loss_mask[:, 1:].bool() & self.attention_mask[:, 1:].bool()


@dataclass
class TopKTeacher:
    """A teacher given by its top-k cache for the valid tokens of a batch (row-major): token
    ids (M, k), their log-probabilities (M, k) and the log of the remaining mass (M,)."""

    ids: Tensor
    log_probs: Tensor
    tail_log_mass: Tensor
