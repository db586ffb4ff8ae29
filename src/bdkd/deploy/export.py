"""`bdkd export RUN`: a trained network out of a run, as a file a device can use and trust.

The run is read back as data (:func:`bdkd.deploy.run.load_run`: its checkpoint must be its
own, its config may name only registered objects unless the user trusts its code, no links
inside). The file is written to a temporary path beside ``--out`` and checked there: loaded
back (ONNX through onnxruntime when installed), its outputs required to be finite and (float
files) equal to PyTorch's on the test images; only then does it replace ``--out``, so a
failed export never leaves a broken file or removes a good one.

``calibrated=True`` folds a temperature into the model (``logits / T``; for a state dict, into
the final linear layer): the one fitted on validation at the end of training, refused when it
is not to be trusted (too few validation errors, or at its bound) unless
``force_temperature``. ``quantize="int8"`` (ONNX) quantizes the float file statically
(:mod:`bdkd.deploy.quantize`) and fits the temperature again on the int8 file's own
validation outputs before folding it.

Everything is measured from the written file (:mod:`bdkd.deploy.measure`): test top-1, ECE,
NLL, Brier (for int8 also the float file's, and the int8 file's before and after the refit),
AURC, the abstention threshold for ``target_risk`` and the conformal thresholds at ``alpha``
(fitted on the file's validation outputs), its size and its latency per image at batch 1 and
64. The thresholds a device needs go into the file's metadata (``bdkd.*``) with the
normalisation, image size, class names and temperature; the whole record goes into the run's
``summary.json`` (``exports``) and ``report.md``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bdkd.deploy.formats import (
    FORMATS,
    GRAPH_FORMATS,
    Deployed,
    fold_temperature,
    load_exported,
    write_graph,
    write_weights,
)
from bdkd.deploy.measure import file_size, latency, machine, measure_file
from bdkd.deploy.quantize import append_temperature, quantize_onnx, set_metadata
from bdkd.deploy.run import DeployedRun, load_run
from bdkd.files import atomic_path, check_new_file, write_json, write_text

__all__ = ["FORMATS", "QUANTIZATIONS", "TOLERANCE", "ExportOptions", "export_run", "record_export"]

TOLERANCE = 1e-4
QUANTIZATIONS = ("int8",)
METRICS = ("accuracy", "miou", "ece", "nll", "brier", "ece_after_ts", "nll_after_ts", "temperature")
TRUST = ("aurc", "e_aurc", "abstain_threshold", "abstain_coverage", "abstain_risk")


class ExportOptions:
    """What `bdkd export` was asked, checked: one line naming the flag and the value."""

    def __init__(
        self,
        fmt: str = "onnx",
        *,
        calibrated: bool = False,
        probabilities: bool = False,
        raw_input: bool = False,
        quantize: str | None = None,
        target_risk: float = 0.05,
        alpha: float = 0.1,
        calibration_samples: int = 512,
        force_temperature: bool = False,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
        if (probabilities or raw_input) and fmt not in GRAPH_FORMATS:
            raise ValueError(
                "--probabilities and --raw-input shape a graph; use onnx, torchscript or "
                "exported_program"
            )
        if quantize is not None and quantize not in QUANTIZATIONS:
            raise ValueError(f"--quantize must be one of {list(QUANTIZATIONS)}, got {quantize!r}")
        if quantize is not None and fmt != "onnx":
            raise ValueError(
                f"--quantize {quantize} needs --format onnx (the format that carries quantized "
                f"operators), got --format {fmt}"
            )
        for flag, value in (("--target-risk", target_risk), ("--alpha", alpha)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"{flag} must be in (0, 1), got {value}")
        if calibration_samples < 1:
            raise ValueError(f"--calibration-samples must be >= 1, got {calibration_samples}")
        self.fmt, self.calibrated, self.probabilities = fmt, calibrated, probabilities
        self.raw_input, self.quantize = raw_input, quantize
        self.target_risk, self.alpha = target_risk, alpha
        self.calibration_samples, self.force_temperature = calibration_samples, force_temperature

    @property
    def output(self) -> str:
        return "probabilities" if self.probabilities else "logits"


def _metadata(dep: DeployedRun, opts: ExportOptions, temperature: float | None) -> dict:
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
        if opts.raw_input
        else "float images (N, C, H, W), (x / 255 - mean) / std",
        "output": opts.output,
        "quantized": opts.quantize,
        "temperature": temperature,
        "temperature_folded": opts.calibrated,
    }


def _trust_metadata(m: dict[str, Any], opts: ExportOptions) -> dict[str, Any]:
    """What a device needs to abstain and to form prediction sets from this file's outputs."""
    return {
        "target_risk": opts.target_risk,
        "abstain_threshold": m.get("abstain_threshold"),
        "conformal_alpha": opts.alpha,
        "lac_qhat": m.get("lac_qhat"),
        "aps_qhat": m.get("aps_qhat"),
        "thresholds_apply_to": "softmax of the file's outputs"
        if not opts.probabilities
        else "the file's outputs",
    }


