"""The import graph, read from the source: no cycle, and the layers point one way.

Every import counts, at module level or inside a function (a lazy import is still an edge);
imports under `if TYPE_CHECKING:` do not (they never run), nor do packages' __init__ files
(front doors that load their modules lazily). Layers: memoir_core imports neither
app, memoir_cli nor memoir_vllm (the vLLM plugin sits on top of the core, beside app); app does not import memoir_cli; inside app, the service (app.service) never
imports the HTTP shell (app.http), and app.settings, read by both, imports neither.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("memoir_core", "app", "memoir_cli", "memoir_vllm")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def graph() -> dict[str, set[str]]:
    files = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    edges = {}
    for name, path in files.items():
        targets = _imports(ast.parse(path.read_text(), str(path)), name, path.name == "__init__.py")
        # `from pkg import module` names pkg too, and importing a.b runs a/__init__: the packages'
        # front doors are left out (they import their modules lazily or not at all)
        edges[name] = {t for t in targets if t in files and t != name and files[t].name != "__init__.py"}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_the_layers_point_one_way():
    wrong = [(m, t) for m, ts in graph().items() for t in ts
             if (m.startswith("memoir_core") and t.split(".")[0] in ("app", "memoir_cli", "memoir_vllm"))
             or (m.startswith("memoir_vllm") and t.split(".")[0] in ("app", "memoir_cli"))
             or (m.startswith("app") and t.startswith("memoir_cli"))]
    assert wrong == []


def reached(edges: dict[str, set[str]], start: set[str]) -> set[str]:
    """Every module that importing `start` loads, lazily or not."""
    reach, todo = set(), list(start)
    while todo:
        for t in edges[todo.pop()]:
            if t not in reach:
                reach.add(t)
                todo.append(t)
    return reach


def test_the_memory_sits_below_the_facade():
    below = {"memoir_core.memorystate", "memoir_core.state", "memoir_core.replica"}
    assert "memoir_core.memoir" not in reached(graph(), below)


def test_the_service_never_imports_the_http_shell():
    edges = graph()
    service = [m for m in edges if m.startswith("app.service.")]
    assert "app.service.engine" in service and "app.http.main" in edges  # the split is there to check
    wrong = [(m, t) for m in service for t in edges[m] if t.startswith("app.http")]
    assert wrong == []
    assert not {t for t in edges["app.settings"] if t.startswith(("app.service", "app.http"))}


def test_the_server_does_not_import_the_app():
    """app.http.server runs whatever app factory it is given: importing app.http.main there would
    close the main <-> server cycle again."""
    assert "app.http.main" not in reached(graph(), {"app.http.server"})
