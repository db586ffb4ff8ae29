"""Every committed config validates and builds its networks and distiller."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bdkd.config import load_config
from bdkd.distillers import PixelRows, create_distiller, feature_use
from bdkd.models import create_model
from bdkd.models.taps import attach_taps, default_taps

ROOT = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p for p in ROOT.rglob("*.yaml") if p.name != "base.yaml" and "llm" not in p.parts)
LLM_CONFIGS = sorted((ROOT / "llm").glob("*.yaml"))
CLASSES = {
    "digits": 10,
    "fashion_mnist": 10,
    "cifar100": 100,
    "cifar10": 10,
    "fashion_scenes": 11,
    "cityscapes": 19,
}
SIDES = {"digits": 8, "fashion_mnist": 28, "cifar100": 32, "cifar10": 32, "fashion_scenes": 64}


def test_every_method_has_a_config_for_every_dataset_and_pair():
    from bdkd.distillers import available_methods
    from bdkd.losses import OBJECTIVES

    methods = set(available_methods()) - {"offline"}
    spatial = {name for name, objective in OBJECTIVES.items() if objective.spatial}
    pairs = [d for d in (ROOT / "cifar100").iterdir() if d.is_dir() and d.name != "teachers"]
    assert len(pairs) == 6
    expected = {ROOT / "digits": methods - spatial, ROOT / "fashion_mnist": methods - spatial}
    expected.update({pair: methods - spatial - {"uskd"} for pair in pairs})
    # USKD and the embedding methods are classification methods
    per_image = {"uskd", "rkd", "pkt", "crd", "nd", "reviewkd"}
    expected[ROOT / "scenes"] = methods - per_image
    for folder, wanted in expected.items():
        configs = {p.stem for p in folder.glob("*.yaml")}
        assert not wanted - configs, (folder.name, sorted(wanted - configs))
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
    dense = cfg.data.dataset in ("fashion_scenes", "cityscapes")
    layout = PixelRows() if dense else None
    use = feature_use(cfg.method_name)
    if use is not None:  # the zoo models' default features for the method
        side = SIDES[cfg.data.dataset]
        probe = torch.zeros(2, 1 if side in (8, 28) else 3, side, side)
        for name, net in networks.items():
            names = list(cfg.networks[name].features) or default_taps(net, use)
            net.tap_shapes = attach_taps(net, names, probe)
    samples = {"num_samples": 50_000} if cfg.method_name == "crd" else {}
    distiller = create_distiller(
        cfg.method_name, networks, layout=layout, **samples, **cfg.method_hparams
    )
    for frozen in distiller.frozen:
        net = cfg.networks[frozen]
        assert net.checkpoint or net.weights, f"{path}: frozen {frozen} has no weights"
    assert cfg.output.name


@pytest.mark.parametrize("path", LLM_CONFIGS, ids=lambda p: p.name)
def test_llm_config_validates(path):
    from bdkd.llm.run import load_llm_config

    cfg = load_llm_config(path)
    assert cfg.teacher.model == "smollm2" and cfg.output.name


def test_the_demo_runs_the_benchmarks_calibration_regime():
    """configs/demo is regime 1 of benchmarks/methods (same data, optimiser, schedule,
    epochs, networks); only the seed, threads and progress may differ."""
    from bdkd.config import read_yaml, validate

    raw = read_yaml(ROOT.parent / "benchmarks" / "methods" / "configs" / "regime1_base.yaml")
    bench = validate({**raw, "networks": {"student": {"model": "cnn_small"}}})
    for name in ("teacher", "scratch", "kd", "dml", "bdkd"):
        demo = load_config(ROOT / "demo" / f"{name}.yaml")
        assert demo.data == bench.data and demo.optim == bench.optim, name
        assert demo.schedule == bench.schedule and demo.train.epochs == bench.train.epochs
        assert demo.eval == bench.eval
        models = {n: net.model for n, net in demo.networks.items()}
        assert set(models.values()) <= {"cnn_medium", "cnn_small"}
        if "student" in models:
            assert models["student"] == "cnn_small"


def test_the_feature_methods_run_the_benchmarks_calibration_regime():
    """benchmarks/features/regime1.yaml is regime 1 of benchmarks/methods (same data,
    optimiser, schedule, epochs, evaluation, networks), and its spaces file is valid."""
    from bdkd.config import read_yaml, validate
    from bdkd.tune import read_spaces

    bench = ROOT.parent / "benchmarks"
    base = read_yaml(bench / "methods" / "configs" / "regime1_base.yaml")
    features = read_yaml(bench / "features" / "regime1.yaml")
    for key in ("data", "optim", "schedule", "train", "eval"):
        assert features[key] == base[key], key
    cfg = validate(features)
    assert {n: net.model for n, net in cfg.networks.items()} == {
        "teacher": "cnn_medium",
        "student": "cnn_small",
    }
    spaces = read_spaces(read_yaml(bench / "features" / "spaces.yaml"))
    assert set(spaces) == {"crd", "reviewkd"}
