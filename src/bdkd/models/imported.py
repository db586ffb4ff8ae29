"""Users' own models: ``package.module:factory`` import paths, features by forward hooks.

``create_imported("mypkg.nets:build_resnet", num_classes, **kwargs)`` imports ``mypkg.nets``
(from ``PYTHONPATH`` or an installed package, never implicitly from the working directory),
calls ``build_resnet(**kwargs)`` (adding ``num_classes`` when the factory takes it) and returns
the module, which must map images to logits. Importing a module runs its code: a config the
user gives is trusted like a script, and one read back from a run directory or checkpoint is
refused before this point unless the user passes ``--trust-code`` (:mod:`bdkd.plugins`).

:func:`attach_feature_layer` gives any network the ``forward_with_features`` that USKD
needs: the output of a named layer (global-average pooled when it is (N, C, H, W)) captured
by a forward hook while the network computes its logits once.
"""

from __future__ import annotations

import inspect

from torch import Tensor, nn

from bdkd.plugins import is_import_path, load_object

__all__ = ["attach_feature_layer", "create_imported", "is_import_path", "load_object"]


def create_imported(path: str, num_classes: int, **kwargs: object) -> nn.Module:
    """Build the network of import path ``path``; ``num_classes`` is passed when the factory
    accepts it (a parameter of that name, or ``**kwargs``) and not already given."""
    factory = load_object(path)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes = "num_classes" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
    if takes and "num_classes" not in kwargs:
        kwargs = {**kwargs, "num_classes": num_classes}
    try:
        model = factory(**kwargs)
    except Exception as err:  # the user's own code: any exception is one line
        first = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(
            f"model {path!r}: calling it with {sorted(kwargs)} failed ({type(err).__name__}: "
            f"{first}); BDKD_TRACEBACK=1 shows where"
        ) from err
    if not isinstance(model, nn.Module):
        raise TypeError(f"model {path!r} returned {type(model).__name__}, not a torch nn.Module")
    return model


def attach_feature_layer(model: nn.Module, layer: str, probe: Tensor) -> nn.Module:
    """Give ``model`` a ``forward_with_features(x) -> (feature, logits)`` whose feature is
    the output of submodule ``layer`` (pooled over H, W when 4-D), captured by a forward
    hook while the logits are computed once; ``feature_dim`` (and ``num_classes``, when the
    model has none) is measured on ``probe``.

    The model object, its parameters and its state dict stay as they are (no wrapper), so
    weights load, save and export unchanged.
    """
    import types

    import torch

    modules = dict(model.named_modules())
    if layer not in modules:
        names = [n for n in modules if n][:20]
        raise ValueError(f"feature layer {layer!r} is not a submodule; some names: {names}")
    captured: list[Tensor] = []  # filled only inside forward_with_features
    listening = [False]

    def capture(module: nn.Module, inputs: object, output: object) -> None:
        if listening[0] and isinstance(output, Tensor):
            captured.append(output)

    def forward_with_features(self: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        captured.clear()
        listening[0] = True
        try:
            logits = self(x)
        finally:
            listening[0] = False
        if not captured:
            raise RuntimeError(f"feature layer {layer!r} did not run in the forward pass")
        feature = captured[-1]
        captured.clear()
        feature = feature.mean(dim=(2, 3)) if feature.dim() == 4 else feature.flatten(1)
        return feature, logits

    modules[layer].register_forward_hook(capture)
    model.forward_with_features = types.MethodType(forward_with_features, model)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        feature, logits = model.forward_with_features(probe)
    model.train(was_training)
    model.feature_dim = int(feature.shape[1])
    if not isinstance(getattr(model, "num_classes", None), int):
        model.num_classes = int(logits.shape[-1])
    captured.clear()
    return model
