"""The house rules, checked on the source of all four packages (docs/CONTRACTS.md):

- arrows point one way: ``chammi_cli -> {pipelines, chammi_models} -> chammi_data``; ``chammi_data`` imports
  none of the others, ``pipelines`` and ``chammi_models`` are siblings that never import each other, and only
  the command-line layer ``chammi_cli`` imports both (a package's ``__main__.py`` is an entry point and may
  import ``chammi_cli``);
- inside a package, its subpackages (and top-level modules) stand in layers (:data:`LAYERS`): a module imports
  only from its own layer and the layers below;
- no module imports a private (``_name``) object from another module;
- no import cycles inside a package (imports inside functions included);
- a module is at most 500 lines of ruff-formatted code (the formatter spreads arguments one per line, about
  20% more lines than the dense style the earlier 400-line rule counted), unless its docstring says why it is
  longer ("longer than 500 lines").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("chammi_cli", "chammi_data", "chammi_models", "pipelines")
MODULES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "_manifests" not in p.parts)
MAX_LINES = 500
LONG_REASON = "longer than 500 lines"


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import statement in the file, at any depth."""
    here = _name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = node.module or ""
            full = (f"{base}.{module}" if module else base) if node.level else module
            out.append((full, [alias.name for alias in node.names]))
    return out


#: packages each package may import
ALLOWED = {
    "chammi_data": {"chammi_data"},
    "pipelines": {"pipelines", "chammi_data"},
    "chammi_models": {"chammi_models", "chammi_data"},
    "chammi_cli": set(PACKAGES),
}

#: the layers inside each package, bottom first: a module of one layer imports only its own layer and lower
#: ones (the package's ``__init__`` and ``__main__`` are entry points above every layer)
LAYERS = {
    "chammi_data": [
        {"errors", "progress"},
        {"store"},
        {"format"},
        {"augment"},
        {"loading"},
        {"interop"},
        {"evaluation"},
    ],
    "pipelines": [{"steps"}, {"sources"}, {"engine"}],
    "chammi_models": [{"zoo"}, {"embed", "benchmark_embed"}, {"training"}],
}


def _layer(module: str) -> int | None:
    """The layer of a dotted module name inside its package (None: the package itself or an entry point)."""
    parts = module.split(".")
    if len(parts) < 2 or parts[0] not in LAYERS or parts[1] in ("__init__", "__main__"):
        return None
    if not (ROOT / parts[0] / parts[1]).is_dir() and not (ROOT / parts[0] / f"{parts[1]}.py").is_file():
        return None  # a name the package itself exports (chammi_models.create_model): its entry point
    for level, names in enumerate(LAYERS[parts[0]]):
        if parts[1] in names:
            return level
    raise AssertionError(f"{module}: {parts[1]} is in no layer of {parts[0]} (tests/test_layering.py LAYERS)")


@pytest.mark.parametrize(
    "path", [p for p in MODULES if p.parts[-1] not in ("__init__.py", "__main__.py")] + []
)
def test_layers_inside_each_package(path: Path) -> None:
    here = _name(path)
    mine = _layer(here)
    if mine is None:
        return
    for module, names in _imports(path):
        if module.split(".")[0] != here.split(".")[0]:
            continue
        # `from chammi_data import progress` names the module in `names`; `from chammi_data.store.x import y`
        # in `module`
        targets = [f"{module}.{n}" for n in names] if module.count(".") == 0 else [module]
        for target in targets:
            theirs = _layer(target) if target.split(".")[1:2] != ["__version__"] else None
            assert theirs is None or theirs <= mine, (
                f"{here} (layer {mine}) imports {target} (layer {theirs}): a lower layer may not import a "
                "higher one (docs/CONTRACTS.md)"
            )


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_rules(path: Path) -> None:
    rel = path.relative_to(ROOT)
    package = rel.parts[0]
    entry_point = rel.name == "__main__.py"
    for module, names in _imports(path):
        top = module.split(".")[0]
        if top in PACKAGES and top not in ALLOWED[package]:
            assert top == "chammi_cli" and entry_point, f"{rel}: {package} may not import {module}"
        if top in PACKAGES:
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{rel}: imports private name(s) {private} from {module}"
    text = path.read_text()
    doc = ast.get_docstring(ast.parse(text)) or ""
    lines = len(text.splitlines())
    assert lines <= MAX_LINES or LONG_REASON in doc, f"{rel} has {lines} lines and its docstring says not why"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles(package: str) -> None:
    mods = [p for p in MODULES if p.relative_to(ROOT).parts[0] == package]
    known = {_name(p) for p in mods}
    graph: dict[str, set[str]] = {}
    for path in mods:
        deps = set()
        for module, names in _imports(path):
            for target in [module, *(f"{module}.{n}" for n in names)]:
                if target in known and target != package:
                    deps.add(target)
        graph[_name(path)] = deps

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(node) :], node]))
        for dep in sorted(graph.get(node, ())):
            visit(dep, [*trail, node])

    for start in sorted(graph):
        visit(start, [])
