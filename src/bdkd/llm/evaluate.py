"""`bdkd llm-eval MODEL --data FILE --out DIR`: next-token metrics of any causal LM.

Any model directory, cached hub id or GGUF file is evaluated on local data (the formats of
:mod:`bdkd.llm.data`; every row is evaluated, nothing is split off): perplexity, next-token
accuracy, token-level ECE / NLL / Brier over the target tokens (completions, or every token
of plain text), and, given a teacher, how often the model's top token is the teacher's and
its mean forward KL to the teacher (with the teacher's own metrics beside). ``DIR`` gets
``summary.json`` and ``report.md``; it is a bdkd output directory, never overwritten
without ``--force``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bdkd.engine.rundir import check_run_dir, create_run_dir
from bdkd.files import write_json, write_text
from bdkd.llm.data import Fields, LMDataError, read_rows, tokenize_rows
from bdkd.llm.metrics import TokenMetrics


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
    from bdkd.config import MAX_BINS
    from bdkd.engine.build import resolve_device
    from bdkd.llm.models import check_same_vocabulary, describe_source, load_causal_lm
    from bdkd.llm.run import evaluate_lm, lm_report

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
    ref = None
    if teacher:
        ref, _ = load_causal_lm(teacher, tokenizer=False)
        check_same_vocabulary(ref, net, teacher, model)
        ref.to(dev).eval()
    net.to(dev).float().eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    teacher_metrics = TokenMetrics(n_bins=bins) if ref is not None else None
    results = evaluate_lm(
        net, ref, examples, int(pad), dev, batch=batch, bins=bins, teacher_metrics=teacher_metrics
    )
    rows_out = {"model": results}
    if teacher_metrics is not None:
        rows_out["teacher"] = teacher_metrics.compute()
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
    }
    create_run_dir(out, force=force, kind="llm-eval", subdirs=())
    write_json(out / "summary.json", summary)
    write_text(out / "report.md", lm_report(summary, f"{model} on {', '.join(map(str, data))}"))
    return summary
