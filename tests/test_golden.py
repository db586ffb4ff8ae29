"""Every committed digits and scenes config, and two tiny LLM runs, give the numbers recorded
in tests/golden/runs.json (tools/make_golden.py): a change meant to keep behaviour (a
refactoring) must keep every metric and loss term of every method."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = json.loads((ROOT / "tests" / "golden" / "runs.json").read_text())


def load_tool():
    spec = importlib.util.spec_from_file_location("make_golden", ROOT / "tools" / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_golden"] = module
    spec.loader.exec_module(module)
    return module


def differences(expected, got, where=""):
    if isinstance(expected, dict):
        missing = sorted(set(expected) ^ set(got))
        out = [f"{where}: keys differ {missing}"] if missing else []
        for key in sorted(set(expected) & set(got)):
            out += differences(expected[key], got[key], f"{where}.{key}")
        return out
    if isinstance(expected, float) and isinstance(got, float):
        same = math.isclose(expected, got, rel_tol=1e-6, abs_tol=1e-9)
        return [] if same else [f"{where}: {expected!r} -> {got!r}"]
    return [] if expected == got else [f"{where}: {expected!r} -> {got!r}"]


def test_every_committed_config_gives_the_recorded_numbers():
    tool = load_tool()
    got = tool.collect()
    expected = {k: v for k, v in GOLDEN.items() if k in got}
    assert any(k.startswith("digits/") for k in got)
    assert len(got) == len(expected), sorted(set(got) - set(expected))
    diffs = differences(expected, got)
    assert not diffs, "\n".join(diffs[:40])
