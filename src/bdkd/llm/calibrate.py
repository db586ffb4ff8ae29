"""Token temperature scaling of a causal LM: fit T on validation tokens, fold it into the head.

A temperature T divides every next-token logit; it is fitted by minimising the mean
next-token NLL over the validation split's target tokens (Guo et al. 2017, per token). The
vocabulary is too large to keep the logits, so the NLL is accumulated for a grid of 16
temperatures per pass (log-spaced between the bounds of :mod:`bdkd.calibration.temperature`,
then twice between the best point's neighbours): three passes put T within 1 % of itself.
Sums are float64 and are summed over a process group.

Folding: the LM head's weight (and bias) divided by T makes ``from_pretrained`` +
``generate`` / logits use the calibrated distribution; a head tied to the input embeddings
is untied first (a copy), so the input embeddings are unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from bdkd.calibration import MAX_TEMPERATURE, MIN_TEMPERATURE, trust_note
from bdkd.llm.evaluate import NextTokenTask, run_lm
from bdkd.llm.models import is_lora

__all__ = [
    "FitTask",
    "NLLGrid",
    "fit_lm_temperature",
    "fit_note",
    "fold_problem",
    "fold_temperature",
    "grid",
]


PASSES, PASS_POINTS = 3, 16
"""The fit's passes over the validation split and the temperatures each tries: the first
over [MIN_TEMPERATURE, MAX_TEMPERATURE] (steps of x2.5), each next between the best point's
neighbours (x1.13, then x1.016): T within 1 % of the grid-free optimum."""


def grid(low: float, high: float, n: int) -> Tensor:
    """``n`` log-spaced temperatures from ``low`` to ``high`` (float64)."""
    return torch.logspace(math.log10(low), math.log10(high), n, dtype=torch.float64)


class NLLGrid:
    """The summed next-token NLL at each of ``temperatures``, the token count and the
    number of wrong top-1 tokens (an accumulator of the engine's evaluation loop)."""

    def __init__(self, temperatures: Tensor) -> None:
        self.temperatures = temperatures.double()
        self.sums = torch.zeros(len(temperatures), dtype=torch.float64)
        self.totals = torch.zeros(2, dtype=torch.float64)  # tokens, errors

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor, mask: Tensor | None = None, *_: Any) -> None:
        m = torch.ones_like(labels, dtype=torch.bool) if mask is None else mask
        z, y = logits[m].float(), labels[m].long()
        if z.numel() == 0:
            return
        picked = z.gather(1, y[:, None]).squeeze(1)
        for i, t in enumerate(self.temperatures.tolist()):
            nll = torch.logsumexp(z / t, dim=-1) - picked / t
            self.sums[i] += float(nll.double().sum())
        self.totals += torch.tensor([z.shape[0], float((z.argmax(-1) != y).sum())]).double()

    def all_reduce(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            for t in (self.sums, self.totals):
                dist.all_reduce(t, op=dist.ReduceOp.SUM)

    def best(self) -> int:
        return int(torch.argmin(self.sums))


class FitTask:
    """The next-token task whose accumulator is an :class:`NLLGrid` (for
    :func:`bdkd.llm.evaluate.run_lm`)."""

    name = "next_token_temperature"

    def __init__(self, temperatures: Tensor, vocab: int | None = None) -> None:
        self.temperatures = temperatures
        self.predict = NextTokenTask(vocab=vocab).predict

    def accumulator(self, network: str = "") -> NLLGrid:
        return NLLGrid(self.temperatures)


def fit_note(tokens: float, errors: float, temperature: float) -> str | None:
    """Why a token temperature should not be trusted (too few wrong tokens, or at a bound)."""
    return trust_note(int(errors), int(tokens), temperature, "wrong next tokens")


def fold_problem(model: Any) -> str | None:
    """Why ``model``'s temperature cannot be folded into its head (None: it can)."""
    if is_lora(model) or any(type(c).__name__.startswith("Peft") for c in type(model).__mro__):
        return "a LoRA (PEFT) student: merge the adapter first (its head is the base's)"
    config = getattr(model, "config", None)
    if getattr(config, "final_logit_softcapping", None):
        return "the model soft-caps its logits after the head (final_logit_softcapping)"
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        return f"its output layer is {type(head).__name__}, not a linear head"
    return None


@torch.no_grad()
def fold_temperature(model: Any, temperature: float) -> bool:
    """Divide ``model``'s LM head by ``temperature`` in place (untying it from the input
    embeddings first, if tied); returns whether the head was untied."""
    problem = fold_problem(model)
    if problem is not None:
        raise ValueError(f"cannot fold a temperature into this model: {problem}")
    head = model.get_output_embeddings()
    inputs = model.get_input_embeddings()
    tied = inputs is not None and head.weight.data_ptr() == inputs.weight.data_ptr()
    trainable = head.weight.requires_grad
    head.weight = nn.Parameter(head.weight.detach().clone() / temperature, trainable)
    if head.bias is not None:
        head.bias.div_(temperature)
    if getattr(model, "config", None) is not None:
        model.config.tie_word_embeddings = False
    return tied


def fit_lm_temperature(
    model: Any,
    examples: list,
    pad: int,
    device: torch.device,
    vocab: int | None = None,
    **run: Any,
) -> dict[str, Any]:
    """The temperature minimising ``model``'s mean next-token NLL over ``examples`` (three
    passes of 16 log-spaced temperatures, each between the previous best point's
    neighbours); ``run`` goes to :func:`bdkd.llm.evaluate.run_lm` (batch, parallel,
    autocast, cache, split). Returns ``temperature``, ``note`` (None when it can be
    trusted), ``tokens``, ``errors`` and the validation NLL at T = 1 and at T."""
    temperatures = torch.unique(
        torch.cat([grid(MIN_TEMPERATURE, MAX_TEMPERATURE, PASS_POINTS), torch.ones(1).double()])
    )
    first: NLLGrid | None = None
    for _ in range(PASSES):
        result = run_lm(
            {"model": model}, examples, pad, device, FitTask(temperatures, vocab), **run
        )
        acc = result.accumulators["model"]
        first = first or acc
        i = acc.best()
        t = float(temperatures[i])
        low = float(temperatures[max(i - 1, 0)])
        high = float(temperatures[min(i + 1, len(temperatures) - 1)])
        best_nll = float(acc.sums[i])
        temperatures = grid(low, high, PASS_POINTS)
    assert first is not None
    tokens, errors = (float(v) for v in first.totals)
    ones = (first.temperatures == 1.0).nonzero()[0]
    return {
        "temperature": t,
        "note": fit_note(tokens, errors, t),
        "tokens": tokens,
        "errors": errors,
        "val_nll_before": float(first.sums[int(ones)]) / tokens,
        "val_nll_after": best_nll / tokens,
    }


CALIBRATION_KEYS = ("accuracy", "ece", "nll", "brier")


def not_learnt(metrics: dict[str, float]) -> str | None:
    """A flag for a model whose next-token accuracy is below the frequency of the most
    common target token (always predicting that token would do better)."""
    acc, majority = metrics.get("accuracy"), metrics.get("majority_rate")
    if acc is None or majority is None or acc >= majority:
        return None
    return (
        f"calibration numbers of a model that has not learnt the task: its next-token accuracy "
        f"({100 * acc:.2f} %) is below the frequency of the most common target token "
        f"({100 * majority:.2f} %)"
    )


def calibrate_models(
    networks: dict[str, Any],
    before: dict[str, dict[str, float]],
    val: list,
    test: list,
    pad: int,
    device: torch.device,
    *,
    fold: str | None = None,
    bins: int = 15,
    vocab: int | None = None,
    **run: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit a token temperature for each of ``networks`` (name -> model) on ``val`` and
    measure it on ``test``: the network named ``fold`` gets T folded into its head (when it
    can; it is then measured as it is, the file that will be saved), the others are measured
    with their logits divided by T. ``before`` holds each network's test metrics at T = 1.
    Returns the calibration record and, per network, the test accumulators after (for a
    reliability diagram)."""
    from bdkd.llm.evaluate import evaluate_lm

    record: dict[str, Any] = {}
    after_metrics: dict[str, Any] = {}
    for name, model in networks.items():
        fit = fit_lm_temperature(model, val, pad, device, vocab, **run)
        t = fit["temperature"]
        entry: dict[str, Any] = {**fit, "folded": False, "fold_note": None}
        keep: dict[str, Any] = {}
        if name == fold:
            problem = fold_problem(model)
            if problem is None:
                entry["untied"] = fold_temperature(model, t)
                entry["folded"] = True
            else:
                entry["fold_note"] = problem
        scale = 1.0 if entry["folded"] else t
        after = evaluate_lm(
            model, None, test, pad, device, bins=bins, temperature=scale, keep=keep,
            vocab=vocab, **run,
        )  # fmt: skip
        after_metrics[name] = keep["student"]
        entry["before"] = {k: before[name][k] for k in CALIBRATION_KEYS if k in before[name]}
        entry["after"] = {k: after[k] for k in CALIBRATION_KEYS}
        entry["flag"] = not_learnt(before[name])
        record[name] = entry
    return record, after_metrics
