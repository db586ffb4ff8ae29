"""The engine: the loop, evaluation, checkpoints and run directories."""

from bdkd.engine.checkpoint import CheckpointError, load_checkpoint, save_atomic
from bdkd.engine.loop import Trainer
from bdkd.engine.rundir import RunDirError

__all__ = ["CheckpointError", "RunDirError", "Trainer", "load_checkpoint", "save_atomic"]
