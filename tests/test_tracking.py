"""Tracking into real stores (MLflow on sqlite, W&B offline), callbacks, best checkpoints and
early stopping, and the Python API (bdkd.train, bdkd.load_student)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import bdkd
from bdkd.cli import main
from bdkd.engine.callbacks import Callback

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "digits"
FAST = ["train.epochs=2", "train.progress=false"]


class Recorder(Callback):
    """Every call a run makes, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object, dict]] = []

    def on_start(self, params):
        self.calls.append(("start", None, dict(params)))

    def on_step(self, step, values):
        self.calls.append(("step", step, dict(values)))

    def on_epoch(self, epoch, values):
        self.calls.append(("epoch", epoch, dict(values)))

    def on_eval(self, step, values):
        self.calls.append(("eval", step, dict(values)))

    def on_finish(self, summary, artifacts):
        self.calls.append(("finish", None, {"artifacts": [Path(a).name for a in artifacts]}))

    def close(self):
        self.calls.append(("close", None, {}))

    def kinds(self, kind):
        return [(s, v) for k, s, v in self.calls if k == kind]


# --------------------------------------------------------------------------- MLflow


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory):
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'store.db'}"
    run = root / "online"
    args = ["train", str(CONFIGS / "bdkd.yaml"), *FAST, "output.report_to=[mlflow]"]
    args += [f"output.mlflow_uri={uri}", "output.experiment=bdkd-tests", "output.log_every=5"]
    assert main([*args, "--out", str(run)]) == 0
    return run, uri


def test_mlflow_gets_params_every_loss_term_metrics_and_artifacts(mlflow_run):
    from mlflow.tracking import MlflowClient

    run, uri = mlflow_run
    summary = json.loads((run / "summary.json").read_text())
    client = MlflowClient(tracking_uri=uri)
    found = client.get_run(summary["tracking"]["mlflow"])
    assert found.info.status == "FINISHED"
    assert client.get_experiment(found.info.experiment_id).name == "bdkd-tests"
    params = found.data.params
    assert params["method.name"] == "bdkd" and params["networks.student.model"] == "mlp_small"
    # every named loss term of the run's metrics.jsonl, per epoch and per step
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    for term in first["train"]:
        history = client.get_metric_history(found.info.run_id, f"train/{term}")
        assert [m.step for m in history] == [1, 2], term
        assert history[0].value == pytest.approx(first["train"][term])
        assert client.get_metric_history(found.info.run_id, f"step/train/{term}"), term
    for net in ("teacher", "student"):
        val = client.get_metric_history(found.info.run_id, f"val/{net}/ece")
        assert [m.step for m in val] == [1, 2]
        assert found.data.metrics[f"test/{net}/accuracy"] == pytest.approx(
            summary["results"][net]["accuracy"]
        )
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert found.info.artifact_uri.startswith((run.parent / "mlartifacts").as_uri())
    assert {"report.md", "summary.json", "reliability.png", "risk_coverage.png"} <= artifacts


