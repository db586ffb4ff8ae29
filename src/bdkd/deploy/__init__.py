"""Deployment: what leaves a run for a device, and what is measured from the written file.

:mod:`bdkd.deploy.run` reads a finished run back as data; :mod:`bdkd.deploy.formats` writes
and reads the files (ONNX, TorchScript, ExportedProgram, safetensors, state dict);
:mod:`bdkd.deploy.export` is `bdkd export`.
"""

from bdkd.deploy.export import FORMATS, export_run
from bdkd.deploy.formats import Deployed, fold_temperature, load_exported
from bdkd.deploy.run import DeployedRun, load_run

__all__ = [
    "FORMATS",
    "Deployed",
    "DeployedRun",
    "export_run",
    "fold_temperature",
    "load_exported",
    "load_run",
]
