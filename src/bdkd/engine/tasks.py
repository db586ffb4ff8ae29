"""Tasks: what a batch is and what is measured, one object per kind of prediction.

A task owns everything that differs between image classification (logits (N, C)) and dense
prediction (logits (N, C, H, W), label maps with an ignore index): its augmentation, how a
distiller lays its logits out as rows (:class:`~bdkd.distillers.RowLayout`), the dry-run check
of a network's output, the evaluation of a batch (:meth:`Task.evaluator`: ``predict`` and
``accumulator`` for :func:`bdkd.engine.evaluate.evaluate_networks`), the test phase at the end
of a run, and what its report shows. The engine, the report and the CLI ask the task; none of
them compares task names. Causal language modelling is the third task, in
:mod:`bdkd.llm.evaluate` (``NextTokenTask``): it plugs into the same evaluation loop.

A new task is one class here with ``name`` and the methods of :class:`Task`, registered with
:func:`register_task`; datasets declare the task they serve (``DatasetInfo.task``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bdkd import calibration as cal
from bdkd.config import ConfigError, DataConfig
from bdkd.data import Augment, SegAugment, Splits
from bdkd.data.base import DatasetInfo
from bdkd.distillers import SAMPLE_ROWS, PixelRows, RowLayout
from bdkd.report import RUN_KEYS

__all__ = [
    "TASKS",
    "ClassificationTask",
    "SegmentationTask",
    "Task",
    "TestContext",
    "TestResults",
    "for_dataset",
    "register_task",
    "trust_of",
]

TestResults = tuple[dict[str, dict[str, Any]], dict[str, tuple], dict[str, Any]]
"""(metrics per network, what each prediction file holds, reliability panel per network)."""


class TestContext(Protocol):
    """What a task's test phase needs of the trainer."""

    distiller: Any
    loaders: Any
    splits: Splits
    cfg: Any

    def evaluate(self, loader: Any, **options: Any) -> Any: ...

    def frozen_evaluation(self) -> Any: ...


class Task(Protocol):
    """The protocol every task implements (see the module docstring)."""

    name: str
    layout: RowLayout
    report_keys: tuple[str, ...]
    unit: str
    sample_note: str
    supports_logit_cache: bool
    supports_shift: bool

    def augment(self, data: DataConfig) -> Augment | SegAugment: ...

    def check_logits(self, network: str, model: str, logits: Any, count: int) -> None: ...

    def evaluator(
        self, transform: Callable[[Tensor], Tensor], bins: int, **options: Any
    ) -> Any: ...

    def test_phase(self, run: TestContext) -> TestResults: ...

    def summary_extra(self) -> dict[str, Any]: ...

    def report_sections(self, rows: Mapping[str, Mapping[str, Any]]) -> list[str]: ...


DENSE_KEYS = (
    "miou",
    "accuracy",
    "ece",
    "classwise_ece",
    "nll",
    "brier",
    "ece_after_ts",
    "temperature",
)


def metric_dict(acc: Any) -> dict[str, float]:
    """Every metric of ``acc``; top-5 only when there are at least 10 classes."""
    m = acc.compute()
    if acc.num_classes < 10:
        m.pop("top5", None)
    return m


class ImageEval:
    """Image classification batches ``(images, labels)``, metrics of
    :class:`bdkd.calibration.CalibrationAccumulator`."""

    def __init__(self, transform: Callable[[Tensor], Tensor], num_classes: int, bins: int) -> None:
        self.transform, self.num_classes, self.bins = transform, num_classes, bins

    def predict(self, network: nn.Module, batch: Any) -> tuple[Tensor, Tensor, Tensor | None]:
        images, labels = batch
        return network(self.transform(images)), labels, None

    def accumulator(self, network: str = "") -> cal.CalibrationAccumulator:
        return cal.CalibrationAccumulator(self.num_classes, self.bins)


