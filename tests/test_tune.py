"""`bdkd tune`: equal budgets, selection on the selection seed's validation split only,
paired reports, the local and Ray backends, a killed tune continued, bad input refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bdkd.cli import main
from bdkd.distillers import available_methods, method_kind
from bdkd.tune import DEFAULT_SPACES, Sweep, default_space, read_spaces
from bdkd.tune.select import choose

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "digits" / "dml.yaml"
SMALL = ["train.epochs=2", "data.batch_size=128"]


def tune_args(out: Path, *extra: str) -> list[str]:
    return [
        "tune",
        str(CONFIG),
        *SMALL,
        "--methods",
        "kd,dml,bdkd",
        "--budget",
        "2",
        "--seeds",
        "2",
        "--out",
        str(out),
        *extra,
    ]


def fails(args: list[str], capsys, *expected: str) -> str:
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    for fragment in expected:
        assert fragment in lines[0], (fragment, err)
    return lines[0]


def numbers(report: dict) -> dict:
    """Every test number and every choice of a report (what must not depend on how the
    trials were run)."""
    return {
        name: {"chosen": e["chosen"], "test": e["test"], "sweep": [r["val"] for r in e["sweep"]]}
        for name, e in report["entries"].items()
    }


@pytest.fixture(scope="module")
def local_tune(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tune") / "local"
    assert main(tune_args(out, "--backend", "local")) == 0
    return out


def test_default_spaces_give_every_method_the_same_budget():
    for name in DEFAULT_SPACES:
        space = default_space(name)
        assert space.method == name
        if method_kind(name) == "scratch":
            assert space.size == 1
        else:
            assert space.size == 6, (name, space.text())
    image_methods = set(available_methods()) - {"offline"}
    assert image_methods <= set(DEFAULT_SPACES), image_methods - set(DEFAULT_SPACES)


def test_a_finite_space_of_the_budget_is_searched_whole_and_a_larger_one_sampled():
    space = default_space("kd")
    assert space.settings(6) == space.grid()
    two = space.settings(2, seed=0)
    assert len(two) == 2 and all(s in space.grid() for s in two)
    assert space.settings(2, seed=0) == two  # seeded: a rerun samples the same settings
    ranged = read_spaces({"kd": {"temperature": {"low": 1, "high": 8, "log": True}}})["kd"]
    drawn = ranged.settings(3)
    assert len({s["temperature"] for s in drawn}) == 3
    assert all(1 <= s["temperature"] <= 8 for s in drawn)


def test_tpe_asks_one_setting_after_another_and_replays_the_same_ones():
    pytest.importorskip("optuna")
    space = read_spaces({"dml": {"temperature": [1, 2, 4, 8], "kl_weight": [0.5, 1.0]}})["dml"]

    def drive() -> list[dict]:
        sweep = Sweep(space, 4, "tpe", "top1")
        results: dict[int, dict] = {}
        while True:
            settings = sweep.settings(results)
            pending = [i for i in range(len(settings)) if i not in results]
            if not pending:
                return settings
            assert len(pending) == 1  # each setting sees the results before it
            i = pending[0]
            results[i] = {"accuracy": settings[i]["temperature"] / 10}

    first, second = drive(), drive()
    assert first == second and len(first) == 4


def test_selection_uses_only_the_selection_seeds_validation(local_tune):
    report = json.loads((local_tune / "report.json").read_text())
    assert report["protocol"]["selection_seed"] == 0
    assert report["protocol"]["report_seeds"] == [1, 2]
    for name, entry in report["entries"].items():
        vals = [row["val"] for row in entry["sweep"]]
        assert entry["chosen"]["top1"] == choose(vals, "top1")
        for row in entry["sweep"]:
            assert row["dir"].startswith("seed0/")
        assert set(entry["test"]["top1"]) == {"1", "2"}
        for d in entry["report_dirs"]["top1"].values():
            assert not d.startswith("seed0/")
        if name != "scratch":
            assert len(entry["sweep"]) == 2  # the same budget for every method
    best = report["best"]["top1"]
    key = "accuracy"
    best_val = report["entries"][best]["sweep"][report["entries"][best]["chosen"]["top1"]]["val"]
    for entry in report["entries"].values():
        assert entry["sweep"][entry["chosen"]["top1"]]["val"][key] <= best_val[key]
    md = (local_tune / "report.md").read_text()
    assert "Each entry minus student alone" in md
    assert "[" in md and "p " in md and "**Reading.**" in md
    assert (local_tune / "reliability.png").stat().st_size > 1000
    assert "NaN" not in (local_tune / "report.json").read_text()
    # the offline method distilled from each seed's teacher, its logits cached once per seed
    kd_config = json.loads((local_tune / "tune.json").read_text())["config"]
    assert kd_config["networks"]["teacher"]["model"] == "mlp_large"
    assert list((local_tune / "seed1").glob("teacher-cache-*"))


def test_a_finished_tune_is_reused_and_an_edited_config_never_reuses_a_stale_run(
    local_tune, capsys
):
    before = sorted(p.name for p in (local_tune / "seed0").iterdir())
    started = time.perf_counter()
    assert main(tune_args(local_tune, "--backend", "local")) == 0
    assert time.perf_counter() - started < 30
    assert sorted(p.name for p in (local_tune / "seed0").iterdir()) == before
    args = tune_args(local_tune, "--backend", "local")
    args[args.index("train.epochs=2")] = "train.epochs=1"
    args[args.index("kd,dml,bdkd")] = "dml"
    assert main(args) == 0
    report = json.loads((local_tune / "report.json").read_text())
    stale = set(before)
    for entry in report["entries"].values():
        for row in entry["sweep"]:
            assert Path(row["dir"]).name not in stale
            cfg = json.loads((local_tune / row["dir"] / "summary.json").read_text())
            assert cfg["epochs"] == 1


def test_the_ray_backend_gives_the_same_report(local_tune, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    assert main(tune_args(out, "--backend", "ray", "--max-concurrent", "2")) == 0
    ray_report = json.loads((out / "report.json").read_text())
    assert ray_report["protocol"]["backend"] == "ray"
    local = json.loads((local_tune / "report.json").read_text())
    if local["protocol"]["select"] == ray_report["protocol"]["select"]:
        assert numbers(ray_report) == numbers(_first_report(local_tune, local))


def _first_report(local_tune: Path, local: dict) -> dict:
    """The local tune's report as first written (the reuse test may have rewritten it)."""
    saved = local_tune.parent / "first-report.json"
    return json.loads(saved.read_text()) if saved.is_file() else local


