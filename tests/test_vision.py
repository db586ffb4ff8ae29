"""timm and torchvision models as teachers and students, for real, with their own
preprocessing. These packages come only with a CUDA build of torch (several GB), so they live
in a separate environment: `make test-vision` builds .venv-vision and runs this file there.
In the main environment every test here is skipped with that reason."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bdkd.cli import main

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("timm") is None or importlib.util.find_spec("torchvision") is None,
    reason="timm and torchvision are not installed here (they need a CUDA build of torch, "
    "several GB): make test-vision runs these tests in .venv-vision",
)

TIMM, TV = "timm:resnet10t", "torchvision:mobilenet_v3_small"
DIGITS = Path(__file__).resolve().parents[1] / "configs" / "digits" / "base.yaml"
SMALL = {"train_size": 96, "val_size": 64, "batch_size": 32, "eval_batch_size": 256}


def config(tmp_path: Path, name: str, method: str, networks: dict, epochs: int = 1) -> Path:
    import yaml

    data = {
        "base": str(DIGITS),
        "data": SMALL,
        "method": {"name": method},
        "networks": networks,
        "train": {"epochs": epochs, "progress": False, "threads": 2},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def train(cfg: Path, out: Path) -> dict:
    import json

    assert main(["train", str(cfg), "--out", str(out)]) == 0
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """A timm teacher and a torchvision teacher, one epoch each on grey 8x8 digits seen as
    RGB images at their own statistics and a 32-pixel side."""
    root = tmp_path_factory.mktemp("teachers")
    runs = {}
    for label, model in (("timm", TIMM), ("tv", TV)):
        net = {"model": model, "preprocess": {"image_size": 32}}
        cfg = config(root, label, "scratch", {"teacher": net})
        runs[label] = root / label
        summary = train(cfg, runs[label])
        assert summary["results"]["teacher"]["accuracy"] > 0
    return runs


@pytest.mark.parametrize(("teacher", "student"), [("timm", TV), ("tv", TIMM)])
def test_each_library_distils_into_the_other(teachers, tmp_path, teacher, student):
    model = TIMM if teacher == "timm" else TV
    nets = {
        "teacher": {
            "model": model,
            "checkpoint": str(teachers[teacher]),
            "preprocess": {"image_size": 32},
        },
        "student": {"model": student, "preprocess": {"image_size": 24}},
    }
    summary = train(config(tmp_path, "kd", "kd", nets), tmp_path / "kd")
    student_result = summary["results"]["student"]
    assert 0.0 <= student_result["accuracy"] <= 1.0 and student_result["ece"] >= 0.0


def library_preprocessing(model: str, net) -> tuple[tuple, tuple, int]:
    """Mean, std and side as the library itself resolves them for evaluation."""
    if model.startswith("timm:"):
        import timm.data

        cfg = timm.data.resolve_data_config({}, model=net.model)
        return tuple(cfg["mean"]), tuple(cfg["std"]), int(cfg["input_size"][-1])
    import torchvision

    t = torchvision.models.get_model_weights(model.split(":")[1]).DEFAULT.transforms()
    return tuple(t.mean), tuple(t.std), int(t.crop_size[0])


def test_a_network_sees_its_own_preprocessing(tmp_path):
    from bdkd.config import load_config
    from bdkd.engine.build import build_networks, load_splits

    for model in (TIMM, TV):
        nets = {"student": {"model": model, "preprocess": "model"}}
        cfg = load_config(config(tmp_path, "p", "scratch", nets))
        splits = load_splits(cfg)
        net = build_networks(cfg, splits)["student"].eval()
        mean, std, side = library_preprocessing(model, net)
        seen = []
        net.model.register_forward_pre_hook(lambda m, args, seen=seen: seen.append(args[0]))
        images = splits.train.images[:4]
        info = splits.info
        net((images.float() / 255 - info.mean[0]) / info.std[0])
        raw = (images.float() / 255).expand(-1, 3, -1, -1)
        raw = F.interpolate(raw, size=(side, side), mode="bilinear", align_corners=False)
        expected = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        assert seen[0].shape == (4, 3, side, side)
        torch.testing.assert_close(seen[0], expected, atol=1e-5, rtol=1e-5)
        # the adaptation is not part of the weights
        assert not any("own_mean" in k or "in_mean" in k for k in net.state_dict())


def test_native_timm_and_torchvision_weights_load_by_their_own_names(tmp_path):
    import timm
    import torchvision

    from bdkd.config import load_config
    from bdkd.engine.build import build_networks, load_splits

    native = {
        TIMM: timm.create_model("resnet10t", pretrained=False, num_classes=10),
        TV: torchvision.models.mobilenet_v3_small(weights=None, num_classes=10),
    }
    for i, (model, reference) in enumerate(native.items()):
        path = tmp_path / f"w{i}.pth"
        torch.save(reference.state_dict(), path)
        nets = {"student": {"model": model, "weights": str(path)}}
        cfg = load_config(config(tmp_path, f"n{i}", "scratch", nets))
        net = build_networks(cfg, load_splits(cfg))["student"].eval()
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(net(x), reference.eval()(x))


def test_an_exported_student_carries_its_preprocessing(teachers, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from bdkd.api import load_student
    from bdkd.data.sources import load_digits

    out = tmp_path / "teacher.onnx"
    assert main(["export", str(teachers["tv"]), "--out", str(out)]) == 0
    student = load_student(teachers["tv"])
    _, test, _ = load_digits()
    x = student.preprocess(test.images[:8])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), student(x), atol=1e-4, rtol=1e-4)