def test_an_export_lands_in_the_runs_mlflow_run(mlflow_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from mlflow.tracking import MlflowClient

    run, uri = mlflow_run
    out = tmp_path / "student.onnx"
    assert main(["export", str(run), "--out", str(out)]) == 0
    run_id = json.loads((run / "summary.json").read_text())["tracking"]["mlflow"]
    assert "student.onnx" in {a.path for a in MlflowClient(uri).list_artifacts(run_id)}


class Boom(Callback):
    def on_eval(self, step, values):
        raise RuntimeError("a user's callback failed")


def test_a_failed_run_is_killed_in_mlflow_and_callbacks_are_closed(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    recorder = Recorder()
    over = [*FAST, "output.report_to=[mlflow]", f"output.mlflow_uri={uri}"]
    with pytest.raises(RuntimeError, match="callback failed"):
        bdkd.train(
            CONFIGS / "scratch.yaml",
            overrides=over,
            out=tmp_path / "r",
            callbacks=[recorder, Boom()],
        )
    assert recorder.calls[-1][0] == "close"
    client = MlflowClient(uri)
    (exp,) = [e for e in client.search_experiments() if e.name == "bdkd"]
    (found,) = client.search_runs([exp.experiment_id])
    assert found.info.status == "KILLED"


def test_a_missing_tracker_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a)
    )
    code = main(
        ["train", str(CONFIGS / "scratch.yaml"), *FAST, "output.report_to=[wandb]"]
        + ["--out", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "pip install 'bdkd[wandb]'" in err.strip().splitlines()[-1]


# --------------------------------------------------------------------------- W&B offline


def wandb_records(path: Path):
    """The records of a W&B offline run file, read as ``wandb sync`` reads them: a 7-byte
    header (``:W&B``, magic, version), then LevelDB-log framing in 32 KiB blocks (checksum,
    length, type: full/first/middle/last) around protobuf ``Record`` messages."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the zero padding at the end of a block
            pos += left
            continue
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def test_wandb_offline_writes_a_run_beside_the_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "runs" / "w"
    args = ["train", str(CONFIGS / "scratch.yaml"), *FAST, "output.report_to=[wandb]"]
    assert main([*args, "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    (offline,) = (tmp_path / "runs" / "wandb").glob("offline-run-*")
    assert summary["tracking"]["wandb"] in offline.name
    assert list(offline.glob("run-*.wandb")), list(offline.iterdir())
    history, logged = [], {}
    key = lambda item: item.key or "/".join(item.nested_key)  # noqa: E731
    for record in wandb_records(next(offline.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            logged.update({key(i): json.loads(i.value_json) for i in record.summary.update})
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    (epoch1,) = [h for h in history if h.get("epoch") == 1]
    assert epoch1["train/student/ce"] == pytest.approx(first["train"]["student/ce"])
    assert any(
        h.get("val/student/nll") == pytest.approx(first["val"]["student"]["nll"]) for h in history
    )
    assert any("step/train/student/ce" in h for h in history)
    assert logged["test/student/accuracy"] == pytest.approx(
        summary["results"]["student"]["accuracy"]
    )
    files = offline / "files"
    assert (files / "report.md").is_file() and (files / "summary.json").is_file()
    assert not any(p.is_symlink() for p in run.rglob("*")), "a run directory holds no links"


# --------------------------------------------------------------------------- callbacks + API


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
    """bdkd.train on a mapping, with a callback, best checkpoint by NLL, and validation every
    epoch for four epochs."""
    recorder = Recorder()
    config = {
        "base": str(CONFIGS / "base.yaml"),
        "method": {"name": "scratch"},
        "networks": {"student": {"model": "mlp_small"}},
        "train": {"epochs": 4, "progress": False, "save_best": "nll"},
        "output": {"log_every": 7},
    }
    out = tmp_path_factory.mktemp("api") / "run"
    summary = bdkd.train(config, out=out, callbacks=[recorder])
    return out, summary, recorder


def test_callbacks_see_start_steps_epochs_evals_and_finish(api_run):
    run, summary, rec = api_run
    assert rec.calls[0][0] == "start" and rec.calls[0][2]["train.save_best"] == "nll"
    assert [c[0] for c in rec.calls[-2:]] == ["finish", "close"]
    assert {"report.md", "summary.json"} <= set(rec.calls[-2][2]["artifacts"])
    epochs = rec.kinds("epoch")
    assert [e for e, _ in epochs] == [1, 2, 3, 4]
    assert all("train/student/ce" in v and "lr" in v for _, v in epochs)
    evals = rec.kinds("eval")
    assert [e for e, _ in evals] == [1, 2, 3, 4] and "val/student/nll" in evals[0][1]
    steps = rec.kinds("step")
    assert steps and all(s % 7 == 0 for s, _ in steps)
    assert [s for s, _ in steps] == sorted(s for s, _ in steps)
    history = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs[-1][1]["train/student/ce"] == pytest.approx(history[-1]["train"]["student/ce"])


def test_save_best_keeps_the_epoch_of_the_best_validation_value(api_run, capsys):
    run, summary, _ = api_run
    history = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    nll = [h["val"]["student"]["nll"] for h in history]
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert best["epoch"] == 1 + nll.index(min(nll)) and last["epoch"] == 4
    assert summary["selection"]["best_epoch"] == best["epoch"]
    capsys.readouterr()
    assert main(["eval", str(run), "--checkpoint", "best", "--split", "val"]) == 0
    shown = capsys.readouterr().out
    assert f"{min(nll):.4f}" in shown, shown


def test_load_student_gives_the_deployed_network_with_what_it_needs(api_run):
    from bdkd.data.sources import load_digits

    run, summary, _ = api_run
    student = bdkd.load_student(run)
    assert not student.training and student.temperature == pytest.approx(
        summary["results"]["student"]["temperature"]
    )
    _, test, _ = load_digits()
    images = test.images[:50]
    probs = student.predict(images)
    assert probs.shape == (50, 10) and torch.allclose(
        probs.sum(1), torch.ones(50, dtype=probs.dtype)
    )
    acc = (student.predict(test.images).argmax(1) == test.labels).double().mean().item()
    assert acc == pytest.approx(summary["results"]["student"]["accuracy"], abs=1e-9)
    _, answered = student.predict_or_abstain(images)
    assert answered.dtype == torch.bool
    best = bdkd.load_student(run, checkpoint="best")
    assert best.temperature is not None


def test_early_stop_ends_training_on_the_validation_metric(tmp_path, capsys):
    over = [
        "train.epochs=6",
        "train.progress=false",
        "train.early_stop={metric: accuracy, patience: 1, min_delta: 1.0}",
    ]
    summary = bdkd.train(CONFIGS / "scratch.yaml", overrides=over, out=tmp_path / "r")
    history = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert len(history) == 2, "an accuracy gain above 1.0 is impossible: stop after patience"
    assert "early stop after epoch 2" in capsys.readouterr().err
    assert summary["selection"]["stopped"] is True


def test_best_needs_save_best(tmp_path, capsys):
    run = tmp_path / "r"
    bdkd.train(
        CONFIGS / "scratch.yaml", overrides=["train.epochs=1", "train.progress=false"], out=run
    )
    capsys.readouterr()
    assert main(["eval", str(run), "--checkpoint", "best"]) == 2
    err = capsys.readouterr().err
    assert "best.pt" in err and "train.save_best" in err and "Traceback" not in err


# --------------------------------------------------------------------------- LLM runs


def test_llm_distill_reports_to_mlflow_and_callbacks(tiny_llm_config, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    recorder = Recorder()
    over = ["output.report_to=[mlflow]", f"output.mlflow_uri={uri}", "output.log_every=1"]
    over += ["objective.params.rule=soft", "objective.params.sharpness=3"]
    summary = bdkd.train(
        tiny_llm_config, overrides=over, out=tmp_path / "llm", callbacks=[recorder]
    )
    assert [s for s, _ in recorder.kinds("step")] == [1, 2, 3, 4]
    assert [s for s, _ in recorder.kinds("eval")] == [2, 4] and not recorder.kinds("epoch")
    client = MlflowClient(uri)
    found = client.get_run(summary["tracking"]["mlflow"])
    assert found.info.status == "FINISHED"
    assert found.data.params["objective.params.rule"] == "soft"
    ppl = client.get_metric_history(found.info.run_id, "val/student/perplexity")
    assert [m.step for m in ppl] == [2, 4]
    terms = [k for k in found.data.metrics if k.startswith("step/train/")]
    assert terms and all(len(client.get_metric_history(found.info.run_id, k)) == 4 for k in terms)
    assert "report.md" in {a.path for a in client.list_artifacts(found.info.run_id)}
    # an LLM run's student is a Hugging Face directory, and load_student says so
    from bdkd.engine.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=r"AutoModelForCausalLM.from_pretrained"):
        bdkd.load_student(tmp_path / "llm")
