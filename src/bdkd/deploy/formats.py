"""The files a device gets: what is exported, how each format is written and read back.

Formats: ``onnx`` (``torch.onnx.export``, dynamic batch), ``torchscript`` (traced),
``exported_program`` (``torch.export``, ``.pt2``), ``safetensors`` and ``state_dict``
(``.pt``, plain tensors). The graph formats take normalised float images (N, C, H, W) by
default, or uint8 images with ``raw_input`` (the normalisation then inside the graph), and
output logits, or probabilities; a temperature is folded into the graph (``logits / T``) or,
for a state dict, into the final linear layer. Every file carries its metadata (``bdkd.*``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bdkd.files import safe_torch_load

__all__ = [
    "FORMATS",
    "GRAPH_FORMATS",
    "Deployed",
    "detect_format",
    "fold_temperature",
    "load_exported",
    "read_metadata",
    "write_graph",
    "write_weights",
]

FORMATS = {
    "onnx": ".onnx",
    "torchscript": ".pt",
    "exported_program": ".pt2",
    "safetensors": ".safetensors",
    "state_dict": ".pt",
}
GRAPH_FORMATS = ("onnx", "torchscript", "exported_program")


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
        return torch.softmax(z, dim=1) if self.probabilities else z  # the class axis


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
    """Silence the exporters' progress text, log lines and deprecation warnings (their
    errors still raise)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def write_graph(module: nn.Module, example: Tensor, fmt: str, tmp: Path, meta: dict) -> None:
    """``module`` traced on ``example`` into ``tmp`` as ``fmt`` (onnx, torchscript,
    exported_program), with ``meta`` as the file's metadata."""
    text = json.dumps(meta)
    batch = torch.export.Dim("batch", min=1)
    if fmt == "onnx":
        import importlib.util

        missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise ImportError(
                f"--format onnx needs {missing}, which are not installed: pip install 'bdkd[onnx]'"
            )
    with _quiet():
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


def write_weights(network: nn.Module, fmt: str, tmp: Path, meta: dict) -> None:
    """``network``'s state dict into ``tmp`` as ``fmt`` (safetensors or a plain ``.pt``),
    with ``meta``."""
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    if fmt == "safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError:
            raise ImportError("--format safetensors needs the package safetensors") from None
        save_file(state, str(tmp), metadata={f"bdkd.{k}": json.dumps(v) for k, v in meta.items()})
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
        state = safe_torch_load(path)["state_dict"]
    net = copy.deepcopy(rebuild)
    net.load_state_dict(state)
    net.eval()
    return lambda x: net(x)


def detect_format(path: Path) -> str:
    """The export format of a file, by its suffix (``.pt``: TorchScript when it is one,
    else a state dict)."""
    path = Path(path)
    by_suffix = {".onnx": "onnx", ".pt2": "exported_program", ".safetensors": "safetensors"}
    if path.suffix in by_suffix:
        return by_suffix[path.suffix]
    if path.suffix in (".pt", ".pth"):
        import zipfile

        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                if any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist()):
                    return "torchscript"
        return "state_dict"
    raise ValueError(f"{path}: not an exported file bdkd reads ({list(FORMATS.values())})")


def read_metadata(path: Path, fmt: str) -> dict[str, Any]:
    """The ``bdkd.*`` metadata an exported file carries (what a device reads)."""
    path = Path(path)
    if fmt == "onnx":
        import onnx

        props = onnx.load(str(path), load_external_data=False).metadata_props
        return {p.key[5:]: json.loads(p.value) for p in props if p.key.startswith("bdkd.")}
    if fmt in ("torchscript", "exported_program"):
        files = {"bdkd.json": ""}
        with _quiet():
            if fmt == "torchscript":
                torch.jit.load(str(path), _extra_files=files)
            else:
                torch.export.load(str(path), extra_files=files)
        return json.loads(files["bdkd.json"] or "{}")
    if fmt == "safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        return {k[5:]: json.loads(v) for k, v in meta.items() if k.startswith("bdkd.")}
    return dict(safe_torch_load(path).get("bdkd", {}))
