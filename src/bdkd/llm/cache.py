"""An offline top-k teacher cache for LLM distillation (`bdkd llm-cache-teacher`).

The teacher's forward pass dominates the cost of distillation and its outputs do not change:
compute them once. For every target token of every example (train, val and test splits of
the run's data, in the run's order) the cache stores the teacher's k most likely next tokens
(ids, int32), their log-probabilities (float16) and the log of the remaining mass
``log(1 - sum of the top-k probabilities)`` (float16, computed exactly as a log-sum-exp over
the other tokens), in memory-mapped arrays: ``6 k + 2`` bytes per token (770 at k = 128,
against 98 KB for the full float16 distribution over 49,152 tokens). The teacher's own
next-token metrics on val and test (exact, from its full distribution) are stored too.

The cache is keyed by the teacher (a fingerprint of its files), the tokenizer (its
vocabulary), the data (every example's token ids and loss mask, split by split) and k, and
refused with the list of what differs when any of them does not match the run. A run that
reads it (``train.teacher_cache``) never loads the teacher: its objective is computed on the
bucketed distributions (:func:`bdkd.llm.fused.fused_linear_topk_divergence`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bdkd.engine.rundir import create_run_dir, read_marker
from bdkd.files import OutputError, write_json
from bdkd.llm.batch import TopKTeacher
from bdkd.llm.data import Example, collate
from bdkd.llm.metrics import TokenMetrics

SPLITS = ("train", "val", "test")
FORMAT = 2
ARRAYS = ("ids.npy", "log_probs.npy", "tail.npy")
CHUNK = 1 << 16
MASS_TOLERANCE = 0.02
"""How far above 1 a cached row's probabilities may sum (float16 rounding of k values)."""


class TeacherCacheError(ValueError):
    """A top-k cache that is missing, damaged or made for another teacher, tokenizer or data."""


def file_fingerprint(path: Path, sample: int = 1 << 20) -> str:
    """SHA-256 of a file's size, first and last ``sample`` bytes (fast for multi-GB weights)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(sample))
        if size > sample:
            f.seek(max(size - sample, sample))
            h.update(f.read(sample))
    return h.hexdigest()


def model_fingerprint(name: str) -> str:
    """A fingerprint of the files behind a model name (directory, GGUF file, smollm2, cached
    hub id), without loading the model."""
    from bdkd.llm.models import describe_source, smollm2_gguf_path

    kind = describe_source(name)
    if kind == "smollm2":
        files = [smollm2_gguf_path()]
    elif kind == "gguf":
        files = [Path(name)]
    elif kind == "directory":
        root = Path(name)
        files = sorted(
            p for p in root.iterdir() if p.suffix in (".json", ".safetensors", ".bin", ".model")
        )
    else:
        from huggingface_hub import snapshot_download

        root = Path(snapshot_download(name, local_files_only=True))
        files = sorted(p for p in root.iterdir() if p.suffix in (".json", ".safetensors", ".bin"))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(file_fingerprint(f).encode())
    return h.hexdigest()


def vocabulary_hash(tokenizer: Any) -> str:
    items = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def data_hash(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(np.asarray(e.ids, dtype=np.int64).tobytes())
        h.update(str(e.loss_start).encode())
    return h.hexdigest()


def cache_key(
    teacher: str, tokenizer: Any, splits: dict[str, list[Example]], k: int, max_length: int
) -> dict[str, Any]:
    """What a cache was computed from (compared key by key on load)."""
    return {
        "teacher": teacher,
        "teacher_files": model_fingerprint(teacher),
        "vocabulary": vocabulary_hash(tokenizer),
        "max_length": max_length,
        "k": k,
        **{f"data_{name}": data_hash(examples) for name, examples in splits.items()},
    }


def target_counts(examples: Sequence[Example]) -> np.ndarray:
    """Target tokens of each example: positions t >= max(1, loss_start) of its ids."""
    return np.array([len(e.ids) - max(1, e.loss_start) for e in examples], dtype=np.int64)


def _open_array(path: Path, dtype: Any, shape: tuple[int, ...]) -> np.memmap:
    """A new memory-mapped ``.npy`` file (one line naming it when the disk cannot hold it)."""
    try:
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None


def array_checksum(path: Path) -> str:
    """BLAKE2b of a file's bytes (an edited or damaged array no longer matches)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@torch.no_grad()
