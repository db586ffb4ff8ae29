"""`bdkd export RUN`: a trained network out of a run, as a file a device can use.

The run is read back as data (:func:`bdkd.deploy.run.load_run`: its checkpoint must be its
own, its config may name only registered objects unless the user trusts its code, no links
inside). The file is written to a temporary path beside ``--out`` and checked there: loaded
back (ONNX through onnxruntime when installed), its outputs compared with PyTorch's on the
test images and required to be finite; only then does it replace ``--out``, so a failed
export never leaves a broken file or removes a good one. ``calibrated=True`` folds the
temperature T fitted on the validation split into the model (``logits / T``; for a state
dict, into the final linear layer). Every file carries what a device needs (normalisation,
image size, class names, T, whether T is folded) as metadata, and its test metrics,
computed from the file's own outputs, are recorded in the run's ``summary.json``
(``exports``) and ``report.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bdkd import calibration as cal
from bdkd.deploy.formats import (
    FORMATS,
    GRAPH_FORMATS,
    Deployed,
    fold_temperature,
    load_exported,
    write_graph,
    write_weights,
)
from bdkd.deploy.run import DeployedRun, load_run
from bdkd.files import atomic_path, check_new_file, write_json, write_text

__all__ = ["FORMATS", "TOLERANCE", "export_run", "record_export"]

TOLERANCE = 1e-4


def _metadata(dep: DeployedRun, *, calibrated: bool, probabilities: bool, raw_input: bool) -> dict:
    info = dep.info
    return {
        "network": dep.name,
        "model": dep.cfg.networks[dep.name].model,
        "method": dep.summary.get("method"),
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "image_size": info.image_size,
        "channels": info.channels,
        "mean": list(info.mean),
        "std": list(info.std),
        "input": "uint8 images (N, C, H, W)"
        if raw_input
        else "float images (N, C, H, W), (x / 255 - mean) / std",
        "output": "probabilities" if probabilities else "logits",
        "temperature": dep.temperature,
        "temperature_folded": calibrated,
    }


def _check_file(
    runner: Any, deployed: Deployed, dep: DeployedRun, *, raw_input: bool, probabilities: bool
) -> tuple[float, dict[str, float]]:
    """The written file against PyTorch on every test image: the largest difference, and
    the test metrics of the file's own outputs; non-finite outputs are refused."""
    acc = cal.CalibrationAccumulator(dep.info.num_classes, dep.summary.get("bins", 15))
    worst = 0.0
    with torch.no_grad():
        for images, labels in dep.loaders.test:
            x = images if raw_input else dep.transform(images)
            expected = deployed(x)
            got = expected if runner is None else runner(x).float()
            if not (torch.isfinite(expected).all() and torch.isfinite(got).all()):
                raise ValueError(
                    f"network {dep.name!r} of {dep.run} gives non-finite outputs on test images "
                    "(NaN or infinite weights in its checkpoint?); nothing was written"
                )
            worst = max(worst, float((got - expected).abs().max()))
            acc.update(got.clamp_min(1e-30).log() if probabilities else got, labels)
    if worst > TOLERANCE:
        raise ValueError(
            f"the exported file's outputs differ from PyTorch's by {worst:.2e} (> {TOLERANCE}); "
            "nothing was written"
        )
    metrics = acc.compute()
    return worst, {k: metrics[k] for k in ("accuracy", "ece", "nll", "brier")}


def export_run(
    run: str | Path,
    out: str | Path,
    *,
    fmt: str = "onnx",
    network: str | None = None,
    calibrated: bool = False,
    probabilities: bool = False,
    raw_input: bool = False,
    force: bool = False,
    trust_code: bool = False,
) -> dict[str, Any]:
    """Export ``network`` (default: the run's deployed one) of run directory ``run``; returns
    the record added to the run's ``summary.json``."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    run, out = Path(run), Path(out)
    if out.suffix != FORMATS[fmt] and not (fmt == "state_dict" and out.suffix == ".pth"):
        raise ValueError(f"--out {out}: a {fmt} file should end in {FORMATS[fmt]}")
    check_new_file(out, force=force, what="--out")
    graph = fmt in GRAPH_FORMATS
    if (probabilities or raw_input) and not graph:
        raise ValueError(
            "--probabilities and --raw-input shape a graph; use onnx, torchscript or exported_program"
        )
    dep = load_run(run, network, trust_code=trust_code)
    if calibrated and dep.temperature is None:
        raise ValueError(
            f"run {run} has no fitted temperature for {dep.name!r} (it ran without a validation "
            "split or with eval.temperature_scaling: false), so --calibrated has nothing to fold"
        )
    meta = _metadata(dep, calibrated=calibrated, probabilities=probabilities, raw_input=raw_input)
    info = dep.info
    deployed = Deployed(
        dep.network,
        temperature=dep.temperature if calibrated else None,
        probabilities=probabilities,
        mean=info.mean if raw_input else None,
        std=info.std if raw_input else None,
    ).eval()
    images, _ = next(iter(dep.loaders.test))
    example = images[:2] if raw_input else dep.transform(images[:2])
    with atomic_path(out, suffix=FORMATS[fmt]) as tmp:
        if graph:
            write_graph(deployed, example, fmt, tmp, meta)
            rebuild = None
        else:
            saved = fold_temperature(dep.network, dep.temperature) if calibrated else dep.network
            write_weights(saved, fmt, tmp, meta)
            rebuild = dep.network
        runner = load_exported(tmp, fmt, rebuild)
        worst, test = _check_file(
            runner, deployed, dep, raw_input=raw_input, probabilities=probabilities
        )
    keys = ("network", "output", "temperature", "temperature_folded")
    record: dict[str, Any] = {"file": str(out), "format": fmt, **{k: meta[k] for k in keys}}
    record["raw_input"] = raw_input
    record["max_abs_difference_vs_pytorch"] = worst
    record["checked_with"] = (
        "pytorch (no runtime for this format installed)" if runner is None else fmt
    )
    record["test"] = test
    record_export(run, dep.summary, record)
    return record


def record_export(run: Path, summary: dict, record: dict) -> None:
    """Add the export record to summary.json and report.md of the run."""
    summary.setdefault("exports", [])
    summary["exports"] = [e for e in summary["exports"] if e.get("file") != record["file"]] + [
        record
    ]
    write_json(run / "summary.json", summary)
    report = run / "report.md"
    text = report.read_text() if report.is_file() else f"# {summary.get('method')}\n"
    head, _, _ = text.partition("\n## Exported\n")
    lines = ["", "## Exported", ""]
    for e in summary["exports"]:
        t = e["test"]
        folded = (
            f"temperature T = {e['temperature']:.3f} folded in"
            if e["temperature_folded"]
            else "no temperature folded in"
        )
        lines.append(
            f"- `{e['file']}` ({e['format']}, network {e['network']}, {folded}, outputs "
            f"{e['output']}): test top-1 {100 * t['accuracy']:.2f} %, ECE {100 * t['ece']:.2f} %, "
            f"NLL {t['nll']:.4f}, Brier {t['brier']:.4f}; outputs within "
            f"{e['max_abs_difference_vs_pytorch']:.1e} of PyTorch ({e['checked_with']})."
        )
    write_text(report, head.rstrip("\n") + "\n" + "\n".join(lines) + "\n")
