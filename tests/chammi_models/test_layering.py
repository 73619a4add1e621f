"""Package rules checked on the source: who may import pipelines, no private names across modules, no
import cycles inside chammi_models (function-level imports included), and files short enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "chammi_models"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 400


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
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


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_rules(path: Path) -> None:
    in_cli = "cli" in path.relative_to(PACKAGE).parts
    for module, names in _imports(path):
        if module.split(".")[0] == "pipelines":
            assert in_cli, f"{path}: only chammi_models/cli/ may import pipelines (imports {module})"
        if module.startswith("chammi_models"):
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{path}: imports private name(s) {private} from {module}"
    assert len(path.read_text().splitlines()) <= MAX_LINES, f"{path} is longer than {MAX_LINES} lines"


def test_no_import_cycles() -> None:
    known = {_name(p) for p in MODULES}
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        deps = set()
        for module, names in _imports(path):
            for target in [module, *(f"{module}.{n}" for n in names)]:
                if target in known and target != "chammi_models":
                    deps.add(target)
        graph[_name(path)] = deps

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(node):], node]))
        for dep in sorted(graph.get(node, ())):
            visit(dep, [*trail, node])

    for start in sorted(graph):
        visit(start, [])