def build_topk_cache(
    teacher: torch.nn.Module,
    splits: dict[str, list[Example]],
    out: str | Path,
    *,
    k: int,
    key: dict[str, Any],
    pad: int,
    batch: int = 8,
    device: torch.device | str = "cpu",
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``teacher`` over every example and write the cache into ``out``; returns its meta."""
    import sys

    out = Path(out)
    vocab = teacher.get_output_embeddings().weight.shape[0]
    if not 1 <= k <= vocab:
        raise ValueError(f"k must be in [1, {vocab}] (the vocabulary), got {k}")
    counts = {name: target_counts(ex) for name, ex in splits.items()}
    total = int(sum(c.sum() for c in counts.values()))
    create_run_dir(out, force=force, kind="llm-cache", subdirs=())  # checks it first
    ids = _open_array(out / "ids.npy", np.int32, (total, k))
    logp = _open_array(out / "log_probs.npy", np.float16, (total, k))
    tail = _open_array(out / "tail.npy", np.float16, (total,))
    teacher.eval().to(device)
    offsets, row, metrics = {}, 0, {}
    for name, examples in splits.items():
        offsets[name] = row
        acc = TokenMetrics()
        for i in range(0, len(examples), batch):
            b = collate(examples[i : i + batch], pad, device)
            logits = teacher(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1]
            mask = b.target_mask()
            if name != "train":
                acc.update(logits, b.input_ids[:, 1:], mask)
            log_p = torch.log_softmax(logits[mask].float(), dim=-1)
            top, top_ids = log_p.topk(k, dim=-1)
            rest = torch.logsumexp(log_p.scatter(1, top_ids, float("-inf")), dim=-1)
            n = top.shape[0]
            ids[row : row + n] = top_ids.cpu().numpy().astype(np.int32)
            logp[row : row + n] = top.clamp_min(-60000).cpu().numpy().astype(np.float16)
            tail[row : row + n] = rest.clamp_min(-60000).cpu().numpy().astype(np.float16)
            row += n
            if progress:
                print(
                    f"llm-cache-teacher {name}: {min(i + batch, len(examples))}/{len(examples)} texts",
                    file=sys.stderr,
                    flush=True,
                )
        if name != "train":
            metrics[name] = acc.compute()
    if row != total:
        raise RuntimeError(f"the cache holds {row} tokens, {total} were expected")
    for name, array in zip(ARRAYS, (ids, logp, tail), strict=True):
        try:
            array.flush()
        except OSError as err:
            raise OutputError(f"cannot write {out / name}: {err.strerror or err}") from None
    del ids, logp, tail
    meta = {
        "format": FORMAT,
        "key": key,
        "k": k,
        "vocab_size": vocab,
        "checksums": {name: array_checksum(out / name) for name in ARRAYS},
        "tokens": total,
        "bytes_per_token": 6 * k + 2,
        "splits": {
            name: {"offset": offsets[name], "counts": counts[name].tolist()} for name in splits
        },
        "teacher_metrics": metrics,
        "complete": True,
    }
    write_json(out / "meta.json", meta)  # last: a cache without it was never finished
    return meta


class TopKCache:
    """A finished top-k cache, memory-mapped, checked against what a run expects."""

    def __init__(self, path: str | Path, expected_key: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if read_marker(self.path) is None or not meta_path.is_file():
            raise TeacherCacheError(
                f"{self.path} is not a finished bdkd teacher cache (bdkd llm-cache-teacher writes one)"
            )
        try:
            self.meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as err:
            raise TeacherCacheError(f"{meta_path} is damaged ({err})") from None
        if self.meta.get("format") != FORMAT or not self.meta.get("complete"):
            raise TeacherCacheError(f"{self.path}: unknown or unfinished cache format")
        if expected_key is not None:
            self.check_key(expected_key)
        arrays = []
        for name in ("ids.npy", "log_probs.npy", "tail.npy"):
            try:  # never unpickles: allow_pickle stays False
                arrays.append(np.load(self.path / name, mmap_mode="r", allow_pickle=False))
            except (OSError, ValueError) as err:
                first = (str(err).splitlines() or [type(err).__name__])[0]
                raise TeacherCacheError(
                    f"{self.path / name} is missing or damaged ({first})"
                ) from None
        self.ids, self.log_probs, self.tail = arrays
        k, n = self.meta["k"], self.meta["tokens"]
        if self.ids.shape != (n, k) or self.log_probs.shape != (n, k) or self.tail.shape != (n,):
            raise TeacherCacheError(
                f"{self.path}: arrays do not match meta.json (k {k}, {n} tokens)"
            )
        self._check_integrity()
        self._starts = {}
        for name, split in self.meta["splits"].items():
            counts = np.asarray(split["counts"], dtype=np.int64)
            self._starts[name] = (
                split["offset"] + np.concatenate([[0], np.cumsum(counts)[:-1]]),
                counts,
            )

    def _check_integrity(self) -> None:
        """Refuse a cache whose files were edited or damaged: each array's checksum, every
        split's offsets and counts within the arrays, ids unique per row and inside the
        vocabulary, and probabilities (top k plus the tail) that sum to at most 1."""
        sums = self.meta.get("checksums") or {}
        for name in ARRAYS:
            if sums.get(name) != array_checksum(self.path / name):
                raise TeacherCacheError(
                    f"{self.path / name}: its checksum does not match meta.json (the array was "
                    "edited or damaged); rebuild the cache with bdkd llm-cache-teacher"
                )
        self._check_splits()
        vocab = int(self.meta.get("vocab_size", 0))
        for start in range(0, self.ids.shape[0], CHUNK):
            ids = np.asarray(self.ids[start : start + CHUNK])
            if ids.size and (ids.min() < 0 or ids.max() >= vocab):
                raise TeacherCacheError(
                    f"{self.path / 'ids.npy'}: token ids outside the vocabulary [0, {vocab})"
                )
            ordered = np.sort(ids, axis=1)
            if ordered.shape[1] > 1 and (ordered[:, 1:] == ordered[:, :-1]).any():
                raise TeacherCacheError(f"{self.path / 'ids.npy'}: token ids repeat within a row")
            logp = np.asarray(self.log_probs[start : start + CHUNK], dtype=np.float64)
            tail = np.asarray(self.tail[start : start + CHUNK], dtype=np.float64)
            mass = np.exp(logp).sum(axis=1) + np.exp(tail)
            if not np.isfinite(mass).all() or (mass > 1.0 + MASS_TOLERANCE).any():
                raise TeacherCacheError(
                    f"{self.path / 'log_probs.npy'}: a row's probabilities sum to more than 1 "
                    "(or are not numbers); the cache was edited or damaged"
                )

    def _check_splits(self) -> None:
        """Each split's offset and counts lie within the arrays, the splits do not overlap
        and together cover every cached token."""
        n, where = int(self.meta["tokens"]), self.path / "meta.json"
        spans = []
        for name, split in self.meta.get("splits", {}).items():
            offset, counts = split.get("offset"), split.get("counts")
            if not isinstance(offset, int) or not isinstance(counts, list):
                raise TeacherCacheError(f"{where}: split {name!r} has no offset and counts")
            if any(not isinstance(c, int) or c < 0 for c in counts):
                raise TeacherCacheError(f"{where}: split {name!r} has a negative token count")
            end = offset + sum(counts)
            if offset < 0 or end > n:
                raise TeacherCacheError(
                    f"{where}: split {name!r} offset {offset} and counts reach token {end}, "
                    f"outside the {n} cached tokens"
                )
            spans.append((offset, end, name))
        spans.sort()
        covered = 0
        for offset, end, name in spans:
            if offset != covered:
                raise TeacherCacheError(
                    f"{where}: split {name!r} starts at offset {offset}, token {covered} was "
                    "expected (splits overlap or leave a gap)"
                )
            covered = end
        if covered != n:
            raise TeacherCacheError(f"{where}: the splits cover {covered} of {n} cached tokens")

    def check_key(self, expected_key: dict[str, Any]) -> None:
        """Refuse the cache, naming what differs, unless it was made from ``expected_key``."""
        if self.meta["key"] != expected_key:
            differ = sorted(
                k
                for k in set(expected_key) | set(self.meta["key"])
                if expected_key.get(k) != self.meta["key"].get(k)
            )
            raise TeacherCacheError(
                f"teacher cache {self.path} was made for a different {differ}; rebuild it with "
                "bdkd llm-cache-teacher for this config"
            )

    @property
    def k(self) -> int:
        return int(self.meta["k"])

    def teacher(self, split: str, indices: Sequence[int]) -> TopKTeacher:
        """The cached teacher for the target tokens of examples ``indices`` of ``split``, in
        the order :func:`bdkd.llm.data.collate` puts them (row-major)."""
        starts, counts = self._starts[split]
        rows = np.concatenate([np.arange(starts[i], starts[i] + counts[i]) for i in indices])
        return TopKTeacher(
            torch.from_numpy(np.asarray(self.ids[rows], dtype=np.int64)),
            torch.from_numpy(np.asarray(self.log_probs[rows], dtype=np.float32)),
            torch.from_numpy(np.asarray(self.tail[rows], dtype=np.float32)),
        )
