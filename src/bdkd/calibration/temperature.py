"""Temperature scaling (Guo et al. 2017): one scalar T > 0 fitted on held-out logits by
minimising their NLL; it never changes accuracy."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bdkd.calibration.metrics import ArrayLike, check_labels, check_scores

__all__ = [
    "MIN_ERRORS",
    "MAX_TEMPERATURE",
    "MIN_TEMPERATURE",
    "apply_temperature",
    "fit_temperature",
    "split_for_fitting",
    "temperature_note",
]


# --------------------------------------------------------------------------- temperature scaling

_MIN_INV_T, _MAX_INV_T = 1e-3, 1e3
MIN_TEMPERATURE, MAX_TEMPERATURE = 1.0 / _MAX_INV_T, 1.0 / _MIN_INV_T
"""The range :func:`fit_temperature` keeps T in."""


def fit_temperature(logits: ArrayLike, labels: ArrayLike, *, max_iter: int = 100) -> float:
    """Temperature T > 0 minimising the NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    Fit it on a held-out split, never on the test split. The NLL is convex in ``b = 1/T``,
    so a safeguarded Newton iteration on ``b`` (float64) finds the global minimum; T is
    kept within [1e-3, 1e3] (it runs to the bound only when the NLL keeps falling, e.g. for
    perfectly separated data). Scaling by T never changes accuracy.
    """
    z = check_scores(logits, "logits").double()
    y = check_labels(labels, z.shape[0], z.shape[1])
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
    return check_scores(logits, "logits").double() / temperature


def split_for_fitting(
    logits: ArrayLike, labels: ArrayLike, *, fraction: float, seed: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A random ``fraction`` of the samples to fit a temperature on and the rest to report
    on: ``(fit_logits, fit_labels, report_logits, report_labels)``, drawn by ``seed``."""
    z = check_scores(logits, "logits")
    y = check_labels(labels, z.shape[0], z.shape[1])
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the fitting fraction must be in (0, 1), got {fraction}")
    n = z.shape[0]
    cut = int(round(n * fraction))
    if cut < 1 or cut >= n:
        raise ValueError(f"{n} samples cannot be split with a fitting fraction of {fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return z[order[:cut]], y[order[:cut]], z[order[cut:]], y[order[cut:]]


MIN_ERRORS = 10
"""A temperature fitted on fewer misclassified validation samples than this is not
determined by the data: with almost no errors the NLL keeps falling as T shrinks."""


def trust_note(
    errors: int, total: int, temperature: float, what: str = "misclassified sample(s)"
) -> str | None:
    """Why a temperature fitted on ``total`` predictions of which ``errors`` were wrong
    (``what``: samples, tokens) should not be trusted: too few errors to determine it, or
    fitted at the bound of its range; None when neither."""
    notes = []
    if errors < MIN_ERRORS:
        notes.append(
            f"the validation split has {errors} {what} of {total}, fewer than {MIN_ERRORS}: "
            "too few to determine a temperature"
        )
    if temperature <= MIN_TEMPERATURE * 1.05 or temperature >= MAX_TEMPERATURE / 1.05:
        notes.append(
            f"T = {temperature:.4g} lies at the bound of the fit's range "
            f"[{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]"
        )
    return "; ".join(notes) or None


def temperature_note(logits: ArrayLike, labels: ArrayLike, temperature: float) -> str | None:
    """Why a temperature fitted on ``logits``/``labels`` should not be trusted (too few
    errors to determine it, or fitted at the bound of its range), or None."""
    z = check_scores(logits, "logits")
    y = check_labels(labels, z.shape[0], z.shape[1])
    return trust_note(int((z.argmax(1) != y).sum()), z.shape[0], temperature)
