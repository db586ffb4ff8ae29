"""A segmentation student from an encoder pretrained by classification: the U-Net's encoder
trained on Fashion-MNIST items, exported, loads into seg_unet and gives the pretrained
features; a scenes run starts from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bdkd.cli import main
from bdkd.models import create_model
from bdkd.models.weights import load_weights

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

pytestmark = pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").exists(),
    reason="Fashion-MNIST (apt install dataset-fashion-mnist)",
)


def test_a_pretrained_encoder_loads_into_the_unet_and_gives_its_features(tmp_path, capsys):
    run, weights = tmp_path / "encoder", tmp_path / "encoder.safetensors"
    fast = ["train.epochs=1", "train.progress=false", "data.train_size=512", "data.val_size=256"]
    assert main(["train", str(CONFIGS / "fashion_mnist" / "unet_encoder.yaml"), *fast, "--out", str(run)]) == 0  # fmt: skip
    assert main(["export", str(run), "--format", "safetensors", "--out", str(weights)]) == 0
    encoder = create_model("unet_encoder", 10, width=4, in_channels=1)
    load_weights(encoder, str(weights))
    seg = create_model("seg_unet", 11, width=4, in_channels=1)
    notes = load_weights(seg, str(weights), strict=False)
    assert any("head" in n for n in notes) and any("dec1" in n for n in notes), notes
    encoder.eval(), seg.eval()
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        want = encoder.encode(x)
        e1 = seg.enc1(x)
        e2 = seg.enc2(torch.nn.functional.max_pool2d(e1, 2))
        got = (e1, e2, seg.enc3(torch.nn.functional.max_pool2d(e2, 2)))
    torch.testing.assert_close(got, want)
    # a scenes student starts from it (the decoder and classifier new, noted on stderr)
    capsys.readouterr()
    scenes = [
        "train.epochs=1", "train.progress=false", "data.options.train_scenes=48",
        "data.options.test_scenes=16", "data.val_size=8", "data.batch_size=8",
        f"networks.student.weights={weights}", "networks.student.weights_strict=false",
    ]  # fmt: skip
    args = [
        "train",
        str(CONFIGS / "scenes" / "scratch.yaml"),
        *scenes,
        "--out",
        str(tmp_path / "s"),
    ]
    assert main(args) == 0
    assert "networks.student.weights (not strict)" in capsys.readouterr().err
