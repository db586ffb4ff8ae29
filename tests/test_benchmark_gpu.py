"""benchmarks/gpu.py --dry-run: the GPU benchmark runs end to end on any machine (tiny sizes),
so it cannot rot between the times a CUDA machine is at hand."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_benchmark_runs_dry(tmp_path):
    out = tmp_path / "gpu.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert "dry run" in text
    rows = [line for line in text.splitlines() if line.startswith("| BD-KD") or line.startswith("| forward KL")]  # fmt: skip
    assert len(rows) == 2, text
    for row in rows:  # a positive throughput and a positive FLOP count in every row
        cells = [c.strip() for c in row.split("|")]
        assert float(cells[2].split()[0].replace(",", "")) > 0, row
        assert float(cells[3].split()[0]) > 0, row
