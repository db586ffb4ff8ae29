"""Evaluate a finished run or checkpoint on any split: `bdkd eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bdkd import calibration as cal
from bdkd.config import ConfigError, validate
from bdkd.engine import build
from bdkd.engine.checkpoint import load_checkpoint


def evaluate_checkpoint(
    target: str | Path,
    *,
    split: str = "test",
    dataset: str | None = None,
    root: str | None = None,
    networks: list[str] | None = None,
    device: str = "auto",
    bins: int = 15,
) -> tuple[dict[str, dict[str, float]], dict[str, Tensor], Tensor]:
    """Metrics, logits and labels of each network of a run directory or checkpoint file.

    The dataset defaults to the run's; ``dataset``/``root`` evaluate on another one with the
    same number of classes. ``split`` is ``test`` or ``val``.
    """
    path = Path(target)
    ckpt_path = path / "checkpoints" / "last.pt" if path.is_dir() else path
    state = load_checkpoint(ckpt_path)
    data = dict(state["config"])
    data["data"] = dict(data["data"])
    if dataset is not None:
        data["data"]["dataset"] = dataset
        data["data"]["root"] = root
    elif root is not None:
        data["data"]["root"] = root
    cfg = validate(data)
    if split not in ("test", "val"):
        raise ConfigError(f"split must be 'test' or 'val', got {split!r}")
    splits = build.load_splits(cfg)
    if splits.info.num_classes != state["num_classes"]:
        raise ConfigError(
            f"dataset {splits.info.name!r} has {splits.info.num_classes} classes, the checkpoint's networks {state['num_classes']}"
        )
    names = networks or list(state["networks"])
    unknown = sorted(set(names) - set(state["networks"]))
    if unknown:
        raise ConfigError(
            f"checkpoint {ckpt_path} has no network(s) {unknown}; it has {sorted(state['networks'])}"
        )
    dev = build.resolve_device(device)
    for name in list(cfg.networks):
        cfg.networks[name].checkpoint = None
    models = build.build_networks(cfg, splits)
    augment = build.build_augment(cfg, splits)
    loader = build.build_loaders(cfg, splits, dev)
    chosen = loader.test if split == "test" else loader.val
    results: dict[str, dict[str, float]] = {}
    logits: dict[str, Tensor] = {}
    labels_all: list[Tensor] = []
    for i, name in enumerate(names):
        net = models[name].to(dev)
        net.load_state_dict(state["networks"][name])
        net.eval()
        acc = cal.CalibrationAccumulator(splits.info.num_classes, bins)
        chunks = []
        with torch.no_grad():
            for images, labels in chosen:
                z = net(augment(images, train=False)).float()
                acc.update(z, labels)
                chunks.append(z.cpu())
                if i == 0:
                    labels_all.append(labels.cpu())
        results[name] = acc.compute()
        logits[name] = torch.cat(chunks)
    return results, logits, torch.cat(labels_all)


def describe_checkpoint(state: dict[str, Any]) -> str:
    """A one-line description of a checkpoint."""
    return (
        f"{state.get('method')} on {state.get('dataset')}, epoch {state.get('epoch')}, "
        f"networks {state.get('models')}, deployed {state.get('deployed')}"
    )
