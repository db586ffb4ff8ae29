"""Objects named by import paths (``package.module:attribute``) in configs.

A config may name a user's own model factory or dataset factory by import path. Importing a
module runs its code, so a config that names an import path is trusted like a script.
Modules of Python's standard library and of a few packages whose callables download or run
things (:data:`REFUSED`) are refused (a config cannot name ``subprocess:run``, ``os:system``
or ``torch.hub:load``), and the working directory is importable, as when running a script
there.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

SEPARATOR = ":"
REFUSED = ("torch", "numpy", "pip", "setuptools")
"""Top-level packages besides the standard library whose callables run downloads, pickles
or commands (``torch.hub:load``); a model or dataset factory is never one of them."""


def is_import_path(name: str) -> bool:
    """Whether ``name`` is ``module:attribute`` (and not ``timm:`` / ``torchvision:``)."""
    module, sep, attr = name.partition(SEPARATOR)
    return bool(sep and module and attr) and module not in ("timm", "torchvision")


def load_object(path: str, *, what: str = "factory") -> Callable:
    """The callable named by ``module:attribute`` (dotted attributes allowed)."""
    module_name, _, attr = path.partition(SEPARATOR)
    top = module_name.split(".")[0]
    if (
        top in getattr(sys, "stdlib_module_names", ())
        or top in sys.builtin_module_names
        or top in REFUSED
    ):
        raise ValueError(
            f"{what} {path!r}: modules of Python's standard library and of {list(REFUSED)} are "
            "not allowed here; name a function or class of your own package"
        )
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(
            f"{what} {path!r}: cannot import {module_name!r} ({err}); it must be importable from "
            "the working directory or PYTHONPATH"
        ) from None
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {path!r}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{what} {path!r}: {attr!r} is not callable")
    return obj
