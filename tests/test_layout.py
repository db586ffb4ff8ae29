"""The shape of the code, checked: layers one way, no import circles, no file over 600 lines
and no function over 80, no module using another's private names, no task-name branches
outside engine/tasks.py (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "bdkd"
TASK_NAMES = {"classification", "segmentation", "next_token"}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


MODULES = modules()


def imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every bdkd import of a module,
    at any depth (function-level imports count)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(parts + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            if target.startswith("bdkd"):
                found.append((target, names, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("bdkd")]
    return found


def dependencies(name: str, path: Path) -> set[str]:
    """The bdkd modules ``name`` imports (a submodule importing its own package is not a
    dependency: that is how packages initialise)."""
    deps = set()
    for target, names, _ in imports(name, path):
        for candidate in [target, *(f"{target}.{n}" for n in names)]:
            if candidate in MODULES and candidate != name and not name.startswith(candidate + "."):
                deps.add(candidate)
    return deps


def unit(module: str) -> str:
    """The layer a module belongs to: ``bdkd.engine.loop`` -> ``engine``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "bdkd"


# Each layer and what it may import (besides itself); docs/ARCHITECTURE.md draws the same.
ALLOWED = {
    "hparams": set(),
    "divergences": {"hparams"},
    "losses": {"divergences", "hparams"},
    "distillers": {"losses", "divergences", "hparams"},
    "calibration": set(),
    "files": set(),
    "plugins": set(),
    "models": {"files", "plugins", "hparams"},
    "data": {"files", "plugins"},
    "config": {"distillers", "hparams", "plugins", "models", "data"},
    "report": {"calibration", "files"},
    "calibrate": {"calibration", "files", "report"},
    "shipped": {"config"},
    "stats": set(),
}
LOW = set(ALLOWED)
ALLOWED["engine"] = LOW | {"bdkd"}
ALLOWED["deploy"] = LOW | {"engine", "bdkd"}
ALLOWED["llm"] = LOW | {"engine", "deploy", "bdkd"}
ALLOWED["tune"] = LOW | {"engine", "deploy", "llm", "bdkd"}
ALLOWED["demo"] = LOW | {"engine", "deploy", "bdkd"}
ALLOWED["reference"] = LOW | {"engine", "llm", "bdkd"}
ALLOWED["api"] = LOW | {"engine", "deploy", "llm", "shipped", "bdkd"}
ALLOWED["cli"] = set(ALLOWED) | {"bdkd", "shipped"}
ALLOWED["bdkd"] = {"cli", "api"}
ALLOWED["__main__"] = {"cli"}


def test_layers_point_one_way():
    wrong = []
    for name, path in MODULES.items():
        own = unit(name)
        allowed = ALLOWED.get(own)
        assert allowed is not None, f"{name}: add its layer to ALLOWED (and to ARCHITECTURE.md)"
        for dep in dependencies(name, path):
            if unit(dep) != own and unit(dep) not in allowed:
                wrong.append(f"{name} imports {dep}")
    assert not wrong, "\n".join(wrong)


def test_no_import_circles():
    graph = {name: dependencies(name, path) for name, path in MODULES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, circles


def test_no_module_takes_another_modules_private_names():
    wrong = [
        f"{name}:{line} takes {target}.{n}"
        for name, path in MODULES.items()
        for target, names, line in imports(name, path)
        for n in names
        if n.startswith("_") and not n.startswith("__") and target != name
    ]
    assert not wrong, wrong


def test_files_and_functions_stay_short():
    long_files, long_functions = [], []
    for name, path in MODULES.items():
        text = path.read_text()
        if len(text.splitlines()) > 600:
            long_files.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    long_functions.append(f"{name}.{node.name}: {length} lines")
    assert not long_files and not long_functions, long_files + long_functions


def test_task_names_are_compared_only_in_engine_tasks():
    wrong = []
    for name, path in MODULES.items():
        if name == "bdkd.engine.tasks":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                values = [node.left, *node.comparators]
                for v in values:
                    names = set()
                    if isinstance(v, ast.Constant):
                        names = {v.value}
                    elif isinstance(v, ast.Tuple | ast.List | ast.Set):
                        names = {e.value for e in v.elts if isinstance(e, ast.Constant)}
                    if names & TASK_NAMES:
                        wrong.append(f"{name}:{node.lineno}")
    assert not wrong, wrong
