"""bdkd as a user meets it: shipped configs by name from any directory (`bdkd configs`, `init`,
`config show`), the generated config reference, `bdkd methods`, the progress line, typos
before --force, calibrating a two-network run's logits, and the built wheel in a fresh venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from bdkd.cli import main

ROOT = Path(__file__).resolve().parents[1]


def fails(args, capsys, *expected: str) -> str:
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    for fragment in expected:
        assert fragment in last, (fragment, err)
    return last


# --------------------------------------------------------------------------- shipped configs


def test_configs_lists_every_runnable_shipped_config(capsys):
    from bdkd.shipped import CONFIG_DIR, named_configs

    assert (ROOT / "configs").resolve() == CONFIG_DIR, "a checkout's configs/ is the package's"
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    names = named_configs()
    assert "fashion_mnist/bdkd" in names and "llm/smollm2_fortunes" in names
    assert not any(n.endswith("/base") for n in names)
    for name in names:
        assert f"\n{name} " in f"\n{out}", name
    assert "Online BDKD" in out  # each with its first comment line


def test_a_config_by_name_trains_from_any_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "digits/scratch", "train.epochs=1", "train.progress=false"]) == 0
    assert (tmp_path / "runs" / "digits-scratch" / "summary.json").is_file()
    fails(["train", "digits/bdk"], capsys, "'digits/bdk'", "did you mean digits/bdkd")


def test_init_writes_a_standalone_copy_that_trains_the_same(tmp_path, monkeypatch, capsys):
    from bdkd.config import load_config
    from bdkd.shipped import resolve_config

    monkeypatch.chdir(tmp_path)
    assert main(["init", "mine", "--from", "digits/bdkd"]) == 0
    text = (tmp_path / "mine.yaml").read_text()
    assert "base:" not in text and text.startswith("# A copy of digits/bdkd")
    shipped = load_config(resolve_config("digits/bdkd"))
    assert load_config(tmp_path / "mine.yaml").to_dict() == shipped.to_dict()
    fails(["init", "mine", "--from", "digits/bdkd"], capsys, "mine.yaml", "--force")
    assert main(["init", "mine.yaml", "--from", "digits/kd", "--force"]) == 0
    assert "method:\n  name: kd" in (tmp_path / "mine.yaml").read_text()


def test_config_show_prints_the_resolved_config_with_every_default(capsys):
    from bdkd.config import Config, load_config
    from bdkd.shipped import resolve_config

    capsys.readouterr()
    assert main(["config", "show", "digits/bdkd", "train.epochs=3"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    expected = load_config(resolve_config("digits/bdkd"), ["train.epochs=3"]).to_dict()
    assert shown == expected and shown["train"]["save_best"] is None
    assert main(["config", "show"]) == 0  # every key at its default
    defaults = yaml.safe_load(capsys.readouterr().out)
    assert set(defaults) == {f for f in Config.__dataclass_fields__}
    assert defaults["output"]["report_to"] == ["tensorboard"]
    assert main(["config", "show", "llm/smollm2_fortunes"]) == 0
    llm = yaml.safe_load(capsys.readouterr().out)
    assert llm["objective"]["name"] == "bdkd" and "micro_batch" in llm["train"]


def test_a_typo_is_named_before_force_is_asked_for(tmp_path, capsys):
    run = tmp_path / "r"
    assert (
        main(
            ["train", "digits/scratch", "train.epochs=1", "train.progress=false", "--out", str(run)]
        )
        == 0
    )
    fails(
        ["train", "digits/scratch", "train.epoch=2", "--out", run], capsys, "did you mean 'epochs'"
    )
    fails(["train", "digits/scratch", "data.batch_sise=2", "--out", run], capsys, "'batch_size'")
    fails(["train", "digits/scratch", "--out", run], capsys, "--force")


# --------------------------------------------------------------------------- reference, listings


def _leaves(cls, prefix=""):
    import dataclasses

    out = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default) or (
            isinstance(f.type, type) and dataclasses.is_dataclass(f.type)
        ):
            out += _leaves(type(default) if default is not None else f.type, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def test_docs_config_md_is_generated_from_the_schema_and_lists_every_key():
    from bdkd.config import Config
    from bdkd.config.schema import NetworkConfig
    from bdkd.llm.config import LLMConfig
    from bdkd.reference import render_reference

    page = (ROOT / "docs" / "config.md").read_text()
    assert page == render_reference(), "regenerate: python -m bdkd.reference > docs/config.md"
    keys = [
        *(k for k in _leaves(Config) if not k.startswith("networks")),
        *(f"networks.<name>.{k}" for k in _leaves(NetworkConfig)),
        *_leaves(LLMConfig),
    ]
    assert len(keys) > 100
    missing = [k for k in keys if f"`{k}`" not in page]
    assert not missing, missing


def test_methods_lists_a_line_per_method_with_its_defaults_and_the_token_objectives(capsys):
    from bdkd.distillers import available_methods
    from bdkd.losses import TOKEN_OBJECTIVES

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    lines = out.split("token objectives")[0].splitlines()
    for name in available_methods():
        (at,) = [i for i, line in enumerate(lines) if line.split()[:1] == [name]]
        assert "=" in lines[at + 1] or name == "scratch", (name, lines[at + 1])
    assert "alpha=(required)" in out and "rule='hard'" in out
    for token in TOKEN_OBJECTIVES:
        assert f"\n  {token} " in out, token


def test_the_progress_line_shows_rate_elapsed_and_eta(capsys, monkeypatch):
    from bdkd.engine import progress

    clock = iter([100.0, 110.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    bar = progress.Progress(True, 40, "epoch 1/3")
    bar.update(10, {"student/ce": 0.5})
    line = capsys.readouterr().err.strip()
    assert line == "epoch 1/3 [10/40] student/ce 0.5000 | 1.0 it/s, 0:10 elapsed, ETA 0:30"


def test_a_two_network_runs_logits_calibrate_on_the_deployed_network(tmp_path, capsys):
    run = tmp_path / "online"
    args = ["train", "digits/bdkd", "train.epochs=1", "train.progress=false", "--out", run]
    assert main([str(a) for a in args]) == 0
    logits = tmp_path / "l.npz"
    assert main(["eval", str(run), "--save-logits", str(logits)]) == 0
    capsys.readouterr()
    assert main(["calibrate", str(logits)]) == 0
    assert "network student" in capsys.readouterr().out.splitlines()[0]
    assert main(["calibrate", str(logits), "--network", "teacher"]) == 0
    assert "network teacher" in capsys.readouterr().out.splitlines()[0]


def test_missing_onnx_extra_is_named(tmp_path, capsys, monkeypatch):
    import importlib.util

    run = tmp_path / "r"
    assert (
        main(
            ["train", "digits/scratch", "train.epochs=1", "train.progress=false", "--out", str(run)]
        )
        == 0
    )
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.split(".")[0] in ("onnx", "onnxruntime") else real(name, *a),
    )
    for mod in [m for m in sys.modules if m.split(".")[0] in ("onnx", "onnxruntime")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    fails(["export", run, "--out", tmp_path / "s.onnx"], capsys, "pip install 'bdkd[onnx]'")


# --------------------------------------------------------------------------- the built wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from this checkout, installed without dependencies into a fresh venv
    that sees this environment's packages (torch & co.) through a .pth line, so that bdkd
    itself, its configs and its data come only from the wheel."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    shutil.copytree(
        ROOT / "src", src / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root), str(src)]
    subprocess.run(build, check=True, capture_output=True)
    (wheel,) = root.glob("bdkd-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "_outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [*pip, "--python", str(python), "install", "--no-deps", "-q", str(wheel)]
    subprocess.run(install, check=True, capture_output=True)
    return wheel, venv


def _bdkd(venv: Path, cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(venv / "bin" / "bdkd"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_wheel_carries_configs_license_and_py_typed(installed):
    import zipfile

    wheel, venv = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert "bdkd/py.typed" in names and "bdkd/configs/demo/base.yaml" in names
    assert "bdkd/configs/fashion_mnist/bdkd.yaml" in names
    assert any(n.endswith("licenses/LICENSE") for n in names)


def test_the_installed_wheel_runs_a_named_config_config_show_and_the_demo(installed, tmp_path):
    _, venv = installed
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import bdkd; print(bdkd.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(venv)), "bdkd came from the wheel, not the checkout"
    shown = _bdkd(venv, tmp_path, "config", "show", "fashion_mnist/bdkd")
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout)["train"]["early_stop"] is None
    defaults = _bdkd(venv, tmp_path, "config", "show")
    assert defaults.returncode == 0 and "save_best" in defaults.stdout, defaults.stderr
    small = ["train.epochs=1", "data.train_size=256", "data.val_size=256", "train.progress=false"]
    from bdkd.demo import fashion_mnist_present

    dataset = "fashion_mnist" if fashion_mnist_present() else "digits"
    if dataset == "fashion_mnist":
        trained = _bdkd(venv, tmp_path, "train", "fashion_mnist/bdkd", *small)
        assert trained.returncode == 0, trained.stderr
        assert (tmp_path / "runs" / "fashion_mnist-bdkd" / "report.md").is_file()
    demo = _bdkd(venv, tmp_path, "demo", "--dataset", "digits", "--out", "demo", "train.epochs=2")
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "| bdkd" in demo.stdout.lower() or "bd-kd" in demo.stdout.lower(), demo.stdout
    assert (tmp_path / "demo" / "report.md").is_file()
    assert not (tmp_path / "configs").exists()


def test_other_libraries_warnings_and_bars_stay_out_of_bdkds_output(monkeypatch):
    import warnings

    from bdkd.cli import quiet_third_party

    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE", "TRANSFORMERS_VERBOSITY"):
        monkeypatch.delenv(var, raising=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_third_party()
        for module in ("transformers.modeling_utils", "torch.onnx._internal", "peft.tuners"):
            warnings.warn_explicit("old API", FutureWarning, "x.py", 1, module=module)
        warnings.warn_explicit("bdkd's own", UserWarning, "x.py", 1, module="bdkd.engine")
    assert [str(w.message) for w in seen] == ["bdkd's own"]
    assert os.environ["TQDM_DISABLE"] == "1" and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"


def test_llm_bdkd_takes_its_rule_as_text(tiny_llm_config):
    from bdkd.config import ConfigError
    from bdkd.llm.config import load_llm_config

    cfg = load_llm_config(tiny_llm_config, ["objective.params.rule=soft"])
    assert cfg.objective.params == {"rule": "soft"}
    with pytest.raises(ConfigError, match=r"objective.params.rule.*one of \['hard', 'soft'\]"):
        load_llm_config(tiny_llm_config, ["objective.params.rule=sof"])
