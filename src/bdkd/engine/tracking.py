"""Experiment tracking: ``output.report_to: [tensorboard, mlflow, wandb]``, as callbacks.

Each tracker gets the run's flattened config as parameters, every loss term per step
(``output.log_every``), every validation metric, and at the end the report, its figures and
``summary.json`` as artifacts; an exported file is added to the run's tracker runs by
`bdkd export` (:func:`log_export`).

- **tensorboard**: ``RUN/tensorboard`` event files (skipped when tensorboard is not installed
  and it is the default; the image of an optional extra, ``pip install 'bdkd[tensorboard]'``);
- **mlflow**: one MLflow run in experiment ``output.experiment`` at ``output.mlflow_uri``
  (default ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<the run directory's parent>/mlflow.db``;
  a new experiment of a sqlite store keeps its artifacts in ``mlartifacts/`` beside it),
  written through ``MlflowClient`` (no global active run); a resumed bdkd run continues its
  MLflow run;
- **wandb**: one W&B run in project ``output.experiment``, mode ``output.wandb_mode``
  (``offline`` by default: files under ``wandb/`` beside the run directory — W&B's files hold
  links into its cache, and a run directory holds none —, ``wandb sync`` uploads them later);
  a resumed run continues it.

A tracker that is asked for and not installed is one error naming the extra
(``pip install 'bdkd[mlflow]'``). The ids of the tracker runs are kept in the checkpoint and in
``summary.json`` (``tracking``).
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bdkd.engine.callbacks import Callback, numbers

__all__ = [
    "MLflowTracker",
    "TensorBoardTracker",
    "WandbTracker",
    "default_mlflow_uri",
    "log_export",
    "open_trackers",
    "tracker_ids",
]

PARAM_LIMIT = 500


def _need(package: str, extra: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise ImportError(
            f"output.report_to: {extra} needs the package {package}, which is not installed: "
            f"pip install 'bdkd[{extra}]'"
        )


class TensorBoardTracker(Callback):
    """Scalars into ``RUN/tensorboard``."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def on_step(self, step: int, values: Mapping[str, float]) -> None:
        for k, v in numbers(values).items():
            self.writer.add_scalar(f"step/{k}", v, step)

    def on_epoch(self, epoch: int, values: Mapping[str, float]) -> None:
        self.on_eval(epoch, values)

    def on_eval(self, step: int, values: Mapping[str, float]) -> None:
        for k, v in numbers(values).items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowTracker(Callback):
    """One MLflow run, through the client (parameters, metrics, artifacts)."""

    def __init__(self, uri: str, experiment: str, name: str, run_id: str | None = None) -> None:
        _need("mlflow", "mlflow")
        import logging

        from mlflow.tracking import MlflowClient

        for logger in ("mlflow", "alembic"):  # its database set-up is not bdkd's output
            logging.getLogger(logger).setLevel(logging.WARNING)

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = (
            found.experiment_id
            if found is not None
            else self.client.create_experiment(experiment, artifact_location=artifact_root(uri))
        )
        self.resumed, self.finished = run_id is not None, False
        if run_id is None:
            run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
        self.run_id = run_id

    def on_start(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        fresh = [Param(k, str(v)[:PARAM_LIMIT]) for k, v in params.items() if k not in existing]
        for i in range(0, len(fresh), 100):
            self.client.log_batch(self.run_id, params=fresh[i : i + 100])

    def _metrics(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in numbers(values).items()]
        for i in range(0, len(metrics), 500):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 500])

    def on_step(self, step: int, values: Mapping[str, float]) -> None:
        self._metrics(step, {f"step/{k}": v for k, v in values.items()})

    def on_epoch(self, epoch: int, values: Mapping[str, float]) -> None:
        self._metrics(epoch, values)

    def on_eval(self, step: int, values: Mapping[str, float]) -> None:
        self._metrics(step, values)

    def on_finish(self, summary: Mapping[str, Any], artifacts: Sequence[Path]) -> None:
        self._metrics(
            int(summary.get("steps") or summary.get("epochs") or 0), _flat_results(summary)
        )
        for path in artifacts:
            if Path(path).is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id)
        self.finished = True

    def close(self) -> None:
        if not self.finished:  # the bdkd run stopped (an error, an interruption)
            self.client.set_terminated(self.run_id, status="KILLED")
            self.finished = True


