"""Static post-training int8 quantization of an exported ONNX file, and its temperature.

The choices (docs/deploy.md):

- onnxruntime's static quantization (``onnxruntime.quantization.quantize_static``) after its
  pre-processing (shape inference, graph optimisation): activations' ranges are calibrated,
  not measured at run time, so the file runs on integer-only accelerators;
- QDQ format (QuantizeLinear / DequantizeLinear pairs around each quantized operator), the
  format execution providers fuse into integer kernels;
- weights int8, symmetric, per output channel; activations int8 (S8S8, the recommended
  combination on CPUs), ranges by MinMax calibration;
- the calibration images are a sample of the run's *training* split, preprocessed as the file
  expects (validation and test never choose anything).

After quantizing, the temperature is fitted again on the quantized file's own validation
outputs (:mod:`bdkd.deploy.measure`): rounding changes the logits and so the calibration.
:func:`append_temperature` folds it into the graph as a float ``Div`` after the last
DequantizeLinear (and the softmax, when the file outputs probabilities).
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import numpy as np
from torch import Tensor

__all__ = ["append_temperature", "check_quantization_available", "quantize_onnx", "set_metadata"]


def check_quantization_available() -> None:
    """One line naming what to install when onnxruntime's quantization tools are missing."""
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"--quantize needs {missing}: pip install 'bdkd[onnx]'")


def quantize_onnx(
    float_path: Path, out: Path, calibration: Tensor, *, input_name: str = "images"
) -> Path:
    """``float_path`` statically quantized to int8 (QDQ, per-channel weights) into ``out``,
    its activation ranges calibrated on ``calibration`` (the file's input format)."""
    check_quantization_available()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    batches = [
        {input_name: calibration[i : i + 64].cpu().numpy()}
        for i in range(0, calibration.shape[0], 64)
    ]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return out


def append_temperature(
    path: Path, out: Path, temperature: float | None, *, probabilities: bool, output: str
) -> Path:
    """A copy of ONNX file ``path`` whose output is divided by ``temperature`` (when given)
    and then, with ``probabilities``, softmaxed over the class axis (1); the graph output
    is renamed ``output``."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    last = graph.output[0].name
    raw = f"{last}_bdkd_raw"
    for node in graph.node:
        node.output[:] = [raw if o == last else o for o in node.output]
    current = raw
    if temperature is not None:
        graph.initializer.append(
            helper.make_tensor("bdkd_temperature", TensorProto.FLOAT, [], [float(temperature)])
        )
        scaled = f"{last}_bdkd_scaled"
        graph.node.append(helper.make_node("Div", [current, "bdkd_temperature"], [scaled]))
        current = scaled
    if probabilities:
        soft = f"{last}_bdkd_softmax"
        graph.node.append(helper.make_node("Softmax", [current], [soft], axis=1))
        current = soft
    graph.node.append(helper.make_node("Identity", [current], [output]))
    graph.output[0].name = output
    onnx.save(model, str(out))
    return out


def set_metadata(path: Path, meta: dict[str, str]) -> None:
    """Replace the ``bdkd.*`` metadata of ONNX file ``path`` by ``meta`` (values as text)."""
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if not p.key.startswith("bdkd.")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
