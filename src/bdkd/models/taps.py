"""Features from any network, by forward hooks on named modules.

A feature method (FitNet, AT, SP, RKD, PKT, CRD, ReviewKD, ND) reads the outputs of some of
a network's modules. :func:`attach_taps` gives the network ``forward_with_taps(x) ->
(features, logits)``: one forward pass, the named modules' outputs captured by hooks on the
way. A name is a submodule path (``layer2``, ``blocks.3``, ``head.fc``) for its output, or
``path:in`` for its input (``classifier:in`` is the embedding a linear classifier reads).
The model object, its parameters and its state dict stay as they are, so weights load,
save and export unchanged; the hooks only listen inside ``forward_with_taps``.

Zoo models declare ``feature_stages`` (their stage modules, shallow to deep); a method that
asks for ``middle``, ``last``, ``stages``, ``embedding`` or ``review`` features of a zoo
model gets them without configuration (:func:`default_taps`). Any other model names its
modules in ``networks.<name>.features``.
"""

from __future__ import annotations

import difflib
import types

import torch
from torch import Tensor, nn

__all__ = ["EMBEDDING", "FEATURE_USES", "TapError", "attach_taps", "default_taps"]

EMBEDDING = "classifier:in"
FEATURE_USES = ("middle", "last", "stages", "embedding", "review")
"""What a method reads: the middle stage (FitNet), the last stage (SP), every stage (AT),
the classifier's input (RKD, PKT, CRD, ND), every stage and the embedding (ReviewKD)."""


class TapError(ValueError):
    """A feature name that names no module, or a module that gives no tensor."""


def default_taps(model: nn.Module, use: str) -> list[str]:
    """The module names a method reading ``use`` features takes from a zoo model."""
    if use not in FEATURE_USES:
        raise ValueError(f"feature use must be one of {list(FEATURE_USES)}, got {use!r}")
    stages = list(getattr(model, "feature_stages", ()) or ())
    if use == "embedding":
        return [EMBEDDING] if isinstance(getattr(model, "classifier", None), nn.Module) else []
    if not stages:
        return []
    if use == "middle":
        return [stages[len(stages) // 2]]
    if use == "last":
        return [stages[-1]]
    if use == "review":
        return [*stages, EMBEDDING]
    return stages


def _split(name: str) -> tuple[str, bool]:
    path, _, side = name.partition(":")
    if side not in ("", "in"):
        raise TapError(f"feature {name!r}: after ':' only 'in' (the module's input) is allowed")
    return path, side == "in"


def attach_taps(model: nn.Module, names: list[str], probe: Tensor) -> list[tuple[int, ...]]:
    """Give ``model`` ``forward_with_taps(x) -> (list of features, logits)`` reading modules
    ``names`` (in that order) and return each feature's shape without the batch dimension,
    measured on ``probe`` (and ``num_classes`` from its logits, when the model has none). A
    name that is not a submodule is a :class:`TapError` listing the closest module names."""
    modules = dict(model.named_modules())
    slots: list[list[Tensor]] = [[] for _ in names]
    listening = [False]
    for i, name in enumerate(names):
        path, wants_input = _split(name)
        if path not in modules or not path:
            close = difflib.get_close_matches(path, [n for n in modules if n], n=5, cutoff=0.3)
            some = close or [n for n in modules if n and "." not in n][:8]
            raise TapError(f"feature {name!r} is not a module of the network; closest: {some}")

        def capture(value: object, i: int = i) -> None:
            if listening[0] and isinstance(value, Tensor):
                slots[i].append(value)

        if wants_input:
            modules[path].register_forward_pre_hook(lambda m, args, i=i: capture(args[0], i))
        else:
            modules[path].register_forward_hook(lambda m, args, out, i=i: capture(out, i))

    def forward_with_taps(self: nn.Module, x: Tensor) -> tuple[list[Tensor], Tensor]:
        for slot in slots:
            slot.clear()
        listening[0] = True
        try:
            logits = self(x)
        finally:
            listening[0] = False
        missing = [n for n, slot in zip(names, slots, strict=True) if not slot]
        if missing:
            raise TapError(f"feature module(s) {missing} did not run in the forward pass")
        features = [slot[-1] for slot in slots]
        for slot in slots:
            slot.clear()
        return features, logits

    model.forward_with_taps = types.MethodType(forward_with_taps, model)
    model.tap_names = list(names)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            features, logits = model.forward_with_taps(probe)
    finally:
        model.train(was_training)
    if not isinstance(getattr(model, "num_classes", None), int):
        model.num_classes = int(logits.shape[1])
    return [tuple(f.shape[1:]) for f in features]
