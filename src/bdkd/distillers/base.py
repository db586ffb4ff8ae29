"""The Distiller contract and the registry of distillation methods.

A Distiller is an ``nn.Module`` that owns the networks of one method:

- ``networks``: name -> module (``teacher``/``student``, or several peers);
- ``trainable``: the names that get an optimizer; ``deployed``: the network reported as the
  student;
- ``forward(inputs, labels, epoch, cached)`` runs every network once on the batch and
  returns a :class:`DistillerOutput`: the logits per network and, per trainable network, a
  dict of named, already weighted loss terms. Targets taken from another network are
  detached here. ``cached`` may hold frozen networks' logits computed earlier on exactly
  these inputs (a teacher-logit cache); those networks are then not run.

The engine adds every term, runs one backward pass, steps each network's optimizer and logs
every term; it knows nothing of any method, and a method knows nothing of the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bdkd.hparams import HParam, HParamError, declared

__all__ = [
    "DISTILLERS",
    "SAMPLE_ROWS",
    "Distiller",
    "DistillerOutput",
    "HParamError",
    "PixelRows",
    "RowLayout",
    "default_deployed",
    "distiller_hparams",
    "register_distiller",
]


@dataclass
class DistillerOutput:
    """Logits per network, named loss terms per trainable network, and diagnostics."""

    logits: dict[str, Tensor]
    losses: dict[str, dict[str, Tensor]]
    diagnostics: dict[str, Tensor] = field(default_factory=dict)
    """Detached values worth logging that are not losses (e.g. BD-KD's weights)."""

    def total(self) -> Tensor:
        """The sum of every term of every network: what one backward pass differentiates."""
        terms = [t for per_net in self.losses.values() for t in per_net.values()]
        return torch.stack([t.float() for t in terms]).sum()

    def flat_terms(self) -> dict[str, Tensor]:
        """``{"network/term": value}`` for logging."""
        return {f"{net}/{name}": t for net, per in self.losses.items() for name, t in per.items()}


class RowLayout:
    """How a task's logits become the rows the objectives compare: one row per sample
    (classification, the default). A task hands its layout to the distiller it builds, so no
    method looks at label shapes."""

    spatial = False
    """Whether the logits are whole (N, C, H, W) maps (objectives like CWD need them)."""

    def rows(
        self, logits: Mapping[str, Tensor], labels: Tensor
    ) -> tuple[dict[str, Tensor], Tensor]:
        return dict(logits), labels


class PixelRows(RowLayout):
    """Dense prediction: logits (N, C, H, W) become one row per valid pixel (label !=
    ``ignore_index``), with those pixels' labels. Logits of another resolution than the label
    maps are first resized to it (bilinear), so teacher and student compare pixel by pixel."""

    spatial = True

    def __init__(self, ignore_index: int = 255) -> None:
        self.ignore_index = ignore_index

    def rows(
        self, logits: Mapping[str, Tensor], labels: Tensor
    ) -> tuple[dict[str, Tensor], Tensor]:
        size = labels.shape[-2:]
        valid = labels.reshape(-1) != self.ignore_index
        rows = {}
        for name, z in logits.items():
            if z.shape[-2:] != size:
                z = F.interpolate(z, size=size, mode="bilinear", align_corners=False)
            rows[name] = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])[valid]
        return rows, labels.reshape(-1)[valid]


SAMPLE_ROWS = RowLayout()


