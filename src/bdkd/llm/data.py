"""Text data for LLM distillation: local files in, tokenised examples with loss masks out.

Formats (``data.format``; ``auto`` decides from the file and its fields):

- ``prompt_completion``: rows with a prompt and a completion field (``prompt`` /
  ``completion`` by default); only completion tokens are targets;
- ``messages``: rows with a chat (``messages``: a list of ``{role, content}``) ending in an
  assistant turn, rendered with the tokenizer's chat template; the prompt is everything up
  to the last assistant turn (``add_generation_prompt=True``), the completion that turn;
- ``text``: rows with a ``text`` field; every token after the first is a target;
- ``lines``: a plain text file, one text per line; ``paragraphs``: plain text files, texts
  separated by blank lines (e.g. Python's documentation sources,
  ``/usr/share/doc/python3.11/html/_sources/**/*.rst.txt`` from ``apt-get install
  python3.11-doc``); ``fortunes``: Debian's fortune files (entries separated by lines holding
  ``%``; ``apt-get install fortunes``).

File names may be glob patterns (``**`` included), expanded in sorted order.

JSON lines, JSON and Parquet files are read with the ``datasets`` library, offline. Texts
are cut at ``max_length`` tokens; an example whose completion is cut away entirely is
dropped (and counted). Rows are split into train / val / test by the seed, or read from
``val_files`` / ``test_files``.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bdkd.llm.batch import LMBatch

FORTUNES = "/usr/share/games/fortunes/fortunes"
FORMATS = ("auto", "prompt_completion", "messages", "text", "lines", "paragraphs", "fortunes")


class LMDataError(ValueError):
    """Data that cannot be read or used (the message names the file, row or field)."""


@dataclass(frozen=True)
class Example:
    """Token ids of one text; targets start at ``loss_start``; the first ``prompt_len``
    tokens are its prompt (what generation continues)."""

    ids: tuple[int, ...]
    loss_start: int
    prompt_len: int

    def prompt(self) -> list[int]:
        return list(self.ids[: self.prompt_len])

    def completion(self) -> list[int]:
        return list(self.ids[self.prompt_len :])


@dataclass(frozen=True)
class Fields:
    text: str = "text"
    prompt: str = "prompt"
    completion: str = "completion"
    messages: str = "messages"


def _suffix_format(path: Path) -> str | None:
    return {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix.lower())


def expand_files(files: Sequence[str | Path]) -> list[Path]:
    """The files named by ``files``: plain names must be files; names with ``*``, ``?`` or
    ``[`` are glob patterns (``**`` recursive), each expanded in sorted order and required
    to match at least one file."""
    import glob

    paths: list[Path] = []
    for f in files:
        name = str(f)
        if any(c in name for c in "*?["):
            matched = sorted(Path(m) for m in glob.glob(name, recursive=True) if Path(m).is_file())
            if not matched:
                raise LMDataError(f"data file pattern {name} matches no file")
            paths += matched
            continue
        p = Path(name)
        if not p.is_file():
            how = ""
            if name == FORTUNES:
                how = " (apt-get install fortunes)"
            elif name.startswith("/usr/share/doc/python3"):
                how = " (apt-get install python3.11-doc)"
            raise LMDataError(f"data file {p} does not exist{how}")
        paths.append(p)
    return paths


def read_rows(files: Sequence[str | Path], fmt: str) -> tuple[list[Any], str]:
    """The rows of ``files`` (dicts for structured files, strings for text corpora) and the
    format they were read as."""
    paths = expand_files(files)
    if fmt in ("fortunes", "lines", "paragraphs") or (
        fmt == "auto" and all(_suffix_format(p) is None for p in paths)
    ):
        kind = (
            fmt
            if fmt != "auto"
            else ("fortunes" if paths and paths[0].name.startswith("fortunes") else "lines")
        )
        texts = []
        for p in paths:
            raw = p.read_text(errors="replace")
            if kind == "fortunes":
                parts = raw.split("\n%\n")
            elif kind == "paragraphs":
                parts = re.split(r"\n[ \t]*\n", raw)
            else:
                parts = raw.splitlines()
            texts += [t.strip() for t in parts if t.strip()]
        return texts, kind
    builders = {_suffix_format(p) for p in paths}
    if None in builders or len(builders) != 1:
        raise LMDataError(
            f"data files {[str(p) for p in paths]}: give .jsonl/.json or .parquet files (one kind), "
            "or plain text with data.format: lines"
        )
    try:
        import datasets
    except ImportError:
        raise ImportError(
            "reading jsonl/json/parquet needs the datasets package: pip install 'bdkd[llm]'"
        ) from None
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        ds = datasets.load_dataset(
            builders.pop(), data_files=[str(p) for p in paths], split="train"
        )
    except Exception as err:  # datasets raises many kinds for a bad file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise LMDataError(f"data files {[str(p) for p in paths]} cannot be read: {first}") from None
    return [dict(row) for row in ds], fmt


def detect_format(rows: Sequence[Any], fields: Fields) -> str:
    """The format of structured rows from their fields."""
    if not rows:
        raise LMDataError("the data files hold no rows")
    first = rows[0]
    if not isinstance(first, dict):
        return "text"
    if fields.messages in first:
        return "messages"
    if fields.prompt in first and fields.completion in first:
        return "prompt_completion"
    if fields.text in first:
        return "text"
    raise LMDataError(
        f"rows have fields {sorted(first)}: expected '{fields.messages}', or '{fields.prompt}' and "
        f"'{fields.completion}', or '{fields.text}' (set data.prompt_field etc. for other names)"
    )


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _field(row: dict, name: str, index: int) -> Any:
    if name not in row:
        raise LMDataError(f"row {index}: no field {name!r} (it has {sorted(row)})")
    return row[name]


def tokenize_rows(
    rows: Sequence[Any],
    fmt: str,
    tokenizer: Any,
    *,
    fields: Fields = Fields(),  # noqa: B008
    max_length: int = 256,
    prompt_tokens: int = 8,
) -> tuple[list[Example], int]:
    """(examples, how many rows were dropped because nothing to learn was left)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise LMDataError("the tokenizer has no end-of-sequence token")
    if fmt == "auto":
        fmt = detect_format(rows, fields)
    out: list[Example] = []
    dropped = 0
    for i, row in enumerate(rows):
        if fmt in ("text", "lines", "paragraphs", "fortunes"):
            text = row if isinstance(row, str) else _field(row, fields.text, i)
            if not isinstance(text, str):
                raise LMDataError(f"row {i}: field {fields.text!r} must be text")
            ids = _encode(tokenizer, text) + [eos]
            prompt_len = min(prompt_tokens, max(len(ids) - 1, 0))
            loss_start = 0
        elif fmt == "prompt_completion":
            prompt, completion = _field(row, fields.prompt, i), _field(row, fields.completion, i)
            if not isinstance(prompt, str) or not isinstance(completion, str):
                raise LMDataError(
                    f"row {i}: {fields.prompt!r} and {fields.completion!r} must be text"
                )
            p_ids = _encode(tokenizer, prompt)
            ids = p_ids + _encode(tokenizer, completion) + [eos]
            prompt_len = loss_start = len(p_ids)
        elif fmt == "messages":
            ids, prompt_len = _render_chat(tokenizer, _field(row, fields.messages, i), i)
            loss_start = prompt_len
        else:
            raise LMDataError(f"data.format must be one of {FORMATS}, got {fmt!r}")
        ids = ids[:max_length]
        if len(ids) < 2 or loss_start >= len(ids) or prompt_len >= len(ids):
            dropped += 1
            continue
        out.append(Example(tuple(ids), loss_start, max(prompt_len, 1)))
    return out, dropped


def _render_chat(tokenizer: Any, messages: Any, index: int) -> tuple[list[int], int]:
    if not (
        isinstance(messages, list)
        and messages
        and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages)
    ):
        raise LMDataError(f"row {index}: messages must be a list of {{role, content}} mappings")
    if messages[-1]["role"] != "assistant":
        raise LMDataError(f"row {index}: the last message must be the assistant's (the completion)")
    if getattr(tokenizer, "chat_template", None) is None:
        raise LMDataError("chat messages need a tokenizer with a chat template")
    prompt = tokenizer.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True
    )
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise LMDataError(
            f"row {index}: the chat template does not render the conversation as its prompt "
            "followed by the answer, so the answer's tokens cannot be found"
        )
    p_ids = _encode(tokenizer, prompt)
    ids = p_ids + _encode(tokenizer, full[len(prompt) :])
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    return ids, len(p_ids)


