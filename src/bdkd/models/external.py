"""timm and torchvision models behind the same contract (optional extras)."""

from __future__ import annotations

import importlib.util

from torch import Tensor, nn

from bdkd.models.base import ZooModel


class ExternalModel(ZooModel):
    """Wraps a timm/torchvision classifier. Its feature for USKD is the pooled
    penultimate representation (the input of the classifier), since these libraries do not
    expose stages uniformly."""

    def __init__(
        self, model: nn.Module, classifier_name: str, num_classes: int, feature_dim: int
    ) -> None:
        super().__init__()
        self.model = model
        self.classifier = getattr(model, classifier_name)
        setattr(model, classifier_name, nn.Identity())
        self.num_classes, self.feature_dim = num_classes, feature_dim

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled = self.model(x)
        return pooled, pooled


def _missing(package: str, name: str) -> ImportError:
    return ImportError(
        f"model {name!r} needs the optional package {package!r}, which is not installed; "
        f"pip install 'bdkd[{package}]' (or pip install {package})"
    )


def create_external(name: str, num_classes: int, **kwargs: object) -> nn.Module:
    """Build ``timm:<name>`` or ``torchvision:<name>`` without downloading weights."""
    source, _, arch = name.partition(":")
    if not arch:
        raise ValueError(f"model name {name!r} needs an architecture after ':'")
    if importlib.util.find_spec(source) is None:
        raise _missing(source, name)
    if source == "timm":
        import timm

        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
        head = model.get_classifier()
        for attr in ("head", "fc", "classifier"):
            if getattr(model, attr, None) is head:
                return ExternalModel(model, attr, num_classes, head.in_features)
        return model
    import torchvision

    builder = getattr(torchvision.models, arch, None)
    if builder is None:
        raise ValueError(f"torchvision has no model {arch!r}")
    model = builder(weights=None, num_classes=num_classes, **kwargs)
    for attr in ("fc", "classifier", "head", "heads"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Linear):
            return ExternalModel(model, attr, num_classes, head.in_features)
    return model
