"""Users' own weights: plain state dicts from ``.pt``/``.pth`` (read with
``weights_only=True``) or ``.safetensors``, with key prefixes stripped or mapped.

Checkpoints written by training scripts often wrap the state dict (``{"state_dict": ...}``,
``{"model": ...}``) or carry a ``module.`` prefix from DataParallel; :func:`read_state_dict`
unwraps the first and ``strip_prefix`` / ``rename`` handle the second. A state dict that does
not fit is reported in one message: the missing keys, the unexpected keys and the shape
differences, each list shortened when long.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from bdkd.files import UnreadableFile, safe_torch_load

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "module", "weights")


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit the network."""


def _is_tensor_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file, or the state dict inside a ``.pt``/``.pth``
    file (unwrapping ``state_dict``/``model``/... when the file holds a training checkpoint);
    never runs code from the file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError(
                "reading .safetensors needs the package safetensors: pip install safetensors"
            ) from None
        try:
            return dict(load_file(str(path)))
        except Exception as err:  # safetensors raises its own error types
            raise WeightsError(
                f"weights file {path} is not a readable safetensors file ({err})"
            ) from None
    try:
        obj = safe_torch_load(path)
    except UnreadableFile as err:
        raise WeightsError(f"weights file {err}") from None
    if _is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if _is_tensor_dict(obj.get(key)):
                return dict(obj[key])
        if "networks" in obj and "config" in obj:
            raise WeightsError(
                f"{path} is a bdkd checkpoint: use networks.<name>.checkpoint for it, not weights"
            )
    raise WeightsError(
        f"weights file {path} holds no state dict (a mapping of names to tensors, possibly under "
        f"one of {list(WRAPPER_KEYS)})"
    )


def rename_keys(
    state: Mapping[str, Tensor],
    *,
    strip_prefix: str | None = None,
    rename: Mapping[str, str] | None = None,
) -> dict[str, Tensor]:
    """Drop ``strip_prefix`` from keys that start with it, then replace each leading
    ``old`` of ``rename`` by ``new`` (the longest matching prefix wins)."""
    out = {}
    mapping = sorted((rename or {}).items(), key=lambda kv: -len(kv[0]))
    for key, value in state.items():
        if strip_prefix and key.startswith(strip_prefix):
            key = key[len(strip_prefix) :]
        for old, new in mapping:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


def _short(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def load_into(
    model: nn.Module, state: Mapping[str, Tensor], where: str, *, strict: bool | str = True
) -> list[str]:
    """Load ``state`` into ``model``; a mismatch is one message listing the missing and
    unexpected keys and the shape differences. With ``strict=False`` (a pre-trained backbone
    under a new head) missing and unexpected keys are allowed and returned as notes, shape
    differences are still errors, and at least one key must load (a file that matches none
    would leave the network as it was, e.g. a random frozen teacher): ``strict="none-ok"``
    accepts even that."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if strict is not True and not set(own) & set(state) and strict != "none-ok":
        raise WeightsError(
            f"{where} matches none of the network's keys (file: {_short(sorted(state), 3)}; "
            f"network: {_short(sorted(own), 3)}), so nothing would load; strip or rename a "
            "prefix (weights_prefix / weights_map), or set weights_strict: none-ok to accept it"
        )
    if strict is not True and not shapes:
        with torch.no_grad():
            model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        notes = []
        if missing:
            notes.append(
                f"{len(missing)} keys of the network are not in the file: {_short(missing)}"
            )
        if unexpected:
            notes.append(
                f"{len(unexpected)} keys of the file are not in the network: {_short(unexpected)}"
            )
        return notes
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_short(unexpected)}")
        if shapes:
            parts.append(f"shape differences, file vs network ({len(shapes)}): {_short(shapes)}")
        hint = ""
        if unexpected and missing:
            hint = " (a key prefix to strip or rename? see weights_prefix / weights_map)"
        raise WeightsError(f"{where} does not fit the network: " + "; ".join(parts) + hint)
    with torch.no_grad():
        model.load_state_dict(dict(state), strict=True)
    return []


def load_weights(
    model: nn.Module,
    path: str | Path,
    *,
    strip_prefix: str | None = None,
    rename: Mapping[str, str] | None = None,
    strict: bool | str = True,
) -> list[str]:
    """Read ``path`` (see :func:`read_state_dict`), map its keys and load it into ``model``;
    returns the notes of a non-strict load (keys left as they were, keys not used)."""
    state = rename_keys(read_state_dict(path), strip_prefix=strip_prefix, rename=rename)
    native = getattr(model, "from_native", None)
    own = model.state_dict()
    if native is not None and not set(state) & set(own):
        # a timm/torchvision state dict in those libraries' own names (conv1.weight, fc.bias)
        state = native(state)
    return load_into(model, state, f"weights file {path}", strict=strict)
