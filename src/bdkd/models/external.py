"""timm and torchvision models behind the same contract (optional extras), with their own
preprocessing when asked (``networks.<name>.preprocess``).

A pretrained ImageNet teacher expects its own statistics and input size, not the dataset's:
:meth:`ExternalModel.adapt_input` makes the model take the batch as the dataset normalises it
and turn it into what the model was trained on: undo the dataset's mean/std, repeat a grey
channel to three, resize (bilinear) to the model's side and normalise with its mean/std. The
numbers come from the model's pretrained configuration (timm ``pretrained_cfg``, torchvision's
default weights' transforms; metadata only, nothing downloads) or from the config. They are
buffers outside the state dict, so weights and checkpoints are unchanged and an export carries
the adaptation inside the graph.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bdkd.models.base import ZooModel

__all__ = ["ExternalModel", "create_external", "own_preprocessing"]


class ExternalModel(ZooModel):
    """Wraps a timm/torchvision classifier. Its feature for USKD is the pooled
    penultimate representation (the input of the classifier), since these libraries do not
    expose stages uniformly."""

    def __init__(
        self,
        model: nn.Module,
        head_path: str,
        num_classes: int,
        pretrained: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        *parents, last = head_path.split(".")
        holder = model.get_submodule(".".join(parents)) if parents else model
        self.model = model
        self.classifier = getattr(holder, last)
        setattr(holder, last, nn.Identity())
        self.native_head = head_path
        self.num_classes, self.feature_dim = num_classes, self.classifier.in_features
        self.pretrained = dict(pretrained or {})
        self.own: dict[str, Any] = {}
        self.input_size: int | None = None
        self.repeat_channels = False

    def adapt_input(
        self,
        dataset_mean: Sequence[float],
        dataset_std: Sequence[float],
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int | None,
    ) -> None:
        """Take inputs normalised by ``dataset_mean``/``dataset_std`` and give the model
        images normalised by ``mean``/``std`` at side ``image_size`` (None: unchanged)."""
        if len(mean) != len(std) or len(mean) not in (1, 3):
            raise ValueError(
                f"preprocess mean {list(mean)} and std {list(std)}: 1 or 3 values each"
            )
        if len(dataset_mean) not in (1, len(mean)):
            raise ValueError(
                f"the dataset has {len(dataset_mean)} channels and the model's preprocessing "
                f"{len(mean)}"
            )
        if any(v <= 0 for v in std):
            raise ValueError(f"preprocess std must be positive, got {list(std)}")

        def buffer(name: str, values: Sequence[float]) -> None:
            self.register_buffer(name, torch.tensor(values).view(1, -1, 1, 1), persistent=False)

        buffer("in_mean", dataset_mean)
        buffer("in_std", dataset_std)
        buffer("own_mean", mean)
        buffer("own_std", std)
        self.repeat_channels = len(dataset_mean) == 1 and len(mean) == 3
        self.input_size = image_size
        self.own = {"mean": list(mean), "std": list(std), "image_size": image_size}

    def _adapt(self, x: Tensor) -> Tensor:
        if not self.own:
            return x
        raw = x * self.in_std.to(x.dtype) + self.in_mean.to(x.dtype)
        if self.repeat_channels:
            raw = raw.expand(-1, 3, -1, -1)
        if self.input_size is not None and tuple(raw.shape[-2:]) != (self.input_size,) * 2:
            raw = F.interpolate(
                raw, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
        return (raw - self.own_mean.to(x.dtype)) / self.own_std.to(x.dtype)

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled = self.model(self._adapt(x))
        return pooled, pooled

    def from_native(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A state dict as timm/torchvision name it (``conv1.weight``, ``fc.weight``) in this
        wrapper's names (``model.conv1.weight``, ``classifier.weight``)."""
        head = self.native_head + "."
        return {
            ("classifier." + k[len(head) :]) if k.startswith(head) else f"model.{k}": v
            for k, v in state.items()
        }


def own_preprocessing(model: nn.Module) -> dict[str, Any]:
    """The mean, std and input side a timm/torchvision model was trained with (its pretrained
    configuration; ImageNet's for most)."""
    if not isinstance(model, ExternalModel) or not model.pretrained:
        raise ValueError(
            "only timm:<arch> and torchvision:<arch> classifiers carry their own preprocessing"
        )
    return dict(model.pretrained)


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
        path = _head_path(model, model.get_classifier())
        return (
            ExternalModel(model, path, num_classes, _timm_preprocessing(model)) if path else model
        )
    import torchvision

    builder = getattr(torchvision.models, arch, None)
    if builder is None:
        raise ValueError(f"torchvision has no model {arch!r}")
    model = builder(weights=None, num_classes=num_classes, **kwargs)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    path = linears[-1][0] if linears and linears[-1][1].out_features == num_classes else None
    if path is None or path.split(".")[0] not in ("fc", "classifier", "head", "heads"):
        return model
    return ExternalModel(model, path, num_classes, _torchvision_preprocessing(arch))


def _head_path(model: nn.Module, head: nn.Module) -> str | None:
    """The dotted name of ``head`` inside ``model`` when it is a plain linear classifier."""
    if not isinstance(head, nn.Linear):
        return None
    return next((n for n, m in model.named_modules() if m is head), None)


def _timm_preprocessing(model: nn.Module) -> dict[str, Any]:
    cfg: Mapping[str, Any] = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") or (3, 224, 224)
    return {
        "mean": list(cfg.get("mean") or (0.485, 0.456, 0.406)),
        "std": list(cfg.get("std") or (0.229, 0.224, 0.225)),
        "image_size": int(size[-1]),
    }


def _torchvision_preprocessing(arch: str) -> dict[str, Any]:
    import torchvision

    try:
        transforms = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    except (ValueError, KeyError, AttributeError):  # a model without published weights
        return {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "image_size": 224}
    return {
        "mean": list(transforms.mean),
        "std": list(transforms.std),
        "image_size": int(transforms.crop_size[0]),
    }
