"""The package's layers import one way only (issue 13): each module imports distrib modules of
its own layer or of layers below it, never above."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "distrib"

#: Bottom to top. A module's layer is its first match (a folder names a whole layer).
LAYERS = [
    ("base", {"distrib._version", "distrib.errors", "distrib.config", "distrib.files"}),
    ("data", {"distrib.data"}),
    ("linear", {"distrib.linear"}),
    ("parallel", {"distrib.parallel"}),
    ("estimator", {"distrib.estimator"}),
    ("report", {"distrib.report"}),
    ("run", {"distrib.run"}),
    ("bench", {"distrib.bench"}),
    ("cli", {"distrib.cli", "distrib.__main__", "distrib"}),
]


def _layer(module: str) -> int:
    for depth in range(module.count(".") + 1, 0, -1):
        prefix = ".".join(module.split(".")[:depth])
        for index, (_, names) in enumerate(LAYERS):
            if prefix in names:
                return index
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "distrib"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} if node.module.split(".")[0] == "distrib" else set()
    return found


def test_every_module_imports_only_its_layer_or_lower_ones() -> None:
    upward = []
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 20
    for path in modules:
        name = _module_name(path)
        if name == "distrib":  # the package's front door re-exports the public API
            continue
        for imported in _imports(path):
            if _layer(imported) > _layer(name):
                upward.append(
                    f"{name} ({LAYERS[_layer(name)][0]}) imports {imported} "
                    f"({LAYERS[_layer(imported)][0]})"
                )
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_the_layers_cover_every_module() -> None:
    for path in PACKAGE.rglob("*.py"):
        _layer(_module_name(path))  # raises for a module outside every layer


def _listed_in_architecture() -> set[str]:
    """The modules that ARCHITECTURE.md's layout names, as paths under ``distrib/``."""
    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    listed, folder = set(), None
    for line in block.splitlines():
        if line.startswith("distrib/"):
            folder = ""
            continue
        if folder is None or (line and not line.startswith(" ")):
            folder = None  # scripts/, docker/, tests/: not the package
            continue
        entry = line.strip()
        if line.startswith("  ") and not line.startswith("   "):  # a folder, or top files
            head = entry.split()[0]
            folder = head if head.endswith("/") else ""
        listed |= {folder + name for name in re.findall(r"\b(\w+\.py)\b", line)}
    return listed


def test_architecture_lists_every_module_and_no_other() -> None:
    """A newcomer finds each module in ARCHITECTURE.md's layout, with its job."""
    modules = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if not (path.name == "__init__.py" and path.parent != PACKAGE)  # package markers
    }
    listed = _listed_in_architecture()
    assert len(modules) > 40
    assert sorted(modules - listed) == [], "modules ARCHITECTURE.md's layout does not list"
    assert sorted(listed - modules) == [], "ARCHITECTURE.md lists modules that are gone"


def _import_graph() -> dict[str, set[str]]:
    """Module -> the distrib modules it imports, at module level or inside functions."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found |= {m for m in (node.module, *(f"{node.module}.{a.name}" for a in node.names))
                          if m in modules}  # fmt: skip
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in modules}
        graph[name] = found - {name, "distrib"}  # the front door re-exports; nothing imports it
    return graph


def test_no_module_imports_itself_through_others() -> None:
    graph = _import_graph()
    circles = []

    def visit(module: str, path: list[str]) -> None:
        for imported in sorted(graph[module]):
            if imported in path:
                circles.append(" -> ".join([*path[path.index(imported) :], imported]))
            elif imported not in done:
                visit(imported, [*path, imported])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_classes_and_functions_stay_readable_sizes() -> None:
    """No class over 300 lines; at most 3 functions over 80 (the kernels, the solver and the
    report's one pass over its files may be among them)."""
    big_classes, long_functions = [], []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            size = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            where = f"{_module_name(path)}.{getattr(node, 'name', '')} ({size} lines)"
            if isinstance(node, ast.ClassDef) and size > 300:
                big_classes.append(where)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and size > 80:
                long_functions.append(where)
    assert big_classes == []
    assert len(long_functions) <= 3, long_functions
