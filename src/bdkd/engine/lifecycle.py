"""The run lifecycle that every training loop goes through (`bdkd train`, `bdkd llm-distill`).

One run, in order:

1. **look** (:class:`RunLifecycle`'s constructor): the run directory is checked before
   anything is built — a new run needs a fresh directory (or ``--force`` on one bdkd made), a
   resumed one its marker, config and checkpoint; threads, device and the process group are
   set up;
2. the caller seeds (:meth:`RunLifecycle.seed`) and builds its data, models and optimizers;
3. **rehearse** (:meth:`RunLifecycle.rehearse`): one real training step — forward, backward,
   optimizer step — on a couple of examples, then every parameter, buffer, optimizer state and
   RNG state is put back: a setting that would fail in the first step fails here, before the
   run directory (or the good run ``--force`` would replace) is touched;
4. **open** (:meth:`RunLifecycle.open`): a new run directory is created (marker with a fresh
   run id, ``config.yaml``); a resumed run's checkpoint is read and checked against the run
   (its id, its kind, its schema version, its config);
5. train: :meth:`check_finite` stops a diverging run at its step, :meth:`log` appends one
   record to ``metrics.jsonl``, :meth:`on_step` and :meth:`on_eval` give the loss terms and
   metrics to the callbacks and the trackers of ``output.report_to``
   (:mod:`bdkd.engine.tracking`),
   :meth:`save` writes the checkpoint atomically (format, kind and run id added here, the only
   place that writes them);
6. **finish** (:meth:`RunLifecycle.finish`): ``summary.json``, the artifacts to the trackers,
   the callbacks closed, the processes joined.

Checkpoints are format 3: ``{"format": 3, "kind": "image" | "llm", "run_id", "config",
"rng", ...}``; format 2 (before the kind was recorded) is still read.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bdkd.config import ConfigError, config_differences
from bdkd.engine import distributed
from bdkd.engine.build import resolve_device
from bdkd.engine.callbacks import Callback, Callbacks, flatten
from bdkd.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_atomic,
    seed_everything,
    set_rng_state,
)
from bdkd.engine.rundir import (
    RunDirError,
    append_jsonl,
    check_run_dir,
    create_run_dir,
    read_marker,
    refuse_links,
    truncate_metrics,
    write_text_atomic,
)
from bdkd.engine.tracking import open_trackers, tracker_ids
from bdkd.files import write_json

CHECKPOINT_FORMAT = 3
READABLE_FORMATS = (2, 3)
KINDS = ("image", "llm")

RESUME_MAY_CHANGE = (
    "train.progress",
    "train.threads",
    "train.device",
    "train.teacher_cache",
    "data.root",
    "output",
)
"""Config keys that may differ between a checkpoint and the run resuming it: where things
are and how the run is shown, never what is computed. ``train.epochs`` is not among them:
the learning-rate schedule depends on it, so a resumed run finishes the schedule it began."""

__all__ = [
    "CHECKPOINT_FORMAT",
    "RESUME_MAY_CHANGE",
    "RunLifecycle",
    "TrainingDiverged",
    "check_checkpoint_matches",
    "check_resumable",
    "checkpoint_kind",
]


class TrainingDiverged(RuntimeError):
    """A loss term became NaN or infinite; the message names the step, term and network."""


def check_resumable(run_dir: str | Path) -> dict[str, Any]:
    """The marker of a run directory that ``--resume`` can continue (else a RunDirError)."""
    run_dir = Path(run_dir)
    marker = read_marker(run_dir)
    if marker is None:
        raise RunDirError(
            f"{run_dir}: no bdkd run marker (.bdkd-run), so it is not a run directory to resume"
        )
    if not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"{run_dir}: no config.yaml, so it cannot be resumed")
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        raise RunDirError(f"{run_dir}: no checkpoints/last.pt yet; start it again with --force")
    return marker


def checkpoint_kind(state: Mapping[str, Any], path: Path) -> str:
    """The kind of run (``image`` or ``llm``) that wrote checkpoint ``state``; format 2
    checkpoints say it by counting epochs or steps."""
    fmt = state.get("format")
    if fmt not in READABLE_FORMATS:
        raise CheckpointError(
            f"checkpoint {path} has format {fmt!r}; this bdkd reads formats "
            f"{list(READABLE_FORMATS)} and writes {CHECKPOINT_FORMAT}"
        )
    kind = state.get("kind") if fmt == 3 else ("llm" if "step" in state else "image")
    if kind not in KINDS:
        raise CheckpointError(f"checkpoint {path} names an unknown kind of run {kind!r}")
    return str(kind)


def check_checkpoint_matches(
    state: dict[str, Any],
    cfg_dict: dict[str, Any],
    marker: dict[str, Any],
    path: Path,
    normalise: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    kind: str | None = None,
) -> None:
    """Refuse a checkpoint of another kind of run, written by another run, or under a config
    that differs from the run's ``config.yaml`` beyond :data:`RESUME_MAY_CHANGE`.
    ``normalise`` validates the checkpoint's config as the run's was (so that a key added to
    bdkd since, at its default, is no difference)."""
    found = checkpoint_kind(state, path)
    if kind is not None and found != kind:
        raise CheckpointError(
            f"checkpoint {path} was written by a {found} run; this is a {kind} run"
        )
    if state.get("run_id") != marker.get("run_id"):
        raise CheckpointError(
            f"checkpoint {path} was written by another run (run id {state.get('run_id')!r}, this "
            f"directory's is {marker.get('run_id')!r}); it cannot continue this run"
        )
    saved = state["config"]
    if normalise is not None:
        try:
            saved = normalise(saved)
        except ConfigError:
            pass  # compared as written: the differences name what no longer validates
    diffs = config_differences(saved, cfg_dict, RESUME_MAY_CHANGE)
    if diffs:
        raise ConfigError(
            f"cannot resume {path.parent.parent}: its config.yaml differs from the checkpoint's in "
            f"{'; '.join(diffs)} (only {', '.join(RESUME_MAY_CHANGE)} may change; start a new "
            "run instead)"
        )


def _snapshot(modules: Iterable[torch.nn.Module]) -> list[dict[str, torch.Tensor]]:
    """CPU copies of every trainable parameter and every buffer of ``modules``."""
    out = []
    for module in modules:
        state = {}
        for name, p in module.named_parameters():
            if p.requires_grad:
                state[name] = p.detach().to("cpu", copy=True)
        for name, b in module.named_buffers():
            state[name] = b.detach().to("cpu", copy=True)
        out.append(state)
    return out


@torch.no_grad()
def _restore(modules: Iterable[torch.nn.Module], saved: list[dict[str, torch.Tensor]]) -> None:
    for module, state in zip(modules, saved, strict=True):
        tensors = dict(module.named_parameters())
        tensors.update(dict(module.named_buffers()))
        for name, value in state.items():
            tensors[name].copy_(value)
        for p in module.parameters():
            p.grad = None


class RunLifecycle:
    """One run in its directory, from the first look to the finish (module docstring).

    ``kind`` is ``image`` or ``llm``; ``config`` is the run's resolved config as plain data,
    ``config_text`` its YAML, ``normalise`` re-validates a checkpoint's stored config.
    ``metric_key`` is what a metrics record is counted by (``epoch`` or ``step``).
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        kind: str,
        config: dict[str, Any],
        config_text: str,
        normalise: Callable[[dict[str, Any]], dict[str, Any]],
        resume: bool = False,
        force: bool = False,
        protect: tuple[str | Path, ...] = (),
        threads: int | None = None,
        device: str = "auto",
        metric_key: str = "epoch",
        output: Any = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.run_dir, self.kind = Path(run_dir), kind
        self.config, self.config_text, self.normalise = config, config_text, normalise
        self.resume, self.force, self.protect = resume, force, protect
        self.metric_key = metric_key
        self.run_dir_kind = "run" if kind == "image" else "llm-distill"
        # look before building anything; the directory is touched only by open()
        self.marker = check_resumable(self.run_dir) if resume else None
        if resume:
            refuse_links(self.run_dir, self.run_dir_kind)
        if not resume:
            check_run_dir(self.run_dir, force=force, kind=self.run_dir_kind, protect=protect)
        if threads:
            torch.set_num_threads(threads)
        device_ = resolve_device(device)
        self.group = distributed.init_from_env(device_.type)
        if device_.type == "cuda" and self.group.enabled:
            device_ = torch.device("cuda", self.group.local_rank)
        self.device = device_
        self.is_main = self.group.is_main
        self.run_id = ""
        self.output, self.user_callbacks = output, list(callbacks)
        self.callbacks = Callbacks()
        self.trackers: list[Callback] = []

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def seed(self, seed: int) -> None:
        """Seed Python, numpy and torch (every device)."""
        seed_everything(seed)

    def rehearse(
        self,
        step: Callable[[], Any],
        modules: Iterable[torch.nn.Module],
        optimizers: Iterable[torch.optim.Optimizer],
        scaler: Any = None,
    ) -> Any:
        """Run ``step`` (one real training step: forward, backward, optimizer step), then put
        every trainable parameter and buffer of ``modules``, every optimizer's state, the
        gradient scaler and every RNG state back as they were; returns what ``step`` did."""
        modules, optimizers = list(modules), list(optimizers)
        saved_modules = _snapshot(modules)
        saved_optimizers = [copy.deepcopy(o.state_dict()) for o in optimizers]
        saved_scaler = (
            copy.deepcopy(scaler.state_dict())
            if scaler is not None and scaler.is_enabled()
            else None
        )
        saved_rng = rng_state()
        try:
            return step()
        finally:
            _restore(modules, saved_modules)
            for opt, state in zip(optimizers, saved_optimizers, strict=True):
                opt.load_state_dict(state)
                opt.zero_grad(set_to_none=True)
            if saved_scaler is not None:
                scaler.load_state_dict(saved_scaler)
            set_rng_state(saved_rng)

    def open(self) -> dict[str, Any] | None:
        """Create the run directory (new run; the first process writes, the others wait) or
        read and check the resumed run's checkpoint (returned; None for a new run). Opens the
        trackers."""
        state = None
        if self.resume:
            assert self.marker is not None
            self.run_id = str(self.marker["run_id"])
            state = load_checkpoint(self.checkpoint_path, map_location="cpu")
            check_checkpoint_matches(
                state,
                self.config,
                self.marker,
                self.checkpoint_path,
                self.normalise,
                kind=self.kind,
            )
        elif self.is_main:
            self.run_id = create_run_dir(
                self.run_dir, force=self.force, kind=self.run_dir_kind, protect=self.protect
            )
            write_text_atomic(self.run_dir / "config.yaml", self.config_text)
        distributed.barrier()
        if not self.resume and not self.is_main:
            self.run_id = str((read_marker(self.run_dir) or {}).get("run_id", ""))
        if self.is_main:
            resumed = (state or {}).get("tracking")
            if self.output is not None:
                self.trackers = open_trackers(self.output, self.run_dir, self.run_dir.name, resumed)
            self.callbacks = Callbacks([*self.user_callbacks, *self.trackers])
            self.callbacks.on_start(flatten(self.config))
        return state

    def truncate_metrics(self, keep: int) -> None:
        """Drop the metrics records a resumed checkpoint does not cover (count < ``keep``)."""
        if self.is_main:
            truncate_metrics(self.metrics_path, keep, key=self.metric_key)

    @property
    def log_every(self) -> int:
        return getattr(self.output, "log_every", 10)

    @property
    def listening(self) -> bool:
        """Whether any callback or tracker is attached (per-step values are then computed)."""
        return bool(self.callbacks.callbacks)

    def on_step(self, step: int, values: Mapping[str, float]) -> None:
        """The running loss terms after step ``step`` to the callbacks and trackers."""
        self.callbacks.on_step(step, values)

    def on_epoch(self, epoch: int, values: Mapping[str, float]) -> None:
        """An image run's epoch ended: its mean loss terms and ``lr``."""
        self.callbacks.on_epoch(epoch, values)

    def on_eval(self, step: int, values: Mapping[str, Any]) -> None:
        """A validation's metrics (``val/<network>/<metric>``) and the loss terms."""
        self.callbacks.on_eval(step, values)

    def log(self, record: dict[str, Any]) -> None:
        """Append one record to ``metrics.jsonl`` (first process only)."""
        if self.is_main:
            append_jsonl(self.metrics_path, record)

    def save(self, payload: dict[str, Any], path: Path | None = None) -> None:
        """Write the checkpoint atomically (``checkpoints/last.pt``, or ``path``): ``payload``
        with the format, the kind, the run id, the config and every RNG state (first process
        only)."""
        if not self.is_main:
            return
        save_atomic(
            {
                "format": CHECKPOINT_FORMAT,
                "kind": self.kind,
                "run_id": self.run_id,
                **payload,
                "rng": rng_state(),
                "config": self.config,
                "tracking": tracker_ids(self.trackers),
            },
            path or self.checkpoint_path,
        )

    def check_finite(self, bad: bool, message: Callable[[], str]) -> None:
        """Stop the run with ``message()`` when ``bad`` (a non-finite loss at this step)."""
        if bad:
            raise TrainingDiverged(message())

    def finish(self, summary: dict[str, Any], artifacts: Sequence[str] = ()) -> None:
        """Write ``summary.json`` (first process), give it and the run's ``artifacts`` (files
        in the run directory) to the callbacks and trackers, close them, join the processes."""
        if self.is_main:
            ids = tracker_ids(self.trackers)
            if ids:
                summary["tracking"] = ids
            write_json(self.run_dir / "summary.json", summary)
            paths = [self.run_dir / a for a in (*artifacts, "summary.json")]
            self.callbacks.on_finish(summary, [p for p in paths if p.is_file()])
        self.close()
        distributed.barrier()

    def guarded(self, fit: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run a trainer's ``fit``; when it fails (an error, an interruption) the callbacks
        and trackers are closed (a tracker marks its run failed) before the error goes on."""
        try:
            return fit()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close every callback and tracker (also when the run failed)."""
        with contextlib.suppress(Exception):
            self.callbacks.close()
        self.callbacks, self.trackers = Callbacks(), []
