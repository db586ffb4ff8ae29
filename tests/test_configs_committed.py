"""Every committed config validates and builds its networks and distiller."""

from __future__ import annotations

from pathlib import Path

import pytest

from bdkd.config import load_config
from bdkd.distillers import create_distiller
from bdkd.models import create_model

ROOT = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p for p in ROOT.rglob("*.yaml") if p.name != "base.yaml" and "llm" not in p.parts)
LLM_CONFIGS = sorted((ROOT / "llm").glob("*.yaml"))
CLASSES = {"digits": 10, "fashion_mnist": 10, "cifar100": 100, "cifar10": 10}


def test_there_are_configs_for_every_family():
    names = {p.parent.name for p in CONFIGS}
    assert {"digits", "fashion_mnist", "teachers", "resnet56-resnet20"} <= names
    assert len([p for p in CONFIGS if "cifar100" in p.parts]) == 6 * 10 + 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: "/".join(p.parts[-2:]))
def test_config_builds(path):
    cfg = load_config(path)
    classes = CLASSES[cfg.data.dataset]
    kwargs = {"in_features": 64} if cfg.data.dataset == "digits" else {}
    networks = {
        name: create_model(net.model, classes, **(kwargs if net.model.startswith("mlp") else {}))
        for name, net in cfg.networks.items()
    }
    distiller = create_distiller(cfg.method_name, networks, **cfg.method_hparams)
    for frozen in distiller.frozen:
        assert cfg.networks[frozen].checkpoint, f"{path}: frozen {frozen} has no checkpoint"
    assert cfg.output.name


@pytest.mark.parametrize("path", LLM_CONFIGS, ids=lambda p: p.name)
def test_llm_config_validates(path):
    from bdkd.llm.run import load_llm_config

    cfg = load_llm_config(path)
    assert cfg.teacher.model == "smollm2" and cfg.output.name
