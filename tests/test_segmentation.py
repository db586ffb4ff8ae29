"""Semantic segmentation: readers of the standard layouts (on files written here), Fashion-MNIST
scenes, paired augmentation, per-pixel objectives and CWD, pixel metrics against hand-computed
values, and training every method through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bdkd.cli import main
from bdkd.data import load_dataset

SCENES = Path(__file__).resolve().parents[1] / "configs" / "scenes"


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def _image(h=12, w=16, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3)).astype(np.uint8)


# --------------------------------------------------------------------------- readers


def test_cityscapes_layout_maps_label_ids_to_the_19_train_ids(tmp_path):
    for part, count in (("train", 3), ("val", 2)):
        for i in range(count):
            stem = f"aachen_{i:06d}_000019"
            _png(
                tmp_path / "leftImg8bit" / part / "aachen" / f"{stem}_leftImg8bit.png",
                _image(seed=i),
            )
            ids = np.full((12, 16), 7, np.uint8)  # road
            ids[:, 8:] = 26  # car
            ids[0, 0] = 0  # unlabeled -> ignored
            _png(tmp_path / "gtFine" / part / "aachen" / f"{stem}_gtFine_labelIds.png", ids)
    splits = load_dataset("cityscapes", root=tmp_path, val_size=1, height=12, width=16)
    assert splits.info.num_classes == 19 and splits.info.task == "segmentation"
    assert len(splits.train) == 2 and len(splits.val) == 1 and len(splits.test) == 2
    labels = splits.test.labels[0]
    assert labels.shape == (12, 16) and labels.dtype == torch.uint8
    assert set(labels.unique().tolist()) == {0, 13, 255}  # road 0, car 13, void 255
    assert labels[0, 0] == 255 and labels[5, 1] == 0 and labels[5, 10] == 13
    small = load_dataset("cityscapes", root=tmp_path, val_size=1, height=6, width=8)
    assert small.test.images.shape == (2, 3, 6, 8) and small.test.labels.shape == (2, 6, 8)
    assert set(small.test.labels.unique().tolist()) <= {0, 13, 255}  # nearest: no new classes


def test_voc_layout(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir(parents=True)
    palette = [v for i in range(256) for v in (i, 255 - i, (3 * i) % 256)]
    for name in ("a", "b", "c"):
        Image.fromarray(_image()).save(root / "JPEGImages" / f"{name}.jpg")
        label = np.zeros((12, 16), np.uint8)
        label[2:6, 2:6] = 15  # person
        label[6, :] = 255  # border
        img = Image.fromarray(label, "P")  # a palette PNG of class indices, as VOC ships
        img.putpalette(palette)
        img.save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("c\n")
    splits = load_dataset("voc", root=tmp_path, val_size=1, height=12, width=16)
    assert splits.info.num_classes == 21
    assert set(splits.test.labels[0].unique().tolist()) == {0, 15, 255}
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("c\nmissing\n")
    from bdkd.data import DataError

    with pytest.raises(DataError, match="lists missing"):
        load_dataset("voc", root=tmp_path, val_size=1)


def test_ade20k_layout_reduces_the_zero_label(tmp_path):
    for part, count in (("training", 3), ("validation", 1)):
        for i in range(count):
            _png(tmp_path / "images" / part / f"ADE_{i}.jpg", _image(seed=i))
            label = np.full((12, 16), 3, np.uint8)
            label[:, :4] = 0  # "other": ignored
            _png(tmp_path / "annotations" / part / f"ADE_{i}.png", label)
    splits = load_dataset("ade20k", root=tmp_path, val_size=1, height=12, width=16)
    assert splits.info.num_classes == 150
    labels = splits.test.labels[0]
    assert (labels[:, :4] == 255).all() and (labels[:, 4:] == 2).all()
    streamed = load_dataset(
        "ade20k", root=tmp_path, val_size=1, height=12, width=16, memory_limit_mb=0
    )
    image, label = streamed.test[0]
    assert torch.equal(label, labels) and image.dtype == torch.uint8


def test_fashion_scenes_are_deterministic_and_labelled_by_intensity():
    from bdkd.data import compose_scenes

    g = torch.Generator().manual_seed(0)
    items = (torch.rand(10, 1, 28, 28, generator=g) * 255).to(torch.uint8)
    labels = torch.arange(10)
    a = compose_scenes(items, labels, 20, size=64, seed=3)
    b = compose_scenes(items, labels, 20, size=64, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (20, 1, 64, 64) and a.labels.shape == (20, 64, 64)
    # background where nothing is drawn, an item's class + 1 where its intensity is above 30
    assert ((a.images[:, 0] <= 30) == (a.labels == 0)).all()
    assert int(a.labels.max()) <= 10 and (a.labels > 0).any()


# --------------------------------------------------------------------------- augmentation


def test_paired_augmentation_moves_image_and_label_map_together():
    from bdkd.data import SegAugment

    aug = SegAugment((0.0,), (1.0,), scale_range=(0.5, 2.0), flip=True)
    images = torch.zeros(6, 1, 16, 16, dtype=torch.uint8)
    labels = torch.zeros(6, 16, 16, dtype=torch.uint8)
    images[:, :, 4:8, 2:6] = 200  # a square of class 3
    labels[:, 4:8, 2:6] = 3
    params = aug.epoch_params(6, seed=1, epoch=0)
    x, y = aug.apply_pair(images, labels, params, torch.arange(6))
    assert y.dtype == torch.long and x.shape == (6, 1, 16, 16)
    value = x[:, 0] * 255
    assert ((y == 3) <= (value > 1)).all()  # class 3 only where the square landed
    assert ((value > 199) <= (y == 3)).all()  # and wherever its inside landed
    # pixels brought in from outside the image (zoomed out) are ignored, not background
    zoom_out = params["scale"] < 1
    assert zoom_out.any() and (y[zoom_out] == 255).any()
    again = aug.apply_pair(images, labels, aug.epoch_params(6, seed=1, epoch=0), torch.arange(6))
    assert torch.equal(again[1], y)
    # a sample is augmented the same way in any batch
    part = aug.apply_pair(images[[4, 1]], labels[[4, 1]], params, torch.tensor([4, 1]))
    assert torch.equal(part[1], y[[4, 1]])


# --------------------------------------------------------------------------- objectives


def test_objectives_apply_per_valid_pixel():
    from bdkd.distillers import PixelRows, create_distiller

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 4, 3, generator=g), torch.randn(2, 5, 4, 3, generator=g)
    labels = torch.randint(0, 5, (2, 4, 3), generator=g)
    labels[0, 0] = 255
    valid = labels != 255
    rows = lambda z: z.permute(0, 2, 3, 1)[valid]  # noqa: E731
    from bdkd.losses import bdkd_student_loss, dkd_loss, kd_loss

    for method, reference in (
        ("kd", lambda: kd_loss(rows(s), rows(t), temperature=4.0)),
        ("dkd", lambda: dkd_loss(rows(s), rows(t), labels[valid], temperature=4.0)),
        ("bdkd_student", lambda: bdkd_student_loss(rows(s), rows(t), temperature=1.0)),
    ):

        class Fixed(torch.nn.Module):
            def __init__(self, z):
                super().__init__()
                self.z = torch.nn.Parameter(z.clone())

            def forward(self, x):
                return self.z

        d = create_distiller(
            method,
            {"teacher": Fixed(t), "student": Fixed(s)},
            layout=PixelRows(255),
            warmup_epochs=0,
        )
        out = d(torch.zeros(2), labels)
        torch.testing.assert_close(out.losses["student"][method], reference(), msg=method)
        ce = F.cross_entropy(s, labels, ignore_index=255)
        torch.testing.assert_close(out.losses["student"]["ce"], ce)


def test_cwd_matches_its_formula():
    from bdkd.losses import cwd_loss

    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    tau = 4.0
    total = 0.0
    for n in range(2):
        for c in range(3):
            p = torch.softmax(t[n, c].reshape(-1) / tau, 0)
            q = torch.softmax(s[n, c].reshape(-1) / tau, 0)
            total += float((p * (p.log() - q.log())).sum())
    expected = tau**2 / 3 * total / 2  # tau^2 / C sum_c KL, averaged over the batch
    assert float(cwd_loss(s, t, temperature=tau)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        cwd_loss(s, t[:, :, :2])


def test_teacher_and_student_at_other_resolutions_are_compared_at_the_labels():
    from bdkd.distillers import PixelRows, create_distiller

    class Fixed(torch.nn.Module):
        def __init__(self, z):
            super().__init__()
            self.z = torch.nn.Parameter(z)

        def forward(self, x):
            return self.z

    g = torch.Generator().manual_seed(2)
    coarse = torch.randn(1, 3, 2, 2, generator=g)
    fine = torch.randn(1, 3, 4, 4, generator=g)
    labels = torch.randint(0, 3, (1, 4, 4), generator=g)
    d = create_distiller(
        "kd", {"teacher": Fixed(coarse), "student": Fixed(fine)}, layout=PixelRows(255)
    )
    out = d(torch.zeros(1), labels)
    up = F.interpolate(coarse, size=(4, 4), mode="bilinear", align_corners=False)
    from bdkd.losses import kd_loss

    rows = lambda z: z.permute(0, 2, 3, 1).reshape(-1, 3)  # noqa: E731
    torch.testing.assert_close(out.losses["student"]["kd"], kd_loss(rows(fine), rows(up)))


# --------------------------------------------------------------------------- metrics


def test_pixel_metrics_match_a_hand_computation():
    from bdkd.calibration import SegmentationAccumulator, brier, ece, nll

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, 4, generator=g) * 3
    labels = torch.randint(0, 3, (2, 4, 4), generator=g)
    labels[1, 0, :] = 255
    acc = SegmentationAccumulator(3, n_bins=10)
    acc.update(logits[:1], labels[:1])
    acc.update(logits[1:], labels[1:])
    m = acc.compute()
    valid = labels != 255
    z = logits.permute(0, 2, 3, 1)[valid].double()
    y = labels[valid]
    pred = z.argmax(1)
    assert m["pixels"] == int(valid.sum())
    assert m["accuracy"] == pytest.approx(float((pred == y).double().mean()))
    ious = []
    for c in range(3):
        inter = int(((pred == c) & (y == c)).sum())
        union = int(((pred == c) | (y == c)).sum())
        if union:
            ious.append(inter / union)
        assert m["per_class_iou"][c] == (pytest.approx(inter / union) if union else None)
    assert m["miou"] == pytest.approx(sum(ious) / len(ious))
    probs = torch.softmax(z, 1)
    assert m["ece"] == pytest.approx(ece(probs, y, n_bins=10), rel=1e-9)
    assert m["nll"] == pytest.approx(nll(z, y), rel=1e-9)
    assert m["brier"] == pytest.approx(brier(probs, y), rel=1e-9)
    scaled = SegmentationAccumulator(3, n_bins=10, temperature=2.0)
    scaled.update(logits, labels)
    ms = scaled.compute()
    assert ms["nll_after_ts"] == pytest.approx(nll(z / 2.0, y), rel=1e-9)
    assert ms["ece_after_ts"] == pytest.approx(
        ece(torch.softmax(z / 2.0, 1), y, n_bins=10), rel=1e-9
    )
    sampled = SegmentationAccumulator(3, sample_fraction=0.5, seed=0)
    sampled.update(logits, labels)
    zs, ys = sampled.sample()
    assert 0 < len(ys) < m["pixels"] and zs.shape == (len(ys), 3)


# --------------------------------------------------------------------------- the CLI


SMALL = [
    "data.options.train_scenes=120",
    "data.options.test_scenes=40",
    "data.val_size=20",
    "train.epochs=1",
    "train.progress=false",
    "train.threads=1",
]


@pytest.fixture(scope="module")
def scenes_teacher(tmp_path_factory):
    import importlib

    from bdkd.demo import fashion_mnist_present

    if not fashion_mnist_present():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    importlib.import_module("bdkd.data.segmentation")
    run = tmp_path_factory.mktemp("scenes") / "teacher"
    assert main(["train", str(SCENES / "teacher.yaml"), *SMALL, "--out", str(run)]) == 0
    return run


@pytest.mark.parametrize(
    "method", ["scratch", "kd", "dkd", "nkd", "bdd", "abkd", "dist", "cwd", "dml", "bdkd"]
)
def test_every_scenes_config_trains(method, scenes_teacher, tmp_path):
    run = tmp_path / method
    args = ["train", str(SCENES / f"{method}.yaml"), *SMALL, "--out", str(run)]
    if "checkpoint" in (SCENES / f"{method}.yaml").read_text():
        args.insert(2, f"networks.teacher.checkpoint={scenes_teacher}")
    assert main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    result = summary["results"]["student"]
    assert summary["task"] == "segmentation" and len(result["per_class_iou"]) == 11
    assert {"miou", "accuracy", "ece", "nll", "brier", "ece_after_ts", "temperature"} <= set(result)
    assert all(math.isfinite(result[k]) for k in ("miou", "ece", "nll", "temperature"))
    report = (run / "report.md").read_text()
    assert "mIoU %" in report and "Per-class IoU" in report
    assert (run / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    with np.load(run / "predictions" / "student.npz") as saved:
        assert saved["logits"].shape[1] == 11 and len(saved["val_labels"]) > 0
    assert main(["calibrate", str(run / "predictions" / "student.npz")]) == 0


def test_teacher_cache_is_refused_for_segmentation(scenes_teacher, tmp_path, capsys):
    args = [
        "train",
        str(SCENES / "kd.yaml"),
        *SMALL,
        f"networks.teacher.checkpoint={scenes_teacher}",
    ]
    assert main([*args, f"train.teacher_cache={tmp_path / 'c'}", "--out", str(tmp_path / "r")]) == 2
    assert "not for segmentation" in capsys.readouterr().err