class WandbTracker(Callback):
    """One W&B run (offline by default)."""

    def __init__(
        self, run_dir: Path, project: str, name: str, mode: str, run_id: str | None = None
    ) -> None:
        _need("wandb", "wandb")
        import wandb

        self.run = wandb.init(
            project=project,
            name=name,
            dir=str(Path(run_dir).resolve().parent),  # beside the run: W&B links to ~/.cache
            mode=mode,
            id=run_id,
            resume="allow" if run_id else None,
            reinit="create_new",
        )
        self.run_id = self.run.id

    def on_start(self, params: Mapping[str, Any]) -> None:
        self.run.config.update(dict(params), allow_val_change=True)

    def on_step(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log({f"step/{k}": v for k, v in numbers(values).items()}, step=step)

    def on_epoch(self, epoch: int, values: Mapping[str, float]) -> None:
        self.run.log({**numbers(values), "epoch": epoch}, commit=True)

    def on_eval(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log(numbers(values), commit=True)

    def on_finish(self, summary: Mapping[str, Any], artifacts: Sequence[Path]) -> None:
        for k, v in numbers(dict(_flat_results(summary))).items():
            self.run.summary[k] = v
        for path in artifacts:
            if Path(path).is_file():
                self.run.save(str(path), base_path=str(Path(path).parent), policy="now")

    def close(self) -> None:
        self.run.finish()


def _flat_results(summary: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for net, metrics in summary.get("results", {}).items():
        for k, v in metrics.items():
            out[f"test/{net}/{k}"] = v
    return out


def artifact_root(uri: str) -> str | None:
    """Where a new experiment of a sqlite store keeps its artifacts: ``mlartifacts/`` beside
    the database (MLflow's own default is ``./mlruns`` of whatever directory bdkd runs in);
    other stores (a tracking server) choose themselves."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def default_mlflow_uri(run_dir: Path) -> str:
    """``$MLFLOW_TRACKING_URI``, else a sqlite store beside the run directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (
        f"sqlite:///{Path(run_dir).resolve().parent / 'mlflow.db'}"
    )


def open_trackers(
    output: Any, run_dir: Path, name: str, resumed_ids: Mapping[str, str] | None = None
) -> list[Callback]:
    """The trackers ``output.report_to`` asks for (``output`` is the config's output
    section); ``resumed_ids`` continues the tracker runs of a resumed bdkd run."""
    ids = dict(resumed_ids or {})
    trackers: list[Callback] = []
    for kind in output.report_to:
        if kind == "tensorboard":
            if importlib.util.find_spec("tensorboard") is not None:
                trackers.append(TensorBoardTracker(run_dir))
        elif kind == "mlflow":
            uri = output.mlflow_uri or default_mlflow_uri(run_dir)
            trackers.append(MLflowTracker(uri, output.experiment, name, ids.get("mlflow")))
        elif kind == "wandb":
            trackers.append(
                WandbTracker(run_dir, output.experiment, name, output.wandb_mode, ids.get("wandb"))
            )
    return trackers


def tracker_ids(trackers: Sequence[Callback]) -> dict[str, Any]:
    """What identifies each tracker run (kept in checkpoints and summary.json)."""
    out: dict[str, Any] = {}
    for t in trackers:
        if isinstance(t, MLflowTracker):
            out["mlflow"] = t.run_id
            out["mlflow_uri"] = t.uri
        elif isinstance(t, WandbTracker):
            out["wandb"] = t.run_id
    return out


def log_export(summary: Mapping[str, Any], path: Path) -> None:
    """Add an exported file to the MLflow run of the bdkd run it came from (when it has one)."""
    tracking = summary.get("tracking") or {}
    if tracking.get("mlflow") and importlib.util.find_spec("mlflow") is not None:
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=tracking["mlflow_uri"]).log_artifact(
            tracking["mlflow"], str(path)
        )