def split_examples(
    examples: list[Example], *, val_size: int | float, test_size: int | float, seed: int
) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, val, test), drawn by ``seed``; sizes are counts or fractions."""

    def count(size: int | float) -> int:
        return int(round(size * len(examples))) if isinstance(size, float) else int(size)

    n_val, n_test = count(val_size), count(test_size)
    if len(examples) - n_val - n_test < 1:
        raise LMDataError(
            f"{len(examples)} usable examples cannot hold val_size {val_size} + test_size "
            f"{test_size} and a train split"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    test = [examples[i] for i in order[:n_test]]
    val = [examples[i] for i in order[n_test : n_test + n_val]]
    train = [examples[i] for i in order[n_test + n_val :]]
    return train, val, test


def collate(examples: Sequence[Example], pad: int, device: torch.device | str = "cpu") -> LMBatch:
    """A right-padded batch; the loss mask selects each example's targets."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.long)
    attention = torch.zeros(len(examples), width, dtype=torch.long)
    loss = torch.zeros(len(examples), width, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        attention[i, :n] = 1
        loss[i, e.loss_start : n] = 1
    return LMBatch(ids.to(device), attention.to(device), loss.to(device))


def prompt_batch(
    examples: Sequence[Example], pad: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts and their attention mask (what ``generate`` continues)."""
    width = max(e.prompt_len for e in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.long)
    mask = torch.zeros(len(examples), width, dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, width - e.prompt_len :] = torch.tensor(e.prompt())
        mask[i, width - e.prompt_len :] = 1
    return ids.to(device), mask.to(device)
