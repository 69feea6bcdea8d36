"""The import graph of the code: dependencies point one way, persona_assets -> partitions -> resources, and no
module imports itself back through others (imports inside functions count: they are how a cycle hides).
Every folder is installed under one namespace, persona_platform, and is imported through it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "persona_platform"
PACKAGES = ("persona_assets", "partitions", "resources")
LAYER = {name: rank for rank, name in enumerate(PACKAGES)}  # a module may import its own layer or a later one
FOLDERS = (*PACKAGES, "benchmarks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join([NAMESPACE, *(parts[:-1] if parts[-1] == "__init__" else parts)])


def layer(module: str) -> int:
    return LAYER[module.split(".")[1]]


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Our modules that ``path`` imports, anywhere in it; ``from a.b import c`` names a.b.c when that is a
    module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name in modules:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    modules = set(files)
    graph = {m: imports_of(p, modules) - {m} for m, p in files.items()}
    for module in graph:  # importing a.b.c runs a/__init__ and a/b/__init__ first
        graph[module] |= {
            parent for name in set(graph[module]) for parent in _parents(name) if parent in modules
        }
        graph[module].discard(module)
    return graph


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                found.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def test_dependencies_point_one_way():
    upward = sorted(
        f"{m} imports {t}" for m, targets in import_graph().items() for t in targets if layer(t) < layer(m)
    )
    assert upward == []


def test_no_import_cycles():
    graph = import_graph()
    # A package's __init__ importing its own submodules is how a package exposes them, not a cycle.
    graph = {
        m: {t for t in targets if not (t.startswith(m + ".") and m in _parents(t) + [m])}
        for m, targets in graph.items()
    }
    assert cycles(graph) == []


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert (
        "persona_platform.persona_assets.definitions" in graph["persona_platform.persona_assets.cli"]
    )  # imported inside command_run
