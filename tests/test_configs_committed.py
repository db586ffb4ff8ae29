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


def test_every_method_has_a_config_for_every_dataset_and_pair():
    from bdkd.distillers import available_methods

    methods = set(available_methods()) - {"offline"}
    pairs = [d for d in (ROOT / "cifar100").iterdir() if d.is_dir() and d.name != "teachers"]
    assert len(pairs) == 6
    for folder in [ROOT / "digits", ROOT / "fashion_mnist", *pairs]:
        configs = {p.stem for p in folder.glob("*.yaml")}
        missing = methods - configs - ({"uskd"} if folder in pairs else set())
        assert not missing, (folder.name, sorted(missing))
        for path in folder.glob("*.yaml"):
            if path.stem in methods:
                assert load_config(path).method_name == path.stem, path


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