def _check_temperature(where: str, reliable: Any, note: Any, opts: ExportOptions) -> None:
    if opts.calibrated and reliable is False and not opts.force_temperature:
        raise ValueError(
            f"{where} is not to be trusted ({note}); folding it would mislead the device. "
            "Pass --force-temperature to fold it anyway"
        )


def _deployed(dep: DeployedRun, opts: ExportOptions, temperature: float | None) -> Deployed:
    info = dep.info
    return Deployed(
        dep.network,
        temperature=temperature,
        probabilities=opts.probabilities,
        mean=info.mean if opts.raw_input else None,
        std=info.std if opts.raw_input else None,
    ).eval()


def _inputs(dep: DeployedRun, images: Tensor, raw_input: bool) -> Tensor:
    return images if raw_input else dep.transform(images)


def _compare(runner: Any, reference: Deployed, dep: DeployedRun, raw_input: bool) -> float:
    """The largest difference between the file's and PyTorch's outputs on the test images;
    non-finite outputs are refused."""
    worst = 0.0
    with torch.no_grad():
        for images, _ in dep.loaders.test:
            x = _inputs(dep, images, raw_input)
            expected = reference(x)
            got = expected if runner is None else runner(x).float()
            if not (torch.isfinite(expected).all() and torch.isfinite(got).all()):
                raise ValueError(
                    f"network {dep.name!r} of {dep.run} gives non-finite outputs on test images "
                    "(NaN or infinite weights in its checkpoint?); nothing was written"
                )
            worst = max(worst, float((got - expected).abs().max()))
    if worst > TOLERANCE:
        raise ValueError(
            f"the exported file's outputs differ from PyTorch's by {worst:.2e} (> {TOLERANCE}); "
            "nothing was written"
        )
    return worst


def _measure(runner: Any, dep: DeployedRun, opts: ExportOptions, path: Path) -> dict[str, Any]:
    m, _ = measure_file(
        runner,
        dep,
        raw_input=opts.raw_input,
        probabilities=opts.probabilities,
        target_risk=opts.target_risk,
        alpha=opts.alpha,
    )
    images, _ = next(iter(dep.loaders.test))
    example = _inputs(dep, images[:8], opts.raw_input)
    m["size_bytes"] = file_size(path)
    m["latency_ms_per_image"] = {
        "batch_1": latency(runner, example[:1], 1),
        "batch_64": latency(runner, example, 64),
    }
    return m


def _summary_of(m: dict[str, Any]) -> dict[str, Any]:
    keys = (*METRICS, *TRUST, "lac_coverage", "lac_size", "aps_coverage", "aps_size")
    return {k: m.get(k) for k in keys}


def _calibration_images(dep: DeployedRun, opts: ExportOptions) -> Tensor:
    """A seeded sample of the run's training images, preprocessed as the file expects."""
    split = dep.splits.train
    count = min(opts.calibration_samples, len(split))
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[:count]
    if hasattr(split, "images"):
        images = split.images[order]
    else:
        images = torch.stack([split[int(i)][0] for i in order])
    return _inputs(dep, images, opts.raw_input)


