"""LLM distillation: token-level objectives, a fused LM-head + divergence path, any
transformers causal LM in and a ``save_pretrained`` student out (see docs/llm.md).

The Hugging Face trainer integrations live in :mod:`bdkd.llm.hf` (imported on demand).
"""

from bdkd.llm.fused import fused_linear_divergence
from bdkd.llm.metrics import TokenMetrics, mean_rouge_l, rouge_l
from bdkd.llm.objectives import (
    TOKEN_OBJECTIVES,
    bdkd_rows,
    effective_objective,
    token_loss,
    token_rows,
)

__all__ = [
    "TOKEN_OBJECTIVES",
    "TokenMetrics",
    "bdkd_rows",
    "effective_objective",
    "fused_linear_divergence",
    "mean_rouge_l",
    "rouge_l",
    "token_loss",
    "token_rows",
]
