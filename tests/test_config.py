"""Config validation, YAML bases and dotted overrides."""

from __future__ import annotations

import pytest

from bdkd.config import ConfigError, apply_overrides, dump_config, load_config, read_yaml, validate

MINIMAL = {"method": {"name": "scratch"}, "networks": {"student": {"model": "mlp"}}}


def test_minimal_config_gets_defaults():
    cfg = validate(MINIMAL)
    assert cfg.train.epochs == 10 and cfg.data.dataset == "digits" and cfg.eval.bins == 15
    assert cfg.method_name == "scratch" and cfg.method_hparams == {}
    again = validate(cfg.to_dict())
    assert again == cfg
    assert "method:" in dump_config(cfg)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {**MINIMAL, "train": {"epoch": 3}},
            r"unknown config key train.'epoch' \(did you mean 'epochs'\?\); allowed under train: ",
        ),
        ({**MINIMAL, "trian": {}}, "unknown config key 'trian'"),
        (
            {**MINIMAL, "train": {"epochs": "five"}},
            "config key 'train.epochs': expected int, got 'five'",
        ),
        ({**MINIMAL, "train": {"epochs": 0}}, "'train.epochs': must be >= 1"),
        (
            {**MINIMAL, "train": {"precision": "fp8"}},
            r"'train.precision': must be one of \['fp32', 'bf16', 'fp16'\]",
        ),
        (
            {**MINIMAL, "optim": {"name": "adam"}},
            r"'optim.name': must be one of \['sgd', 'adamw'\]",
        ),
        ({**MINIMAL, "data": {"batch_size": 1.5}}, "'data.batch_size': expected int"),
        (
            {"networks": {"student": {"model": "mlp", "optim": {"lr": "x"}}}},
            "'networks.student.optim.lr': expected float",
        ),
        (
            {"networks": {"student": {"model": "mlp", "optim": {"nme": "sgd"}}}},
            "unknown config key networks.student.optim.'nme'",
        ),
        ({"networks": {"student": {}}}, "'networks.student.model': a model name is required"),
        (
            {"method": {"temperature": 2}, "networks": {"student": {"model": "mlp"}}},
            "string 'name'",
        ),
        ({"method": {"name": "kd"}}, "at least one network"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        validate(data)


def test_overrides_parse_yaml_values_and_create_keys():
    data = apply_overrides(
        MINIMAL,
        ["train.epochs=5", "method.ce_weight=2", "schedule.milestones=[1, 2]", "output.name=x"],
    )
    cfg = validate(data)
    assert cfg.train.epochs == 5 and cfg.method_hparams == {"ce_weight": 2}
    with pytest.raises(ConfigError, match="'method.temperature': is not a hyper-parameter"):
        validate(apply_overrides(MINIMAL, ["method.temperature=2"]))
    assert cfg.schedule.milestones == [1, 2] and cfg.output.name == "x"
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides(MINIMAL, ["train.epochs"])
    with pytest.raises(ConfigError, match="'name' is not a mapping"):
        apply_overrides(MINIMAL, ["method.name.x=1"])


def test_yaml_bases_merge_and_errors(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "train: {epochs: 7, seed: 3}\nnetworks: {student: {model: mlp}}\n"
    )
    (tmp_path / "run.yaml").write_text("base: base.yaml\ntrain: {epochs: 2}\n")
    cfg = load_config(tmp_path / "run.yaml", ["train.seed=4"])
    assert (cfg.train.epochs, cfg.train.seed) == (2, 4)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        read_yaml(tmp_path / "loop.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml(tmp_path / "missing.yaml")


def test_per_network_optimizer_overrides():
    cfg = validate(
        {
            "networks": {
                "teacher": {
                    "model": "mlp",
                    "optim": {"lr": 0.01},
                    "schedule": {"name": "constant"},
                },
                "student": {"model": "mlp"},
            }
        }
    )
    assert cfg.network_optim("teacher").lr == 0.01 and cfg.network_optim("student").lr == 0.05
    assert cfg.network_schedule("teacher").name == "constant"
