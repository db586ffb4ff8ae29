"""What a run shows while it trains: a progress line with the live loss terms, the rate and
an ETA (the trackers, TensorBoard included, are in :mod:`bdkd.engine.tracking`).

Shared by the image engine and ``bdkd llm-distill``.
"""

from __future__ import annotations

import sys
import time


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
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = step / elapsed
        eta = (self.total - step) / rate if rate > 0 else 0.0
        shown = " ".join(f"{k} {v:.4f}" for k, v in terms.items())
        line = (
            f"{self.prefix} [{step}/{self.total}] {shown} | {rate:.1f} it/s, "
            f"{_clock(elapsed)} elapsed, ETA {_clock(eta)}"
        )
        print(
            ("\r" + line) if self.tty else line,
            end="" if self.tty else "\n",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss``)."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
