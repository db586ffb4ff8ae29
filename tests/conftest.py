"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from bdkd.cli import main

DIGITS = Path(__file__).resolve().parents[1] / "configs" / "digits"


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> Path:
    """A digits teacher run (2 epochs of configs/digits/teacher.yaml) for offline methods."""
    out = tmp_path_factory.mktemp("teacher") / "teacher"
    args = [
        "train",
        str(DIGITS / "teacher.yaml"),
        "train.epochs=2",
        "train.progress=false",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    return out


@pytest.fixture
def tiny_llm_config(tmp_path) -> Path:
    """An llm-distill config with a tiny random byte-level teacher and a fortunes-style corpus."""
    corpus = tmp_path / "fortunes"
    texts = [
        f"fortune number {i}: the early bird gets the worm, but the second mouse gets the cheese."
        for i in range(40)
    ]
    corpus.write_text("\n%\n".join(texts) + "\n")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        f"""teacher: {{source: tiny}}
student: {{init: random, layers: 1, hidden_size: 16, num_attention_heads: 2}}
data: {{corpus: fortunes, path: {corpus}, max_length: 48, prompt_tokens: 8, val_size: 4, test_size: 4}}
objective: {{name: bdkd, temperature: 1.0}}
train: {{steps: 4, micro_batch: 2, accumulation: 2, lr: 0.003, eval_every: 2, max_new_tokens: 6, on_policy_fraction: 0.5, threads: 1}}
"""
    )
    return cfg
