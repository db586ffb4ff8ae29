"""`bdkd llm-eval MODEL --data FILE --out DIR`: any model directory, cached hub id or GGUF
file evaluated on local data (the formats of :mod:`bdkd.llm.data`; every row is evaluated,
nothing is split off), and, given a teacher, how often the model's top token is the
teacher's (with the teacher's own metrics beside).

Calibration without a validation split: the rows are split in two halves (even and odd
positions); a token temperature fitted on each half is measured on the other, and the two
halves' sums give "ECE after TS" over every row (cross-fitting: no row is measured with a
temperature fitted on it). The temperature fitted on every row is the one to fold. ``DIR``
gets ``summary.json``, ``report.md`` and ``reliability.png``; it is a bdkd output directory,
never overwritten without ``--force``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bdkd.config import MAX_BINS
from bdkd.engine.build import resolve_device
from bdkd.engine.rundir import check_run_dir, create_run_dir
from bdkd.files import write_json, write_text
from bdkd.llm.calibrate import fit_lm_temperature, not_learnt
from bdkd.llm.data import Example, Fields, LMDataError, read_rows, tokenize_rows
from bdkd.llm.evaluate import evaluate_lm, lm_report
from bdkd.llm.metrics import TokenMetrics

__all__ = ["cross_fitted", "evaluate_model"]


def cross_fitted(
    model: Any, examples: list[Example], pad: int, device: torch.device, *, bins: int, batch: int
) -> tuple[dict[str, Any], TokenMetrics]:
    """ECE / NLL / Brier after temperature scaling, cross-fitted over two halves of
    ``examples``, and the temperature fitted on all of them; with the pooled accumulator."""
    halves = [examples[0::2], examples[1::2]]
    pooled = TokenMetrics(n_bins=bins)
    fits = []
    for fit_on, measure in ((halves[0], halves[1]), (halves[1], halves[0])):
        fit = fit_lm_temperature(model, fit_on, pad, device, batch=batch)
        fits.append(fit["temperature"])
        keep: dict[str, TokenMetrics] = {}
        evaluate_lm(
            model, None, measure, pad, device, batch=batch, bins=bins,
            temperature=fit["temperature"], keep=keep,
        )  # fmt: skip
        pooled.bins += keep["student"].bins
        pooled.totals += keep["student"].totals
    after = pooled.compute()
    whole = fit_lm_temperature(model, examples, pad, device, batch=batch)
    return {
        "temperature": whole["temperature"],
        "note": whole["note"],
        "half_temperatures": fits,
        "ece_after_ts": after["ece"],
        "nll_after_ts": after["nll"],
        "brier_after_ts": after["brier"],
    }, pooled


def _calibrate(
    models: dict[str, tuple[Any, TokenMetrics]],
    rows: dict[str, dict[str, Any]],
    examples: list[Example],
    pad: int,
    device: torch.device,
    bins: int,
    batch: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Cross-fitted temperature scaling of each model (its row gains ``ece_after_ts``,
    ``nll_after_ts`` and ``temperature``); the reliability panels before and after."""
    calibration: dict[str, Any] = {}
    panels: dict[str, Any] = {}
    for name, (model, before) in models.items():
        panels[name] = before.reliability()
        if len(examples) < 2:
            continue
        record, pooled = cross_fitted(model, examples, pad, device, bins=bins, batch=batch)
        rows[name].update({k: record[k] for k in ("ece_after_ts", "nll_after_ts")})
        rows[name]["temperature"] = record["temperature"]
        calibration[name] = record
        panels[f"{name}, T cross-fitted"] = pooled.reliability()
    return calibration, panels


def _check_length(examples: list[Example], limit: int | None, max_length: int, model: str) -> None:
    longest = max(len(e.ids) for e in examples)
    if limit is not None and longest > limit:
        raise ValueError(
            f"--max-length {max_length}: the longest text has {longest} tokens, more than the "
            f"{limit} positions of {model} (max_position_embeddings); set --max-length {limit}"
        )


