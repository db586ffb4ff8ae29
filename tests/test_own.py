"""Users' own models (import paths, feature hooks), weights, image folders and datasets, and
exports (ONNX, TorchScript, ExportedProgram, safetensors, state dict) of a calibrated student."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bdkd.cli import main

NETS = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """A user's network: no bdkd base class."""

    def __init__(self, num_classes, width=6, channels=3):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.ReLU(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.head(self.body(x).mean(dim=(2, 3)))


def tiny(num_classes, width=6):
    return TinyNet(num_classes, width)


def not_a_module(num_classes):
    return 42


def squares(root=None, size=12):
    g = torch.Generator().manual_seed(0)
    def part(n):
        labels = torch.arange(n) % 3
        images = (torch.rand(n, 1, size, size, generator=g) * 60).to(torch.uint8)
        for i, y in enumerate(labels.tolist()):
            images[i, 0, 2 * y : 2 * y + 4, 2:6] = 250
        return images, labels
    return {"train": part(120), "test": part(60), "class_names": ["a", "b", "c"]}


class ItemDataset(torch.utils.data.Dataset):
    def __init__(self, n):
        self.images, self.labels = squares(size=12)["train"]
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def streamed(root=None):
    return {"train": ItemDataset(90), "test": ItemDataset(30), "num_classes": 3}
'''


@pytest.fixture
def nets(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_folder(
    root: Path, *, sizes=((20, 24), (24, 20), (18, 18)), per_class=30, val=True, grey=False
):
    """Three classes of coloured (or ``grey``) images, of several sizes, as PNG and JPEG."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = [(220, 40, 40), (40, 200, 60), (50, 70, 230)]
    parts = {"train": per_class, "test": per_class // 2}
    if val:
        parts["val"] = per_class // 3
    for part, count in parts.items():
        for c, colour in enumerate(colours):
            folder = root / part / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                w, h = sizes[i % len(sizes)]
                pixels = rng.integers(0, 90, (h, w, 3)).astype(np.uint8)
                pixels[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = colour
                suffix = ".png" if i % 2 else ".jpg"
                image = Image.fromarray(pixels)
                (image.convert("L") if grey else image).save(folder / f"{i}{suffix}")
    return root


def config(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# --------------------------------------------------------------------------- the whole path


def test_teacher_from_import_path_and_weights_student_on_a_folder_exported_calibrated(
    nets, tmp_path
):
    onnxruntime = pytest.importorskip("onnxruntime")
    data = write_folder(tmp_path / "images")
    common = textwrap.dedent(
        f"""
        data: {{dataset: image_folder, root: {data}, image_size: 16, batch_size: 32}}
        optim: {{name: sgd, lr: 0.05}}
        schedule: {{name: cosine}}
        train: {{epochs: 3, progress: false, threads: 1}}
        """
    )
    # 1. the user's teacher, trained elsewhere: here by bdkd, then taken out as a state dict
    teacher_cfg = config(
        tmp_path / "teacher.yaml",
        common + "method: {name: scratch}\nnetworks: {teacher: {model: 'mynets:tiny'}}\n",
    )
    assert main(["train", str(teacher_cfg), "--out", str(tmp_path / "t")]) == 0
    state = torch.load(tmp_path / "t" / "checkpoints" / "last.pt", weights_only=True)
    # saved the way training scripts do: wrapped, with DataParallel's prefix
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state["networks"]["teacher"].items()}}
    torch.save(wrapped, tmp_path / "teacher_weights.pth")
    # 2. KD into a zoo student on the folder, teacher from its import path and weights
    kd_cfg = config(
        tmp_path / "kd.yaml",
        common
        + f"""method: {{name: kd, temperature: 4.0}}
networks:
  teacher: {{model: 'mynets:tiny', weights: {tmp_path / "teacher_weights.pth"}, weights_prefix: module.}}
  student: {{model: cnn, kwargs: {{width: 3}}}}
""",
    )
    run = tmp_path / "kd"
    assert main(["train", str(kd_cfg), "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    teacher_acc = summary["results"]["teacher"]["accuracy"]
    assert teacher_acc == pytest.approx(
        json.loads((tmp_path / "t" / "summary.json").read_text())["results"]["teacher"]["accuracy"]
    )
    temperature = summary["results"]["student"]["temperature"]
    # 3. export with the temperature folded in, probabilities out
    onnx_file = tmp_path / "student.onnx"
    assert (
        main(["export", str(run), "--out", str(onnx_file), "--calibrated", "--probabilities"]) == 0
    )
    # 4. ONNX outputs = softmax(logits / T) of the PyTorch student, within 1e-5
    from bdkd.models import create_model

    student = create_model("cnn", 3, width=3, in_channels=3)
    final = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    student.load_state_dict(final["networks"]["student"])
    student.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 3, 16, 16, generator=g)
    with torch.no_grad():
        expected = torch.softmax(student(x) / temperature, dim=-1)
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=0)
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["bdkd.temperature"]) == pytest.approx(temperature)
    assert json.loads(meta["bdkd.class_names"]) == ["class_0", "class_1", "class_2"]
    # 5. the run records the exported model's test metrics
    summary = json.loads((run / "summary.json").read_text())
    (record,) = summary["exports"]
    assert record["temperature_folded"] and record["max_abs_difference_vs_pytorch"] < 1e-5
    assert "## Exported" in (run / "report.md").read_text()
    assert "ECE" in (run / "report.md").read_text().split("## Exported")[1]
    # exports never overwrite without --force
    assert main(["export", str(run), "--out", str(onnx_file)]) == 2


# --------------------------------------------------------------------------- models


def test_import_path_models_and_their_errors(nets):
    from bdkd.models import create_model

    net = create_model("mynets:tiny", 5, width=4)
    assert type(net).__name__ == "TinyNet" and net.head.out_features == 5
    # a config the user gives is the user's own (a config read back from a run is refused
    # before this point: tests/test_hostile.py); an object that is no model factory fails
    # in one line naming the import path
    with pytest.raises(ValueError, match="'subprocess:run': calling it with"):
        create_model("subprocess:run", 5)
    with pytest.raises(TypeError, match="not a torch nn.Module"):
        create_model("mynets:not_a_module", 5)
    with pytest.raises(ImportError, match="cannot import 'nosuchpkg'"):
        create_model("nosuchpkg:net", 5)
    with pytest.raises(ValueError, match="has no 'missing'"):
        create_model("mynets:missing", 5)


def test_feature_layer_gives_uskd_its_feature_without_changing_the_state_dict(nets):
    import torch.nn.functional as F

    from bdkd.distillers import create_distiller
    from bdkd.models import create_model
    from bdkd.models.imported import attach_feature_layer

    net = create_model("mynets:tiny", 3, width=4)
    keys = list(net.state_dict())
    attach_feature_layer(net, "body.1", torch.zeros(2, 3, 8, 8))
    assert net.feature_dim == 4 and list(net.state_dict()) == keys
    x = torch.randn(4, 3, 8, 8)
    feature, logits = net.forward_with_features(x)
    torch.testing.assert_close(feature, F.relu(net.body[0](x)).mean(dim=(2, 3)))
    torch.testing.assert_close(logits, net(x))
    distiller = create_distiller("uskd", {"student": net})
    distiller(x, torch.tensor([0, 1, 2, 0])).total().backward()
    with pytest.raises(ValueError, match="not a submodule"):
        attach_feature_layer(create_model("mynets:tiny", 3), "body.9", torch.zeros(1, 3, 8, 8))


# --------------------------------------------------------------------------- weights


def test_weights_are_read_safely_mapped_and_mismatches_listed(nets, tmp_path):
    from safetensors.torch import save_file

    from bdkd.models import create_model
    from bdkd.models.weights import WeightsError, load_weights

    source = create_model("mynets:tiny", 3, width=4)
    target = create_model("mynets:tiny", 3, width=4)
    save_file(
        {f"backbone.{k}": v for k, v in source.state_dict().items()}, tmp_path / "w.safetensors"
    )
    with pytest.raises(WeightsError) as err:
        load_weights(target, tmp_path / "w.safetensors")
    text = str(err.value)
    assert "missing keys (6)" in text and "unexpected keys (6)" in text and "prefix" in text
    load_weights(target, tmp_path / "w.safetensors", rename={"backbone.": ""})
    for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    wider = create_model("mynets:tiny", 3, width=5)
    torch.save(wider.state_dict(), tmp_path / "wider.pt")
    with pytest.raises(
        WeightsError,
        match=r"shape differences, file vs network \(5\): body.0.bias \(5,\) vs \(4,\)",
    ):
        load_weights(target, tmp_path / "wider.pt")
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    load_weights(target, tmp_path / "ckpt.pth")
    # a pre-trained backbone under a new head: not strict, the head stays as it was
    partial = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    partial["fc.weight"] = torch.zeros(2, 2)  # e.g. an ImageNet classifier
    torch.save(partial, tmp_path / "backbone.pt")
    fresh = create_model("mynets:tiny", 3, width=4)
    head = fresh.head.weight.clone()
    notes = load_weights(fresh, tmp_path / "backbone.pt", strict=False)
    assert "2 keys of the network are not in the file" in notes[0] and "fc.weight" in notes[1]
    assert torch.equal(fresh.head.weight, head)
    assert torch.equal(fresh.body[0].weight, source.body[0].weight)
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": source.state_dict(), "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="refused without running"):
        load_weights(target, tmp_path / "evil.pt")
    assert not marker.exists()


# --------------------------------------------------------------------------- data


def test_image_folder_in_memory_and_streamed_give_the_same_images(tmp_path):
    from bdkd.data import ArraySplit, ImageFolderSplit, load_dataset

    root = write_folder(tmp_path / "img")
    kept = load_dataset("image_folder", root=root, image_size=16)
    assert isinstance(kept.train, ArraySplit) and kept.train.images.shape[1:] == (3, 16, 16)
    assert len(kept.val) == 30 and len(kept.train) == 90 and len(kept.test) == 45  # val/ used
    assert kept.info.class_names == ["class_0", "class_1", "class_2"]
    streamed = load_dataset("image_folder", root=root, image_size=16, memory_limit_mb=0)
    assert isinstance(streamed.train, ImageFolderSplit)
    image, label = streamed.test[7]
    assert torch.equal(image, kept.test.images[7]) and int(label) == int(kept.test.labels[7])
    grey = load_dataset("image_folder", root=root, image_size=16, channels=1)
    assert grey.train.images.shape[1] == 1 and grey.info.channels == 1


def test_a_grey_folder_is_detected_and_a_channel_mismatch_names_data_channels(
    nets, tmp_path, capsys
):
    from bdkd.data import load_dataset

    root = write_folder(tmp_path / "grey", grey=True, per_class=6, sizes=((16, 16),))
    grey = load_dataset("image_folder", root=root)
    assert grey.info.channels == 1 and grey.train.images.shape[1:] == (1, 16, 16)
    cfg = config(
        tmp_path / "c.yaml",
        f"""
        data: {{dataset: image_folder, root: {root}, batch_size: 8}}
        method: {{name: scratch}}
        networks: {{student: {{model: 'mynets:tiny'}}}}
        train: {{epochs: 1, progress: false}}
        """,
    )
    capsys.readouterr()
    assert main(["train", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "1 channel(s)" in err and "data.channels" in err, err
    assert not (tmp_path / "r").exists(), "refused before the run directory is made"
    over = ["data.channels=3", "--out", str(tmp_path / "rgb")]
    assert main(["train", str(cfg), *over]) == 0


def test_image_folder_errors(tmp_path):
    from bdkd.data import DataError, load_dataset

    root = write_folder(tmp_path / "img", val=False)
    with pytest.raises(DataError, match="set data.image_size"):
        load_dataset("image_folder", root=root)
    (root / "test" / "class_9").mkdir()
    with pytest.raises(DataError, match=r"classes not in train/: \['class_9'\]"):
        load_dataset("image_folder", root=root, image_size=16)
    (root / "test" / "class_9").rmdir()
    (root / "train" / "class_0" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        load_dataset("image_folder", root=root, image_size=16)
    with pytest.raises(DataError, match="does not take"):
        load_dataset("fashion_mnist", image_size=16)


def test_training_streams_an_image_folder_above_the_memory_limit(tmp_path):
    root = write_folder(tmp_path / "img")
    cfg = config(
        tmp_path / "c.yaml",
        f"""
        data: {{dataset: image_folder, root: {root}, image_size: 16, memory_limit_mb: 0, batch_size: 32}}
        method: {{name: scratch}}
        networks: {{student: {{model: cnn, kwargs: {{width: 2}}}}}}
        train: {{epochs: 1, progress: false, threads: 1}}
        """,
    )
    assert main(["train", str(cfg), "--out", str(tmp_path / "r")]) == 0


def test_custom_dataset_factories(nets, tmp_path):
    from bdkd.data import load_dataset
    from bdkd.data.custom import DatasetSplit

    arrays = load_dataset("mynets:squares", val_size=30, size=12)
    assert arrays.info.num_classes == 3 and arrays.info.channels == 1
    assert arrays.info.class_names == ["a", "b", "c"] and len(arrays.val) == 30
    stream = load_dataset("mynets:streamed", val_size=10)
    assert isinstance(stream.train, DatasetSplit) and len(stream.train) == 80
    cfg = config(
        tmp_path / "c.yaml",
        """
        data: {dataset: 'mynets:streamed', val_size: 10, batch_size: 16}
        method: {name: scratch}
        networks: {student: {model: cnn, kwargs: {width: 2}}}
        train: {epochs: 1, progress: false, threads: 1}
        """,
    )
    assert main(["train", str(cfg), "--out", str(tmp_path / "r")]) == 0


def test_resized_crop_boxes_are_replayable_and_the_whole_box_is_the_identity():
    from bdkd.data import Augment, resized_crop, resized_crop_boxes

    g = torch.Generator().manual_seed(0)
    boxes = resized_crop_boxes(500, g)
    x0, y0, w, h = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 1 + 1e-6).all()
    assert (y0 + h <= 1 + 1e-6).all() and (w * h >= 0.08 - 1e-6).all()
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    whole = resized_crop(images, torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2))
    torch.testing.assert_close(whole, images.float())
    left = resized_crop(images, torch.tensor([[0.0, 0.0, 0.5, 1.0]] * 2))
    torch.testing.assert_close(left[..., ::2][..., :4], images.float()[..., :4], atol=64, rtol=0)
    aug = Augment((0.5,) * 3, (0.5,) * 3, resized_crop=True, flip=True)
    a = aug.epoch_params(10, seed=3, epoch=1)
    b = aug.epoch_params(10, seed=3, epoch=1)
    assert torch.equal(a["boxes"], b["boxes"])
    out = aug.apply(torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8), a, torch.arange(4))
    assert out.shape == (4, 3, 8, 8) and out.dtype == torch.float32


# --------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("export") / "run"
    configs = Path(__file__).resolve().parents[1] / "configs" / "digits"
    args = ["train", str(configs / "scratch.yaml"), "train.epochs=2", "train.progress=false"]
    assert main([*args, "--out", str(run)]) == 0
    return run


@pytest.mark.parametrize(
    ("fmt", "suffix"),
    [
        ("torchscript", ".pt"),
        ("exported_program", ".pt2"),
        ("safetensors", ".safetensors"),
        ("state_dict", ".pt"),
    ],
)
def test_every_export_format_round_trips(digits_run, tmp_path, fmt, suffix, capsys):
    out = tmp_path / f"student{suffix}"
    assert (
        main(["export", str(digits_run), "--out", str(out), "--format", fmt, "--calibrated"]) == 0
    )
    summary = json.loads((digits_run / "summary.json").read_text())
    record = next(e for e in summary["exports"] if e["file"] == str(out))
    assert record["max_abs_difference_vs_pytorch"] < 1e-4 and record["temperature_folded"]
    from bdkd.calibration import apply_temperature, calibration_metrics
    from bdkd.files import load_logits as read

    saved = read(digits_run / "predictions" / "student.npz")
    scaled = calibration_metrics(
        apply_temperature(saved["logits"], summary["results"]["student"]["temperature"]),
        saved["labels"],
    )
    assert record["test"]["ece"] == pytest.approx(scaled["ece"], abs=1e-4)
    assert record["test"]["accuracy"] == pytest.approx(summary["results"]["student"]["accuracy"])


def test_export_refusals(digits_run, tmp_path, capsys):
    assert (
        main(
            [
                "export",
                str(digits_run),
                "--out",
                str(tmp_path / "x.onnx"),
                "--format",
                "torchscript",
            ]
        )
        == 2
    )
    assert "should end in .pt" in capsys.readouterr().err
    assert (
        main(
            [
                "export",
                str(digits_run),
                "--out",
                str(tmp_path / "x.pt"),
                "--format",
                "state_dict",
                "--probabilities",
            ]
        )
        == 2
    )
    assert "shape a graph" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "not a bdkd run directory" in capsys.readouterr().err


def test_fold_temperature_needs_a_linear_classifier():
    from bdkd.deploy import fold_temperature

    net = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="no nn.Linear 'classifier'"):
        fold_temperature(net, 2.0)
    from bdkd.models import create_model

    zoo = create_model("mlp_small", 4, in_features=6)
    x = torch.randn(5, 6)
    torch.testing.assert_close(fold_temperature(zoo, 2.5)(x), zoo(x) / 2.5)