class SegEval:
    """Semantic segmentation batches ``(images, label maps)``: logits (N, C, H, W) are resized
    to the label maps' size (bilinear) when they differ; metrics are those of
    :class:`bdkd.calibration.SegmentationAccumulator` over the valid pixels.

    ``temperatures`` (per network) adds the metrics after temperature scaling;
    ``sample_fraction`` keeps a uniform sample of pixel logits (to fit a temperature on)."""

    def __init__(
        self,
        transform: Callable[[Tensor], Tensor],
        num_classes: int,
        bins: int,
        ignore_index: int = 255,
        *,
        temperatures: Mapping[str, float] | None = None,
        sample_fraction: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.transform, self.num_classes, self.bins = transform, num_classes, bins
        self.ignore_index, self.temperatures = ignore_index, dict(temperatures or {})
        self.sample_fraction, self.seed = sample_fraction, seed

    def predict(self, network: nn.Module, batch: Any) -> tuple[Tensor, Tensor, Tensor | None]:
        images, labels = batch
        logits = network(self.transform(images))
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = F.interpolate(
                logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False
            )
        return logits, labels.long(), None

    def accumulator(self, network: str = "") -> cal.SegmentationAccumulator:
        return cal.SegmentationAccumulator(
            self.num_classes,
            self.bins,
            self.ignore_index,
            temperature=self.temperatures.get(network),
            sample_fraction=self.sample_fraction,
            seed=self.seed,
        )


def _shape_error(network: str, model: str, want: str, classes: int, z: Any) -> ConfigError:
    got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
    return ConfigError(
        f"network {network!r} ({model}) must return logits of shape {want} with C = {classes}, "
        f"got {got}"
    )


class ClassificationTask:
    """Image classification: one row per image, every calibration metric, a temperature
    fitted on the validation logits."""

    name = "classification"
    report_keys = RUN_KEYS
    unit = "test"
    sample_note = ""
    supports_logit_cache = True
    supports_shift = True

    def __init__(self, info: DatasetInfo) -> None:
        self.info = info
        self.layout: RowLayout = SAMPLE_ROWS

    def augment(self, data: DataConfig) -> Augment:
        """Normalisation plus the dataset's (or the config's) augmentation: RandomResizedCrop
        (``data.random_resized_crop``, the default of large-image datasets) or a crop with
        padding, and flips."""
        info = self.info
        padding = info.crop_padding if data.crop_padding is None else data.crop_padding
        flip = info.flip if data.flip is None else data.flip
        rrc = (
            info.random_resized_crop
            if data.random_resized_crop is None
            else data.random_resized_crop
        )
        if not data.augment:
            padding, flip, rrc = 0, False, False
        return Augment(info.mean, info.std, crop_padding=padding, flip=flip, resized_crop=rrc)

    def check_logits(self, network: str, model: str, logits: Any, count: int) -> None:
        """A network must map a batch of ``count`` images to (count, C) logits."""
        c = self.info.num_classes
        if not (isinstance(logits, Tensor) and logits.shape == (count, c)):
            raise _shape_error(network, model, "(N, C)", c, logits)

    def evaluator(
        self, transform: Callable[[Tensor], Tensor], bins: int, **options: Any
    ) -> ImageEval:
        return ImageEval(transform, self.info.num_classes, bins)

    def test_phase(self, run: TestContext) -> TestResults:
        """Every network on test; a temperature fitted on val's kept logits."""
        distiller = run.distiller
        trained = [n for n in distiller.networks if n in distiller.trainable]
        val = None
        if run.loaders.val is not None:
            now = run.evaluate(run.loaders.val, networks=trained, keep_logits=True)
            frozen = run.frozen_evaluation()
            val = {n: (now if n in trained else frozen).logits[n] for n in distiller.networks}
            val_labels = now.labels if trained else frozen.labels
        test = run.evaluate(run.loaders.test, keep_logits=True)
        results: dict[str, dict[str, Any]] = {}
        for name in distiller.networks:
            m = metric_dict(test.accumulators[name])
            if run.cfg.eval.temperature_scaling and val is not None:
                t = cal.fit_temperature(val[name], val_labels)
                scaled = cal.calibration_metrics(
                    cal.apply_temperature(test.logits[name], t),
                    test.labels,
                    n_bins=run.cfg.eval.bins,
                )
                m.update(temperature=t, ece_after_ts=scaled["ece"], nll_after_ts=scaled["nll"])
            results[name] = m
        predictions = {
            n: (
                test.logits[n],
                test.labels,
                None if val is None else val[n],
                None if val is None else val_labels,
            )
            for n in results
        }
        panels = {n: (torch.softmax(test.logits[n].double(), 1), test.labels) for n in results}
        return results, predictions, panels

    def summary_extra(self) -> dict[str, Any]:
        return {}

    def report_sections(self, rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
        return []


class SegmentationTask:
    """Dense prediction: one row per valid pixel, pixel metrics streamed, a temperature per
    network fitted on a uniform sample of validation pixels."""

    name = "segmentation"
    report_keys = DENSE_KEYS
    unit = "test pixels"
    sample_note = "every valid test pixel is a sample; "
    supports_logit_cache = False
    supports_shift = False
    """The shift suite moves and blurs images and keeps their labels: label maps would have
    to move with them."""

    SAMPLE_PIXELS = 200_000
    """The temperature is fitted on a uniform sample of about this many validation pixels,
    and as many test pixels are saved with the predictions."""

    def __init__(self, info: DatasetInfo) -> None:
        self.info = info
        self.layout: RowLayout = PixelRows(info.ignore_index)

    def augment(self, data: DataConfig) -> SegAugment:
        """The paired scale / crop / flip of image and label map (:class:`SegAugment`)."""
        info = self.info
        return SegAugment(
            info.mean,
            info.std,
            flip=info.flip if data.flip is None else data.flip,
            scale_range=info.scale_range,
            ignore_index=info.ignore_index,
            enabled=data.augment,
        )

    def check_logits(self, network: str, model: str, logits: Any, count: int) -> None:
        """A network must map ``count`` images to (count, C, H, W) logits."""
        c = self.info.num_classes
        ok = isinstance(logits, Tensor) and logits.dim() == 4 and logits.shape[:2] == (count, c)
        if not ok:
            raise _shape_error(network, model, "(N, C, H, W)", c, logits)

    def evaluator(
        self, transform: Callable[[Tensor], Tensor], bins: int, **options: Any
    ) -> SegEval:
        return SegEval(transform, self.info.num_classes, bins, self.info.ignore_index, **options)

    def test_phase(self, run: TestContext) -> TestResults:
        """Pixel metrics of every network on test, streamed; a temperature per network fitted
        on a pixel sample of val, and the metrics after it streamed too."""
        pixels = self.info.image_size**2

        def fraction(split: Any) -> float:
            return min(1.0, self.SAMPLE_PIXELS / max(1, len(split) * pixels))

        temperatures: dict[str, float] = {}
        val_samples: dict[str, tuple] = {}
        if run.loaders.val is not None:
            val = run.evaluate(run.loaders.val, sample_fraction=fraction(run.splits.val))
            for name, acc in val.accumulators.items():
                val_samples[name] = acc.sample()
                if run.cfg.eval.temperature_scaling:
                    temperatures[name] = cal.fit_temperature(*val_samples[name])
        test = run.evaluate(
            run.loaders.test, sample_fraction=fraction(run.splits.test), temperatures=temperatures
        )
        results = {n: metric_dict(test.accumulators[n]) for n in run.distiller.networks}
        predictions = {
            n: (*test.accumulators[n].sample(), *val_samples.get(n, (None, None))) for n in results
        }
        panels = {n: test.accumulators[n].reliability() for n in results}
        return results, predictions, panels

    def summary_extra(self) -> dict[str, Any]:
        return {"class_names": list(self.info.class_names)}

    def report_sections(self, rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """The per-class IoU table."""
        names = list(self.info.class_names)
        lines = ["Per-class IoU % on test:", ""]
        lines.append("| network | " + " | ".join(names) + " |")
        lines.append("|---|" + "---|" * len(names))
        for label, m in rows.items():
            cells = ["–" if v is None else f"{100 * v:.1f}" for v in m.get("per_class_iou", [])]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        return lines


def trust_of(
    results: dict[str, dict[str, Any]],
    predictions: Mapping[str, tuple],
    target_risk: float,
    alpha: float,
) -> tuple[dict[str, cal.RiskCoverage], dict[str, str]]:
    """Add to each network's ``results`` its selective prediction and conformal sets (fitted
    on the validation predictions, measured on the test ones: every image, or a pixel sample)
    and whether its fitted temperature can be trusted. Returns each network's risk–coverage
    curve on test and the notes on temperatures not to be trusted."""
    curves, notes = {}, {}
    for name, (z, y, val_z, val_y) in predictions.items():
        m = results[name]
        curves[name] = cal.risk_coverage(torch.softmax(z.double(), 1), y)
        if val_z is None:
            continue
        m.update(cal.trust_metrics(val_z, val_y, z, y, target_risk=target_risk, alpha=alpha))
        if "temperature" in m:
            note = cal.temperature_note(val_z, val_y, m["temperature"])
            m["temperature_reliable"], m["temperature_note"] = note is None, note
            if note:
                notes[name] = note
    return curves, notes


TASKS: dict[str, Callable[[DatasetInfo], Task]] = {}


def register_task(name: str, factory: Callable[[DatasetInfo], Task]) -> None:
    """Make datasets that declare ``task: name`` use ``factory(info)``."""
    if name in TASKS:
        raise ValueError(f"task {name!r} is already registered")
    TASKS[name] = factory


register_task(ClassificationTask.name, ClassificationTask)
register_task(SegmentationTask.name, SegmentationTask)


def for_dataset(info: DatasetInfo) -> Task:
    """The task of a dataset (its ``DatasetInfo.task``)."""
    try:
        return TASKS[info.task](info)
    except KeyError:
        raise ConfigError(
            f"dataset {info.name!r} declares task {info.task!r}; known tasks: {sorted(TASKS)}"
        ) from None


def report_keys(task_name: str | None) -> tuple[str, ...]:
    """The table columns of a finished run's task (from its summary's ``task``)."""
    factory = TASKS.get(task_name or ClassificationTask.name, ClassificationTask)
    return getattr(factory, "report_keys", RUN_KEYS)