def _read_examples(
    data: list[str],
    fmt: str,
    tokenizer: Any,
    fields: Fields,
    max_length: int,
    max_samples: int | None,
) -> tuple[list[Example], int]:
    """The tokenised examples of ``data`` (and how many texts were dropped)."""
    try:
        rows, kind = read_rows(data, fmt)
        if max_samples:
            rows = rows[:max_samples]
        examples, dropped = tokenize_rows(
            rows, kind, tokenizer, fields=fields, max_length=max_length
        )
    except LMDataError as err:
        raise ValueError(f"--data: {err}") from None
    if not examples:
        raise ValueError(f"--data: no usable text in {data}")
    return examples, dropped


def evaluate_model(
    model: str,
    data: list[str],
    out: str | Path,
    *,
    teacher: str | None = None,
    fmt: str = "auto",
    fields: Fields = Fields(),  # noqa: B008
    max_length: int = 512,
    max_samples: int | None = None,
    batch: int = 16,
    bins: int = 15,
    device: str = "auto",
    force: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` (and compare with ``teacher``) on ``data``; write ``out``."""
    from bdkd.llm.models import (
        check_same_vocabulary,
        describe_source,
        load_causal_lm,
        max_positions,
    )

    if not 1 <= bins <= MAX_BINS:
        raise ValueError(f"--bins must be in [1, {MAX_BINS}], got {bins}")
    if batch < 1 or max_length < 2:
        raise ValueError("--batch must be >= 1 and --max-length >= 2")
    out = Path(out)
    check_run_dir(out, force=force, kind="llm-eval")
    for name in [model] + ([teacher] if teacher else []):
        describe_source(name)
    for f in data:
        if not Path(f).is_file():
            raise FileNotFoundError(f"--data {f}: no such file")
    dev = resolve_device(device)
    net, tokenizer = load_causal_lm(model)
    if tokenizer is None:
        raise ValueError(f"{model}: no tokenizer found beside the model")
    examples, dropped = _read_examples(data, fmt, tokenizer, fields, max_length, max_samples)
    _check_length(examples, max_positions(net), max_length, model)
    ref = None
    if teacher:
        ref, _ = load_causal_lm(teacher, tokenizer=False)
        check_same_vocabulary(ref, net, teacher, model)
        ref.to(dev).eval()
    net.to(dev).float().eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    teacher_metrics = TokenMetrics(n_bins=bins) if ref is not None else None
    keep: dict[str, TokenMetrics] = {}
    results = evaluate_lm(
        net, ref, examples, int(pad), dev, batch=batch, bins=bins,
        teacher_metrics=teacher_metrics, keep=keep,
    )  # fmt: skip
    rows_out = {"model": results}
    if teacher_metrics is not None:
        rows_out["teacher"] = teacher_metrics.compute()
    models = {"model": (net, keep["student"])}
    if ref is not None and teacher_metrics is not None:
        models["teacher"] = (ref, teacher_metrics)
    calibration, panels = _calibrate(models, rows_out, examples, int(pad), dev, bins, batch)
    summary = {
        "model": model,
        "teacher": teacher,
        "data": [str(f) for f in data],
        "texts": len(examples),
        "dropped_texts": dropped,
        "bins": bins,
        "perplexity": results["perplexity"],
        "ece": results["ece"],
        "results": rows_out,
        "calibration": calibration or None,
        "flags": [f"{n}: {f}" for n, m in rows_out.items() if (f := not_learnt(m))],
    }
    create_run_dir(out, force=force, kind="llm-eval", subdirs=())
    write_json(out / "summary.json", summary)
    from bdkd.report import reliability_diagram

    reliability_diagram(panels, out / "reliability.png", n_bins=bins)
    write_text(out / "report.md", lm_report(summary, f"{model} on {', '.join(map(str, data))}"))
    return summary