def _export_float(dep: DeployedRun, opts: ExportOptions, out: Path) -> dict[str, Any]:
    temperature = dep.temperature if opts.calibrated else None
    deployed = _deployed(dep, opts, temperature)
    images, _ = next(iter(dep.loaders.test))
    example = _inputs(dep, images[:2], opts.raw_input)
    meta = _metadata(dep, opts, dep.temperature)
    graph = opts.fmt in GRAPH_FORMATS

    def write(tmp: Path, meta: dict) -> Any:
        if graph:
            write_graph(deployed, example, opts.fmt, tmp, meta)
            return load_exported(tmp, opts.fmt)
        saved = fold_temperature(dep.network, dep.temperature) if opts.calibrated else dep.network
        write_weights(saved, opts.fmt, tmp, meta)
        return load_exported(tmp, opts.fmt, dep.network)

    with atomic_path(out, suffix=FORMATS[opts.fmt]) as tmp:
        runner = write(tmp, meta)
        worst = _compare(runner, deployed, dep, opts.raw_input)
        measured = _measure(runner or deployed, dep, opts, tmp)
        meta.update(_trust_metadata(measured, opts))
        runner = write(tmp, meta)  # the same model, now with its thresholds
        _compare(runner, deployed, dep, opts.raw_input)
        measured["size_bytes"] = file_size(tmp)
    checked = "pytorch (no runtime for this format installed)" if runner is None else opts.fmt
    return {"meta": meta, "measured": measured, "worst": worst, "checked_with": checked}


def _export_int8(dep: DeployedRun, opts: ExportOptions, out: Path) -> dict[str, Any]:
    plain = ExportOptions(
        opts.fmt, raw_input=opts.raw_input, target_risk=opts.target_risk, alpha=opts.alpha
    )
    reference = _deployed(dep, plain, None)
    images, _ = next(iter(dep.loaders.test))
    example = _inputs(dep, images[:2], opts.raw_input)
    with tempfile.TemporaryDirectory(prefix=".bdkd-export-", dir=out.parent) as work:
        float_path, int8_path = Path(work) / "float.onnx", Path(work) / "int8.onnx"
        write_graph(reference, example, "onnx", float_path, _metadata(dep, plain, None))
        float_runner = load_exported(float_path, "onnx")
        _compare(float_runner, reference, dep, opts.raw_input)
        float_m = _measure(float_runner, dep, plain, float_path)
        quantize_onnx(float_path, int8_path, _calibration_images(dep, opts))
        raw_m = _measure(load_exported(int8_path, "onnx"), dep, plain, int8_path)
        refit = raw_m["temperature"]
        _check_temperature(
            "the int8 file's refitted temperature",
            raw_m.get("temperature_reliable"),
            raw_m.get("temperature_note"),
            opts,
        )
        meta = _metadata(dep, opts, refit)
        with atomic_path(out, suffix=".onnx") as tmp:
            folded = refit if opts.calibrated else None
            append_temperature(
                int8_path, tmp, folded, probabilities=opts.probabilities, output=opts.output
            )
            runner = load_exported(tmp, "onnx")
            measured = _measure(runner, dep, opts, tmp)
            meta.update(_trust_metadata(measured, opts))
            set_metadata(tmp, {f"bdkd.{k}": json.dumps(v) for k, v in meta.items()})
            measured["size_bytes"] = file_size(tmp)
            agreement = _agreement(runner, float_runner, dep, opts.raw_input)
    return {
        "meta": meta,
        "measured": measured,
        "worst": None,
        "checked_with": "onnx (onnxruntime)",
        "float": {
            **_summary_of(float_m),
            "size_bytes": float_m["size_bytes"],
            "latency_ms_per_image": float_m["latency_ms_per_image"],
        },
        "int8_before_refit": _summary_of(raw_m),
        "agreement_with_float": agreement,
    }


