"""`bdkd export RUN`: a trained network out of a run, as a file a device can use.

Formats: ``onnx`` (``torch.onnx.export``, dynamic batch), ``torchscript`` (traced),
``exported_program`` (``torch.export``, ``.pt2``), ``safetensors`` and ``state_dict``
(``.pt``, plain tensors). The graph formats take normalised float images (N, C, H, W) by
default, or uint8 images with ``raw_input=True`` (the normalisation then inside the graph),
and output logits, or probabilities with ``probabilities=True``.

``calibrated=True`` folds the temperature T fitted on the validation split at the end of
training into the model: the graph computes ``logits / T``; a state dict has it folded into
the final linear layer (``W / T``, ``b / T``), which bdkd's zoo models have as
``classifier``. Every file carries what a device needs (normalisation, image size, class
names, T, whether T is folded) as metadata. After writing, the file is loaded back and its
outputs compared with PyTorch's on test images (ONNX through onnxruntime when installed),
and its test metrics are computed from the file's own outputs and recorded in the run's
``summary.json`` (``exports``) and ``report.md``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bdkd import calibration as cal
from bdkd.config import ConfigError, validate
from bdkd.engine import build, tasks
from bdkd.engine.checkpoint import load_checkpoint, load_network_state
from bdkd.files import atomic_path, check_new_file, write_json, write_text

FORMATS = {
    "onnx": ".onnx",
    "torchscript": ".pt",
    "exported_program": ".pt2",
    "safetensors": ".safetensors",
    "state_dict": ".pt",
}
TOLERANCE = 1e-4


class Deployed(nn.Module):
    """What is exported: [normalise uint8 input] -> network -> [/ T] -> [softmax]."""

    def __init__(
        self,
        network: nn.Module,
        *,
        temperature: float | None = None,
        probabilities: bool = False,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.temperature = temperature
        self.probabilities = probabilities
        self.raw_input = mean is not None
        if mean is not None and std is not None:
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255.0)

    def forward(self, x: Tensor) -> Tensor:
        if self.raw_input:
            x = (x.float() - self.mean) / self.std
        z = self.network(x)
        if self.temperature is not None:
            z = z / self.temperature
        return torch.softmax(z, dim=-1) if self.probabilities else z


def fold_temperature(network: nn.Module, temperature: float) -> nn.Module:
    """A copy of ``network`` whose final ``classifier`` (nn.Linear) computes logits / T."""
    head = getattr(network, "classifier", None)
    if not isinstance(head, nn.Linear):
        raise ValueError(
            "--calibrated with a state dict folds T into the final linear layer, and this network "
            "has no nn.Linear 'classifier'; export a graph format (onnx, torchscript, "
            "exported_program) or use the recorded temperature (metadata 'temperature')"
        )
    folded = copy.deepcopy(network)
    with torch.no_grad():
        folded.classifier.weight.div_(temperature)
        if folded.classifier.bias is not None:
            folded.classifier.bias.div_(temperature)
    return folded


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence the exporters' progress text and deprecation warnings."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _write_graph(module: nn.Module, example: Tensor, fmt: str, out: Path, meta: dict) -> None:
    text = json.dumps(meta)
    batch = torch.export.Dim("batch", min=1)
    with atomic_path(out, suffix=FORMATS[fmt]) as tmp, _quiet():
        if fmt == "onnx":
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                input_names=["images"],
                output_names=["probabilities" if meta["output"] == "probabilities" else "logits"],
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
            for key, value in meta.items():
                program.model.metadata_props[f"bdkd.{key}"] = json.dumps(value)
            program.save(str(tmp))
        elif fmt == "torchscript":
            traced = torch.jit.trace(module, example)
            torch.jit.save(traced, str(tmp), _extra_files={"bdkd.json": text})
        else:
            program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
            torch.export.save(program, str(tmp), extra_files={"bdkd.json": text})


def _write_weights(network: nn.Module, fmt: str, out: Path, meta: dict) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    with atomic_path(out, suffix=FORMATS[fmt]) as tmp:
        if fmt == "safetensors":
            try:
                from safetensors.torch import save_file
            except ImportError:
                raise ImportError("--format safetensors needs the package safetensors") from None
            save_file(
                state, str(tmp), metadata={f"bdkd.{k}": json.dumps(v) for k, v in meta.items()}
            )
        else:
            torch.save({"state_dict": state, "bdkd": meta}, tmp)


def load_exported(path: Path, fmt: str, rebuild: nn.Module | None = None) -> Any:
    """A callable ``x -> outputs`` of an exported file (``rebuild``: a network of the same
    architecture, for the state dict formats)."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            return None
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.cpu().numpy()})[0])
    if fmt == "torchscript":
        with _quiet():
            module = torch.jit.load(str(path))
        return lambda x: module(x)
    if fmt == "exported_program":
        program = torch.export.load(str(path))
        module = program.module()
        return lambda x: module(x)
    if rebuild is None:
        return None
    if fmt == "safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        from bdkd.files import safe_torch_load

        state = safe_torch_load(path)["state_dict"]
    net = copy.deepcopy(rebuild)
    net.load_state_dict(state)
    net.eval()
    return lambda x: net(x)


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
) -> dict[str, Any]:
    """Export ``network`` (default: the run's deployed one) of run directory ``run``; returns
    the record added to the run's ``summary.json``."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    run, out = Path(run), Path(out)
    if out.suffix != FORMATS[fmt] and not (fmt == "state_dict" and out.suffix == ".pth"):
        raise ValueError(f"--out {out}: a {fmt} file should end in {FORMATS[fmt]}")
    check_new_file(out, force=force, what="--out")
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{run}: no summary.json (not a finished bdkd run directory)")
    summary = json.loads(summary_path.read_text())
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    name = network or state.get("deployed")
    if name not in state["networks"]:
        raise ConfigError(f"run {run} has no network {name!r}; it has {sorted(state['networks'])}")
    graph = fmt in ("onnx", "torchscript", "exported_program")
    if (probabilities or raw_input) and not graph:
        raise ValueError(
            "--probabilities and --raw-input shape a graph; use onnx, torchscript or exported_program"
        )
    temperature = summary["results"].get(name, {}).get("temperature")
    if calibrated and temperature is None:
        raise ValueError(
            f"run {run} has no fitted temperature for {name!r} (it ran without a validation "
            "split or with eval.temperature_scaling: false), so --calibrated has nothing to fold"
        )
    cfg = validate(state["config"])
    for net_cfg in cfg.networks.values():
        net_cfg.checkpoint, net_cfg.weights = None, None
    splits = build.load_splits(cfg)
    net = build.build_networks(cfg, splits)[name]
    load_network_state(net, state["networks"][name], f"checkpoint of {run}")
    net.eval()
    info = splits.info
    meta = {
        "network": name,
        "model": cfg.networks[name].model,
        "method": summary.get("method"),
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
        "temperature": temperature,
        "temperature_folded": calibrated,
    }
    deployed = Deployed(
        net,
        temperature=temperature if calibrated else None,
        probabilities=probabilities,
        mean=info.mean if raw_input else None,
        std=info.std if raw_input else None,
    ).eval()
    augment = tasks.for_dataset(info).augment(cfg.data)
    loaders = build.build_loaders(cfg, splits, torch.device("cpu"))
    images, _ = next(iter(loaders.test))
    example = images[:2] if raw_input else augment(images[:2], train=False)
    if graph:
        _write_graph(deployed, example, fmt, out, meta)
        rebuild = None
    else:
        saved = fold_temperature(net, temperature) if calibrated else net
        _write_weights(saved, fmt, out, meta)
        rebuild = net
    runner = load_exported(out, fmt, rebuild)
    keys = ("network", "output", "temperature", "temperature_folded")
    record: dict[str, Any] = {"file": str(out), "format": fmt, **{k: meta[k] for k in keys}}
    record["raw_input"] = raw_input

    def reference(x: Tensor) -> Tensor:
        with torch.no_grad():
            return deployed(x)

    acc = cal.CalibrationAccumulator(info.num_classes, summary.get("bins", 15))
    worst = 0.0
    checked_by = "pytorch (no runtime for this format installed)" if runner is None else fmt
    with torch.no_grad():
        for images, labels in loaders.test:
            x = images if raw_input else augment(images, train=False)
            expected = reference(x)
            got = expected if runner is None else runner(x).float()
            worst = max(worst, float((got - expected).abs().max()))
            acc.update(got.clamp_min(1e-30).log() if probabilities else got, labels)
    if worst > TOLERANCE:
        out.unlink(missing_ok=True)
        raise RuntimeError(
            f"the exported {fmt} file's outputs differ from PyTorch's by {worst:.2e} (> {TOLERANCE}); "
            "it was removed"
        )
    metrics = acc.compute()
    record["max_abs_difference_vs_pytorch"] = worst
    record["checked_with"] = checked_by
    record["test"] = {k: metrics[k] for k in ("accuracy", "ece", "nll", "brier")}
    _record(run, summary, record)
    return record


def _record(run: Path, summary: dict, record: dict) -> None:
    """Add the export to summary.json and report.md of the run."""
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
