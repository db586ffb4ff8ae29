"""Evaluation: one pass of any networks over batches, for every task.

:func:`evaluate_networks` runs every given network on each batch once (under the run's
autocast, logits upcast to float32), streams the task's metrics, and keeps the logits when
asked (for temperature scaling and saved predictions); it serves training, `bdkd eval` and
the LLM side (:class:`bdkd.llm.evaluate.NextTokenTask`); the tasks of :mod:`bdkd.engine.tasks`
say how a batch becomes logits and which accumulator streams its metrics.
:func:`evaluate_checkpoint` is `bdkd eval`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bdkd import calibration as cal
from bdkd.config import ConfigError, validate
from bdkd.engine import build, distributed, tasks
from bdkd.engine.checkpoint import CheckpointError, load_checkpoint, load_network_state
from bdkd.plugins import code_trusted


@dataclass
class Evaluation:
    """Per network: the metric accumulator; and, when kept, logits and labels (in order)."""

    accumulators: dict[str, cal.CalibrationAccumulator]
    logits: dict[str, Tensor] = field(default_factory=dict)
    labels: Tensor | None = None

    def metrics(self, name: str) -> dict[str, float]:
        return tasks.metric_dict(self.accumulators[name])


@torch.no_grad()
def evaluate_networks(
    networks: Mapping[str, nn.Module],
    batches: Iterable[Any],
    task: Any,
    *,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    keep_logits: bool = False,
    reference: str | None = None,
) -> Evaluation:
    """Run every network once per batch (eval mode is the caller's business) and stream its
    metrics: the one evaluation loop of training, ``bdkd eval`` and the LLM side.

    ``task`` turns a batch into ``(logits (..., C), labels (...), mask or None)`` per network
    (``predict``; a fourth element is a reference of the task's own, e.g. a cached teacher)
    and makes the metric accumulator (``accumulator``); logits are upcast to float32. With
    ``reference`` (a network name, e.g. the teacher), every other network's accumulator also
    gets the reference's logits (agreement with it). Metrics are summed over
    processes when a process group is up; kept logits are gathered in rank order.
    """
    accs = {n: task.accumulator(n) for n in networks}
    kept: dict[str, list[Tensor]] = {n: [] for n in networks}
    labels_seen: list[Tensor] = []
    for batch in batches:
        with autocast():
            outs = {n: task.predict(net, batch) for n, net in networks.items()}
        ref = None if reference is None else outs[reference][0].float()
        labels = None
        for n, out in outs.items():
            z, labels, mask = out[0].float(), out[1], out[2]
            given = ref if ref is not None and n != reference else None
            if given is None and len(out) > 3:
                given = out[3]  # a reference the task supplies itself (a cached teacher)
            if given is not None:
                accs[n].update(z, labels, mask, given)
            else:
                accs[n].update(z, labels, mask)
            if keep_logits:
                kept[n].append(z.cpu())
        if keep_logits and labels is not None:
            labels_seen.append(labels.cpu())
    for acc in accs.values():
        acc.all_reduce()
    if not keep_logits:
        return Evaluation(accs)
    return Evaluation(
        accs,
        {n: distributed.gather_cat(torch.cat(v)) for n, v in kept.items()},
        distributed.gather_cat(torch.cat(labels_seen)),
    )


def evaluate_checkpoint(
    target: str | Path,
    *,
    split: str = "test",
    dataset: str | None = None,
    root: str | None = None,
    networks: list[str] | None = None,
    device: str = "auto",
    bins: int = 15,
    trust_code: bool = False,
    checkpoint: str = "last",
) -> tuple[dict[str, dict[str, float]], dict[str, Tensor], Tensor]:
    """Metrics, logits and labels of each network of a run directory or checkpoint file.

    The dataset defaults to the run's; ``dataset``/``root`` evaluate on another one with the
    same number of classes. ``split`` is ``test`` or ``val``. Uses the run's precision. The
    checkpoint's stored config is data: only the networks evaluated are built, and it may
    name only registered objects unless ``trust_code`` (or ``BDKD_TRUST_CODE=1``).
    """
    path = Path(target)
    if checkpoint not in ("last", "best"):
        raise ConfigError(f"--checkpoint must be last or best, got {checkpoint!r}")
    ckpt_path = path / "checkpoints" / f"{checkpoint}.pt" if path.is_dir() else path
    if checkpoint == "best" and path.is_dir() and not ckpt_path.is_file():
        raise ConfigError(f"{path}: no checkpoints/best.pt (the run did not set train.save_best)")
    state = load_checkpoint(ckpt_path)
    if split not in ("test", "val"):
        raise ConfigError(f"split must be 'test' or 'val', got {split!r}")
    names = networks or list(state["networks"])
    unknown = sorted(set(names) - set(state["networks"]))
    if unknown:
        raise ConfigError(
            f"checkpoint {ckpt_path} has no network(s) {unknown}; it has {sorted(state['networks'])}"
        )
    data: dict[str, Any] = dict(state["config"])
    stored = data.get("networks") if isinstance(data.get("networks"), dict) else {}
    missing = sorted(set(names) - set(stored))
    if missing:
        raise CheckpointError(f"checkpoint {ckpt_path}: its config has no network(s) {missing}")
    data["networks"] = {n: stored[n] for n in names}  # only what is evaluated is built
    validate(data, trusted=code_trusted(trust_code), source=f"checkpoint {ckpt_path}")
    data["data"] = dict(data.get("data", {}))
    if dataset is not None:
        data["data"]["dataset"] = dataset
        data["data"]["root"] = root
    elif root is not None:
        data["data"]["root"] = root
    cfg = validate(data)
    splits = build.load_splits(cfg)
    if splits.info.num_classes != state.get("num_classes"):
        raise ConfigError(
            f"dataset {splits.info.name!r} has {splits.info.num_classes} classes, the checkpoint's networks {state.get('num_classes')}"
        )
    dev = build.resolve_device(device)
    for name in list(cfg.networks):
        cfg.networks[name].checkpoint = None
        cfg.networks[name].weights = None
    models = build.build_networks(cfg, splits)
    task = tasks.for_dataset(splits.info)
    augment = task.augment(cfg.data)
    loaders = build.build_loaders(cfg, splits, dev)
    chosen = loaders.test if split == "test" else loaders.val
    if chosen is None:
        raise ConfigError(f"the run {path} has no validation split (data.val_size: 0)")
    selected = {}
    for name in names:
        net = models[name].to(dev)
        load_network_state(net, state["networks"][name], f"checkpoint {ckpt_path}, {name}")
        selected[name] = net.eval()
    result = evaluate_networks(
        selected,
        chosen,
        task.evaluator(lambda images: augment(images, train=False), bins),
        autocast=build.autocast_factory(dev, cfg.train.precision),
        keep_logits=True,
    )
    metrics = {n: result.metrics(n) for n in names}
    return metrics, result.logits, result.labels


def checkpoint_deployed(target: str | Path) -> str | None:
    """The deployed network of a run directory or checkpoint file (None if it names none)."""
    path = Path(target)
    state = load_checkpoint(path / "checkpoints" / "last.pt" if path.is_dir() else path)
    deployed = state.get("deployed")
    return deployed if isinstance(deployed, str) else None
