"""Model zoo: every model builds, runs forward and backward, and has the published size."""

from __future__ import annotations

import pytest
import torch

from bdkd.models import available_models, count_parameters, create_model, model_input_size

# Parameter counts at 100 classes; the published zoo (CRD) rounds them to 0.01M.
PUBLISHED = {
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg13": 9_462_180,
    "mobilenetv2": 812_836,
    "shufflenetv1": 949_258,
    "shufflenetv2": 1_356_104,
}
ROUNDED_MILLIONS = {
    "resnet56": 0.86,
    "resnet110": 1.74,
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_40_2": 2.26,
    "wrn_16_2": 0.70,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_are_exact(name):
    assert count_parameters(create_model(name, 100)) == PUBLISHED[name]


@pytest.mark.parametrize("name", sorted(ROUNDED_MILLIONS))
def test_parameter_counts_match_the_published_table(name):
    assert round(count_parameters(create_model(name, 100)) / 1e6, 2) == ROUNDED_MILLIONS[name]


@pytest.mark.parametrize("name", available_models("classification"))
def test_every_model_runs_forward_and_backward_with_features(name):
    size = model_input_size(name)
    channels = 3 if size == 32 else 1
    classes = 100 if size == 32 else 10
    torch.manual_seed(0)
    model = create_model(name, classes)
    x = torch.randn(2, channels, size, size)
    feature, logits = model.forward_with_features(x)
    assert logits.shape == (2, classes)
    assert feature.shape == (2, model.feature_dim)
    assert model.num_classes == classes
    torch.testing.assert_close(model(x), logits)
    (logits.sum() + feature.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", available_models("segmentation"))
def test_every_segmentation_model_maps_pixels_to_class_logits(name):
    torch.manual_seed(0)
    model = create_model(name, 5)
    x = torch.randn(2, 3, 48, 40)
    logits = model(x)
    assert logits.shape == (2, 5, 48, 40)
    logits.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_models_are_listed_by_task():
    seg, cls = set(available_models("segmentation")), set(available_models("classification"))
    assert "seg_unet" in seg and "resnet8x4" in cls and not seg & cls
    assert seg | cls == set(available_models())


def test_small_cnn_sizes_and_other_inputs():
    sizes = [
        count_parameters(create_model(f"cnn_{w}", 10)) for w in ("tiny", "small", "medium", "large")
    ]
    assert sizes == sorted(sizes) and sizes[-1] > 40 * sizes[0]
    # the CNNs accept other channel counts and sizes (e.g. 3x32x32)
    model = create_model("cnn_small", 10, in_channels=3)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_vgg_and_resnet_accept_64px_inputs():
    for name in ("vgg8", "resnet20", "wrn_16_1"):
        assert create_model(name, 200)(torch.randn(1, 3, 64, 64)).shape == (1, 200)


def test_errors():
    with pytest.raises(ValueError, match="unknown model 'resnet9'"):
        create_model("resnet9", 10)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet20", 1)
    import importlib.util

    if importlib.util.find_spec("timm") is None:
        with pytest.raises(ImportError, match=r"pip install 'bdkd\[timm\]'"):
            create_model("timm:resnet18", 10)
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises(ImportError, match="torchvision"):
            create_model("torchvision:resnet18", 10)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("own", "expected model or a mapping"),
        ({"mean": [0.5], "sdt": [1.0]}, "preprocess.sdt"),
        ({"mean": "0.5"}, "preprocess.mean': expected a list of numbers"),
        ({"std": [0.0, 1.0, 1.0]}, "must be positive"),
        ({"image_size": 4}, "preprocess.image_size"),
    ],
)
def test_preprocess_values_are_checked(value, fragment):
    from bdkd.config import ConfigError, validate

    data = {"networks": {"student": {"model": "cnn_small", "preprocess": value}}}
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace(".", r"\.")):
        validate(data)


def test_own_preprocessing_is_for_timm_and_torchvision_models():
    from bdkd.config import ConfigError, validate
    from bdkd.engine.build import build_networks, load_splits

    cfg = validate({"networks": {"student": {"model": "mlp_small", "preprocess": "model"}}})
    with pytest.raises(ConfigError, match="networks.student.preprocess.*only timm"):
        build_networks(cfg, load_splits(cfg))


def test_an_external_wrapper_adapts_its_input_and_maps_native_names():
    from torch import nn

    from bdkd.models.external import ExternalModel

    class Native(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(3, 4, 1)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 16, 5))

        def forward(self, x):
            return self.head(self.body(x))

    native = Native()
    state = {k: v.clone() for k, v in native.state_dict().items()}
    wrapped = ExternalModel(
        Native(), "head.1", 5, {"mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 4}
    )
    wrapped.load_state_dict(wrapped.from_native(state))
    wrapped.adapt_input((0.1,), (0.2,), [0.5] * 3, [0.25] * 3, 4)
    x = torch.randn(2, 1, 8, 8)
    raw = (x * 0.2 + 0.1).expand(-1, 3, -1, -1)
    raw = torch.nn.functional.interpolate(raw, size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(wrapped(x), native((raw - 0.5) / 0.25))
    assert set(wrapped.state_dict()) == {
        "model.body.weight",
        "model.body.bias",
        "classifier.weight",
        "classifier.bias",
    }
