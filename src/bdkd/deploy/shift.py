"""Calibration under shift: `bdkd eval RUN --shift`.

The run's test split, corrupted by every corruption of :mod:`bdkd.data.corrupt` at every
severity (deterministic: each batch's draws come from the suite's seed, the corruption, the
severity and the batch's place), is given to the run's deployed network, or to an exported
file (``runner``: float or int8, as a device runs it); per corruption and severity: top-1,
ECE, NLL, Brier and AURC, with the clean test split beside and the mean over the suite. A
folder of the user's own shifted images (``DIR/<class>/*``, the run's classes) is measured the
same way instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bdkd import calibration as cal
from bdkd.data.corrupt import CORRUPTIONS, SEVERITIES, corrupt
from bdkd.data.folders import scan_image_folder, stack_images
from bdkd.deploy.measure import FileNetwork
from bdkd.deploy.run import DeployedRun
from bdkd.engine.evaluate import evaluate_networks
from bdkd.files import dumps_json, write_text
from bdkd.report import markdown_table

__all__ = ["KEYS", "check_suite", "shift_report", "shift_suite"]

KEYS = ("accuracy", "ece", "nll", "brier", "aurc")
FOLDER_BATCH = 256


def check_suite(corruptions: Sequence[str] | None, severities: Sequence[int] | None) -> tuple:
    """The corruptions and severities asked for, checked (one line naming the unknown one)."""
    names = list(corruptions or CORRUPTIONS)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"--corruptions: unknown {unknown}; known: {list(CORRUPTIONS)}")
    levels = list(severities or SEVERITIES)
    wrong = [s for s in levels if s not in SEVERITIES]
    if wrong:
        raise ValueError(f"--severities: {wrong} not among {list(SEVERITIES)}")
    return names, levels


def _measure(network: nn.Module, batches: Any, dep: DeployedRun, transform: Callable) -> dict:
    result = evaluate_networks(
        {"net": network},
        batches,
        dep.task.evaluator(transform, dep.summary.get("bins", 15)),
        keep_logits=True,
    )
    m = result.accumulators["net"].compute()
    out = {k: m[k] for k in KEYS if k in m}
    out["aurc"] = cal.aurc(torch.softmax(result.logits["net"].double(), 1), result.labels)
    return out


def _corrupted(loader: Any, name: str, severity: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    base = ((seed * 101 + list(CORRUPTIONS).index(name)) * 11 + severity) * 100_003
    for i, (images, labels) in enumerate(loader):
        yield corrupt(images, name, severity, seed=base + i), labels


def _folder_batches(dep: DeployedRun, folder: Path) -> Iterator[tuple[Tensor, Tensor]]:
    info = dep.info
    names = list(info.class_names) or [str(i) for i in range(info.num_classes)]
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if classes != sorted(names):
        raise ValueError(
            f"--shift {folder}: its class folders {classes} are not the run's classes "
            f"{sorted(names)} (named by class index when the dataset names none)"
        )
    paths, labels, _ = scan_image_folder(folder, names)
    mode = "L" if info.channels == 1 else "RGB"
    for i in range(0, len(paths), FOLDER_BATCH):
        images = stack_images(paths[i : i + FOLDER_BATCH], info.image_size, mode)
        yield images, torch.tensor(labels[i : i + FOLDER_BATCH])


def shift_suite(
    dep: DeployedRun,
    runner: Callable[[Tensor], Tensor] | None = None,
    *,
    probabilities: bool = False,
    raw_input: bool = False,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] | None = None,
    folder: str | Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The shift measurements of the run's network (or of ``runner``, an exported file)."""
    if not dep.task.supports_shift:
        raise ValueError(
            f"--shift corrupts images and keeps their labels; {dep.task.name} label maps would "
            "have to move with them, so the suite measures classification runs"
        )
    names, levels = check_suite(corruptions, severities)
    network = dep.network if runner is None else FileNetwork(runner, probabilities)
    transform = (lambda images: images) if raw_input else dep.transform
    with torch.no_grad():
        clean = _measure(network, dep.loaders.test, dep, transform)
        if folder is not None:
            shifted = _measure(network, _folder_batches(dep, Path(folder)), dep, transform)
            return {"clean": clean, "folder": str(folder), "shifted": shifted}
        table = {
            name: {
                str(s): _measure(
                    network, _corrupted(dep.loaders.test, name, s, seed), dep, transform
                )
                for s in levels
            }
            for name in names
        }
    cells = [m for per in table.values() for m in per.values()]
    mean = {k: sum(m[k] for m in cells) / len(cells) for k in KEYS}
    return {"clean": clean, "corruptions": table, "mean": mean, "seed": seed, "severities": levels}


def shift_report(result: dict[str, Any], out: Path, title: str) -> list[Path]:
    """shift.json, shift.md (one row per corruption, a column per severity for top-1 and
    ECE, the suite mean) and shift.png; returns the paths written."""
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    write_text(json_path, dumps_json(result, indent=2) + "\n")
    lines = [f"# Calibration under shift: {title}", ""]
    if "folder" in result:
        rows = {"clean test": result["clean"], f"folder {result['folder']}": result["shifted"]}
        lines += [
            markdown_table(rows, first="images", keys=("accuracy", "ece", "nll", "brier")),
            "",
        ]
        write_text(md_path, "\n".join(lines))
        return [json_path, md_path]
    levels = result["severities"]
    for key, label in (("accuracy", "top-1 %"), ("ece", "ECE %")):
        lines += [f"{label} by severity:", ""]
        lines.append("| corruption | " + " | ".join(str(s) for s in levels) + " |")
        lines.append("|---|" + "---|" * len(levels))
        for name, per in result["corruptions"].items():
            lines.append(
                f"| {name} | " + " | ".join(f"{100 * per[str(s)][key]:.2f}" for s in levels) + " |"
            )
        lines.append("")
    rows = {"clean test": result["clean"], "suite mean": result["mean"]}
    lines += [markdown_table(rows, first="images", keys=("accuracy", "ece", "nll", "brier")), ""]
    figure = out.with_suffix(".png")
    _figure(result, figure, title)
    lines += [f"![shift]({figure.name})", ""]
    write_text(md_path, "\n".join(lines))
    return [json_path, md_path, figure]


def _figure(result: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bdkd.files import atomic_path

    levels = result["severities"]
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6))
    for ax, key, label in ((axes[0], "accuracy", "top-1 %"), (axes[1], "ece", "ECE %")):
        for name, per in result["corruptions"].items():
            ax.plot(levels, [100 * per[str(s)][key] for s in levels], marker="o", ms=3, label=name)
        ax.axhline(100 * result["clean"][key], color="black", linestyle="--", label="clean")
        ax.set(xlabel="severity", ylabel=label, xticks=levels)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
