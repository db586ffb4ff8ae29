"""LLM distillation: token-level objectives and a fused LM-head + divergence path."""

from bdkd.llm.fused import fused_linear_divergence
from bdkd.llm.metrics import TokenMetrics, mean_rouge_l, rouge_l
from bdkd.llm.objectives import TOKEN_OBJECTIVES, bdkd_rows, token_loss, token_rows

__all__ = [
    "TOKEN_OBJECTIVES",
    "TokenMetrics",
    "bdkd_rows",
    "fused_linear_divergence",
    "mean_rouge_l",
    "rouge_l",
    "token_loss",
    "token_rows",
]
