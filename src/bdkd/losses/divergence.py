"""The divergences of :mod:`bdkd.divergences` as token objectives (no ``T^2`` factor).

They are registered for the token side only (``objective.name`` of ``bdkd llm-distill``); on
images, the same divergences come with their methods' scaling (``kd`` is ``T^2`` times
forward KL).
"""

from __future__ import annotations

from bdkd import divergences as D
from bdkd.losses.registry import register_objective

for _name in (
    "forward_kl",
    "reverse_kl",
    "js_divergence",
    "skew_forward_kl",
    "skew_reverse_kl",
    "total_variation",
    "ab_divergence",
):
    register_objective(_name, rows=D.ROW_FUNCTIONS[_name], token=_name, image=False)(
        getattr(D, _name)
    )