def _agreement(runner: Any, float_runner: Any, dep: DeployedRun, raw_input: bool) -> float:
    """The fraction of test images (or pixels) whose predicted class the two files share."""
    same = total = 0
    with torch.no_grad():
        for images, _ in dep.loaders.test:
            x = _inputs(dep, images, raw_input)
            a, b = runner(x).argmax(1), float_runner(x).argmax(1)
            same += int((a == b).sum())
            total += a.numel()
    return same / max(1, total)


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
    quantize: str | None = None,
    target_risk: float = 0.05,
    alpha: float = 0.1,
    calibration_samples: int = 512,
    force_temperature: bool = False,
    checkpoint: str = "last",
) -> dict[str, Any]:
    """Export ``network`` (default: the run's deployed one) of run directory ``run``, from
    its last checkpoint or (``checkpoint="best"``) the one ``train.save_best`` kept; returns
    the record added to the run's ``summary.json``."""
    opts = ExportOptions(
        fmt,
        calibrated=calibrated,
        probabilities=probabilities,
        raw_input=raw_input,
        quantize=quantize,
        target_risk=target_risk,
        alpha=alpha,
        calibration_samples=calibration_samples,
        force_temperature=force_temperature,
    )
    run, out = Path(run), Path(out)
    if out.suffix != FORMATS[fmt] and not (fmt == "state_dict" and out.suffix == ".pth"):
        raise ValueError(f"--out {out}: a {fmt} file should end in {FORMATS[fmt]}")
    check_new_file(out, force=force, what="--out")
    dep = load_run(run, network, trust_code=trust_code, checkpoint=checkpoint)
    if calibrated and dep.temperature is None:
        raise ValueError(
            f"run {run} has no fitted temperature for {dep.name!r} (it ran without a validation "
            "split or with eval.temperature_scaling: false), so --calibrated has nothing to fold"
        )
    if not quantize:
        m = {
            "temperature_reliable": dep.temperature_note is None,
            "temperature_note": dep.temperature_note,
        }
        _check_temperature(
            f"the fitted temperature of {dep.name!r} ({run})",
            m.get("temperature_reliable"),
            m.get("temperature_note"),
            opts,
        )
    done = _export_int8(dep, opts, out) if quantize else _export_float(dep, opts, out)
    record = _record_of(done, opts, out)
    record["checkpoint"] = checkpoint
    record_export(run, dep.summary, record)
    from bdkd.engine.tracking import log_export

    log_export(dep.summary, out)
    return record


def _record_of(done: dict[str, Any], opts: ExportOptions, out: Path) -> dict[str, Any]:
    """What the run's summary records of an export, all measured from the written file."""
    meta, measured = done["meta"], done["measured"]
    record: dict[str, Any] = {
        "file": str(out),
        "format": opts.fmt,
        "quantized": opts.quantize,
        **{k: meta[k] for k in ("network", "output", "temperature", "temperature_folded")},
        "temperature_source": "refitted on the int8 file's validation outputs"
        if opts.quantize
        else "fitted on validation at the end of training",
        "raw_input": opts.raw_input,
        "max_abs_difference_vs_pytorch": done["worst"],
        "checked_with": done["checked_with"],
        "test": _summary_of(measured),
        "abstention": {k: meta[k] for k in ("target_risk", "abstain_threshold")}
        | {
            "test_coverage": measured.get("abstain_coverage"),
            "test_risk": measured.get("abstain_risk"),
        },
        "conformal": {
            "alpha": opts.alpha,
            **{
                f"{m}_{k}": measured.get(f"{m}_{k}")
                for m in ("lac", "aps")
                for k in ("qhat", "coverage", "size")
            },
        },
        "size_bytes": measured["size_bytes"],
        "latency_ms_per_image": measured["latency_ms_per_image"],
        "machine": machine(),
    }
    for key in ("float", "int8_before_refit", "agreement_with_float"):
        if key in done:
            record[key] = done[key]
    return record


def _export_line(e: dict[str, Any]) -> str:
    t = e["test"]
    folded = (
        f"temperature T = {e['temperature']:.3f} folded in"
        if e["temperature_folded"] and e.get("temperature") is not None
        else "no temperature folded in"
    )
    kind = f"{e['format']}, int8" if e.get("quantized") else e["format"]
    line = (
        f"- `{e['file']}` ({kind}, network {e['network']}, {folded}, outputs {e['output']}): "
        f"test top-1 {100 * t['accuracy']:.2f} %, ECE {100 * t['ece']:.2f} %, NLL "
        f"{t['nll']:.4f}, Brier {t['brier']:.4f}"
    )
    if t.get("aurc") is not None:
        a = e["abstention"]
        line += (
            f"; AURC {t['aurc']:.4f}; abstains below {a['abstain_threshold']:.4f} (risk ≤ "
            f"{100 * a['target_risk']:g} %: test coverage {100 * (a['test_coverage'] or 0):.1f} %)"
        )
    if e.get("agreement_with_float") is not None:
        line += f"; agrees with the float file on {100 * e['agreement_with_float']:.2f} % of test"
    if e.get("max_abs_difference_vs_pytorch") is not None:
        line += f"; outputs within {e['max_abs_difference_vs_pytorch']:.1e} of PyTorch ({e['checked_with']})"
    return line + "."


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
    lines = ["", "## Exported", "", *(_export_line(e) for e in summary["exports"])]
    write_text(report, head.rstrip("\n") + "\n" + "\n".join(lines) + "\n")
