"""Objects named by import paths (``package.module:attribute``) in configs, and who may name them.

A config may name a user's own model factory or dataset factory by import path. Importing a
module runs its code, so the rule is about where the config comes from, not what it names:

- a config the user gives (on the command line, or to the Python API) is the user's own, like
  a script: its import paths are honoured, whatever module they name;
- a config read back from a run directory or a checkpoint (``bdkd eval RUN``, ``bdkd export
  RUN``, ``bdkd train --resume RUN``) may have been made by someone else: it may name only
  registered objects (the zoo's models, the registered datasets, ``timm:`` / ``torchvision:``
  architectures), unless the user consents with ``--trust-code`` or ``BDKD_TRUST_CODE=1``. The
  refusal names the key and the import path.

Modules are imported from ``PYTHONPATH`` and installed packages only: neither the working
directory nor a run's directory is ever added to the import path (``PYTHONPATH=. bdkd ...``
makes the working directory importable, on purpose).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

SEPARATOR = ":"
TRUST_ENV = "BDKD_TRUST_CODE"
LIBRARY_PREFIXES = ("timm", "torchvision")

__all__ = [
    "TRUST_ENV",
    "UntrustedCode",
    "code_trusted",
    "is_import_path",
    "load_object",
    "refuse_untrusted",
]


class UntrustedCode(ValueError):
    """An import path in a config that was read back from a run directory or checkpoint."""


def is_import_path(name: str) -> bool:
    """Whether ``name`` is ``module:attribute`` (and not ``timm:`` / ``torchvision:``)."""
    module, sep, attr = name.partition(SEPARATOR)
    return bool(sep and module and attr) and module not in LIBRARY_PREFIXES


def code_trusted(flag: bool = False) -> bool:
    """Whether the user consents to code named by configs read back from runs: ``flag``
    (``--trust-code``) or ``BDKD_TRUST_CODE`` set to anything but ``0``."""
    return bool(flag) or os.environ.get(TRUST_ENV, "") not in ("", "0")


def refuse_untrusted(key: str, value: str, source: str) -> None:
    """Refuse import path ``value`` under ``key`` of a config read back from ``source``."""
    if is_import_path(value):
        raise UntrustedCode(
            f"config key {key!r} of {source} names code ({value!r}); a config read back from a "
            "run directory or checkpoint may name only registered objects (bdkd methods lists "
            "them). If you trust whoever made it, pass --trust-code (or set BDKD_TRUST_CODE=1)"
        )


def load_object(path: str, *, what: str = "factory") -> Callable:
    """The callable named by ``module:attribute`` (dotted attributes allowed); one-line
    errors for a module that cannot be imported (missing, or raising on import, e.g. a syntax
    error) and for an attribute that is missing or not callable."""
    module_name, _, attr = path.partition(SEPARATOR)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ImportError(
            f"{what} {path!r}: cannot import {module_name!r} ({err}); it must be importable from "
            "PYTHONPATH or an installed package (the working directory is not searched: "
            "PYTHONPATH=. makes it so)"
        ) from err
    except Exception as err:  # the module's own code failed: SyntaxError, an exception, ...
        detail = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"
        raise ImportError(f"{what} {path!r}: importing {module_name!r} failed ({detail})") from err
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {path!r}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{what} {path!r}: {attr!r} is not callable")
    return obj
