"""What a run shows while it trains: a progress line with the live loss terms, TensorBoard.

Shared by the image engine and ``bdkd llm-distill``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any


class Progress:
    """A one-line progress display with the live loss terms (stderr)."""

    def __init__(self, enabled: bool, total: int, prefix: str) -> None:
        self.enabled, self.total, self.prefix = enabled, total, prefix
        self.tty = sys.stderr.isatty()
        self.start = time.perf_counter()
        self.every = 1 if self.tty else max(1, total // 4)

    def due(self, step: int) -> bool:
        """Whether ``update`` would print at ``step`` (so callers skip building its input)."""
        return self.enabled and (step % self.every == 0 or step == self.total)

    def update(self, step: int, terms: dict[str, float]) -> None:
        rate = step / max(time.perf_counter() - self.start, 1e-9)
        shown = " ".join(f"{k} {v:.4f}" for k, v in terms.items())
        line = f"{self.prefix} [{step}/{self.total}] {shown} | {rate:.1f} it/s"
        print(
            ("\r" + line) if self.tty else line,
            end="" if self.tty else "\n",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr, flush=True)


def open_tensorboard(run_dir: Path) -> Any:
    """A TensorBoard ``SummaryWriter`` into ``run_dir/tensorboard`` when tensorboard is
    installed (``pip install 'bdkd[tensorboard]'``), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(Path(run_dir) / "tensorboard"))