@pytest.fixture(autouse=True, scope="module")
def _keep_first_report(local_tune):
    (local_tune.parent / "first-report.json").write_text((local_tune / "report.json").read_text())


def test_a_killed_tune_continues_to_the_same_report(local_tune, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bdkd", *tune_args(out, "--backend", "local")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ledger = out / "ledger.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ledger.is_file() and len(ledger.read_text().splitlines()) >= 5:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the tune finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # the driver only: its workers must die with it
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and _group_alive(proc.pid):
        time.sleep(0.2)
    assert not _group_alive(proc.pid), "a trial outlived its killed driver"
    assert not (out / "report.json").exists()
    assert main(tune_args(out, "--backend", "local")) == 0
    again = json.loads((out / "report.json").read_text())
    assert numbers(again) == numbers(_first_report(local_tune, {}))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--methods", "kd,dmll"], "did you mean 'dml'"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--budget", "7"], "larger than the search space"),
        (["--select", "f1"], "--select must be among"),
        (["--address", "127.0.0.1:9", "--backend", "ray"], "no Ray cluster answers"),
    ],
)
def test_bad_input_is_one_line_and_trains_nothing(tmp_path, capsys, extra, fragment):
    if "--address" in extra:
        pytest.importorskip("ray")
    out = tmp_path / "t"
    args = tune_args(out)
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    fails(args, capsys, fragment)
    assert not out.exists()


def test_a_space_outside_the_declared_range_is_refused(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("kd:\n  temperature: [1, -2]\n")
    out = tmp_path / "t"
    fails(tune_args(out, "--space", str(space)), capsys, "'kd'", "temperature", "> 0")
    space.write_text("kd:\n  temprature: [1, 2]\n")
    fails(tune_args(out, "--space", str(space)), capsys, "no hyper-parameter 'temprature'")
    assert not out.exists()


def test_ray_missing_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    out = tmp_path / "t"
    fails(tune_args(out, "--backend", "ray"), capsys, "pip install 'bdkd[ray]'")
    assert not out.exists()


def test_a_tune_writes_only_inside_its_own_directory(tmp_path, capsys):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    fails(tune_args(other), capsys, "not a tune's")
    tune_dir = tmp_path / "tune"
    tune_dir.mkdir()
    (tune_dir / "tune.json").write_text("{}")
    (tune_dir / "seed0").symlink_to(other)
    fails(tune_args(tune_dir), capsys, "symbolic link")
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_a_tune_on_an_llm_config_compares_token_objectives(tiny_llm_config, tmp_path, capsys):
    out = tmp_path / "llm"
    args = ["tune", str(tiny_llm_config), "--methods", "forward_kl,bdkd", "--budget", "2"]
    args += ["--seeds", "2", "--backend", "local", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["protocol"]["task"] == "tokens"
    assert set(report["entries"]) == {"scratch", "forward_kl", "bdkd"}
    for name, entry in report["entries"].items():
        assert entry["chosen"]["top1"] == choose([r["val"] for r in entry["sweep"]], "top1")
        assert set(entry["test"]["top1"]) == {"1", "2"}
        for row in entry["sweep"]:
            assert row["dir"].startswith("seed0/")
            stored = yaml.safe_load((out / row["dir"] / "config.yaml").read_text())
            assert stored["objective"]["name"] == ("forward_kl" if name == "scratch" else name)
            assert stored["output"]["save_student"] is False
    bdkd_setting = report["entries"]["bdkd"]["sweep"][0]["setting"]
    assert set(bdkd_setting) <= {"temperature", "rule", "low", "high"}
    assert set(report["teacher"]) == {"1", "2"} and "perplexity" in report["teacher"]["1"]
    assert "perplexity" in (out / "report.md").read_text()
    fails(args[:3] + ["forward_kll"] + args[4:], capsys, "did you mean 'forward_kl'")