class Distiller(nn.Module):
    """Owns the networks of one method and turns their logits into named loss terms.

    ``kind`` says which networks a run of the method needs: ``offline`` (a trained, frozen
    teacher and a student), ``online`` (networks that all train together), ``self`` and
    ``scratch`` (the student alone).
    """

    kind: ClassVar[str] = "offline"
    cacheable: ClassVar[bool] = True
    """Whether a frozen teacher's logits may come from a teacher-logit cache (False for
    methods that read its features)."""
    uses_index: ClassVar[bool] = False
    """Whether ``forward`` takes ``index=``, each sample's position in the training set."""

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        *,
        trainable: tuple[str, ...],
        deployed: str,
        layout: RowLayout | None = None,
    ) -> None:
        super().__init__()
        self.layout = layout or SAMPLE_ROWS
        if not networks:
            raise ValueError("a distiller needs at least one network")
        self.networks = nn.ModuleDict(dict(networks))
        for name in (*trainable, deployed):
            if name not in self.networks:
                raise ValueError(f"network {name!r} is not among {sorted(self.networks)}")
        self.trainable = tuple(trainable)
        self.deployed = deployed
        for name, net in self.networks.items():
            if name not in self.trainable:
                net.requires_grad_(False)
                net.eval()

    @property
    def frozen(self) -> tuple[str, ...]:
        """Networks that never train (e.g. an offline teacher)."""
        return tuple(n for n in self.networks if n not in self.trainable)

    def train(self, mode: bool = True) -> Distiller:
        """Set train/eval mode; frozen networks always stay in eval mode."""
        super().train(mode)
        for name in self.frozen:
            self.networks[name].eval()
        return self

    def prepare(self, batches: Iterable[tuple[Tensor, Tensor]]) -> None:
        """Called once before a new run's first step with every training image (not
        augmented) and its label, in batches; a method whose state is computed from the data
        (ND's class means) computes it here. Its state is then saved in checkpoints."""

    def extra_modules(self, network: str) -> list[nn.Module]:
        """Modules owned by the method that train with ``network`` (e.g. an auxiliary head)."""
        return []

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters per trainable network (each gets its own optimizer)."""
        groups: dict[str, list[nn.Parameter]] = {}
        for name in self.trainable:
            modules = [self.networks[name], *self.extra_modules(name)]
            groups[name] = [p for m in modules for p in m.parameters() if p.requires_grad]
        return groups

    def run_networks(
        self, inputs: Tensor, cached: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Each network's logits on ``inputs``, once; frozen networks without autograd.

        ``cached`` supplies frozen networks' logits computed earlier on exactly these inputs
        (a teacher-logit cache); those networks are then not run.
        """
        logits = {}
        for name, net in self.networks.items():
            if cached is not None and name in cached:
                if name in self.trainable:
                    raise ValueError(
                        f"network {name!r} trains, so its logits cannot come from a cache"
                    )
                logits[name] = cached[name]
            elif name in self.trainable:
                logits[name] = net(inputs)
            else:
                with torch.no_grad():
                    logits[name] = net(inputs)
        return logits

    def forward(
        self,
        inputs: Tensor,
        labels: Tensor,
        epoch: int = 0,
        cached: Mapping[str, Tensor] | None = None,
    ) -> DistillerOutput:
        """Run every network once (frozen ones from ``cached`` when given) and return logits
        and named loss terms."""
        raise NotImplementedError

    def as_rows(
        self, logits: Mapping[str, Tensor], labels: Tensor
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Per-row views for the objectives, as the task's :class:`RowLayout` makes them."""
        return self.layout.rows(logits, labels)

    @staticmethod
    def cross_entropy(rows: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy of logit rows (a zero that keeps the graph when there are none)."""
        if rows.shape[0] == 0:
            return rows.sum() * 0.0
        return F.cross_entropy(rows.float(), labels)


DISTILLERS: dict[str, type[Distiller]] = {}

STRUCTURAL = ("layout", "num_samples")
"""Constructor arguments the engine supplies from the run (not hyper-parameters): the
task's row layout, the number of training samples (for methods with per-sample memory)."""


def register_distiller(name: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator: make a Distiller selectable by ``name`` in :func:`create_distiller`."""

    def decorate(cls: type[Distiller]) -> type[Distiller]:
        if name in DISTILLERS:
            raise ValueError(f"distiller {name!r} is already registered")
        DISTILLERS[name] = cls
        return cls

    return decorate


def distiller_hparams(cls: type[Distiller]) -> dict[str, HParam]:
    """The declared keyword hyper-parameters of a distiller class (its ``__init__``)."""
    return declared(cls, skip=STRUCTURAL)


def default_deployed(names: list[str], deployed: str | None) -> str:
    """``deployed`` if given, else ``student`` when present, else the last network."""
    if deployed is not None:
        return deployed
    return "student" if "student" in names else names[-1]
