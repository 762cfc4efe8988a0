"""The memory's state has one owner: only memoir_core/memorystate.py changes a Memory's fields.

Read from the source with `ast`, over the packages that ship (memoir_core, app, memoir_cli,
benchmarks): an assignment to one of the fields (`x.bank = `, `x.edits[i] = `, `del x.edits[i]`,
`x.version += 1`), or a mutating call on one (`x.weights.load(...)`, `x.keybank.add(...)`,
`x._routes.clear()`), is allowed on `self` inside memorystate.py only. Elsewhere `self` counts
too inside the façade's classes (Memoir and its Routing mixin), whose fields these used to be;
other classes' own same-named fields (a store's `self.version`) are theirs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("memoir_core", "app", "memoir_cli", "benchmarks")
OWNER = ROOT / "memoir_core" / "memorystate.py"
FACADE = {"Memoir", "Routing"}
FIELDS = {"weights", "bank", "keybank", "edits", "guard", "routes", "_routes", "_subjects", "version"}
# `version` is also an EditRecord's and a store's field: only a memory-like receiver counts for it
MEMORY_NAMES = {"memoir", "memory", "m", "mem", "replica"}
COMMAND_LINES = {"args"}  # argparse namespaces (a benchmark's --edits)
MUTATORS = {"add", "remove", "load", "subtract", "clear", "pop", "popitem", "update", "setdefault", "zero_",
            "copy_", "index_copy_", "fill_", "add_", "sub_", "__setitem__", "__delitem__"}


def _receiver(node: ast.AST) -> str:
    """The last name of a receiver expression: `self`, `memoir`, `engine.memoir` -> `memoir`."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _field(node: ast.AST) -> ast.Attribute | None:
    """The `x.field` a target or call chain reaches (through subscripts and attributes)."""
    while isinstance(node, (ast.Subscript, ast.Attribute)):
        if isinstance(node, ast.Attribute) and node.attr in FIELDS:
            return node
        node = node.value
    return None


class Finder(ast.NodeVisitor):
    def __init__(self, label: str):
        self.label, self.classes, self.found = label, [], []

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.classes.append(node.name)
        self.generic_visit(node)
        self.classes.pop()

    def _check(self, node: ast.AST, at: ast.AST) -> None:
        attr = _field(node)
        if attr is None:
            return
        who = _receiver(attr.value)
        if who in COMMAND_LINES:
            return
        if attr.attr == "version" and who not in MEMORY_NAMES and not (who == "self" and self._facade()):
            return
        if who == "self" and not self._facade():
            return
        self.found.append(f"{self.label}:{at.lineno}: {ast.unparse(at).splitlines()[0]}")

    def _facade(self) -> bool:
        return bool(self.classes) and self.classes[-1] in FACADE

    def _targets(self, targets, at) -> None:
        for t in targets:
            for node in (t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t]):
                self._check(node, at)

    def visit_Assign(self, node: ast.Assign) -> None:
        self._targets(node.targets, node)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._targets([node.target], node)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self._targets([node.target], node)
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        self._targets(node.targets, node)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS:
            self._check(node.func.value, node)
        self.generic_visit(node)


def writes(path: Path, label: str | None = None) -> list[str]:
    finder = Finder(label or str(path.relative_to(ROOT)))
    finder.visit(ast.parse(path.read_text(), str(path)))
    return finder.found


def test_only_the_memory_changes_its_fields():
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path != OWNER:
                found += writes(path)
    assert not found, "the memory's fields are changed outside memoir_core/memorystate.py:\n" + "\n".join(found)


def test_the_check_sees_each_kind_of_write(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f(memoir, rec, store):\n"
        "    memoir.bank = None\n"
        "    memoir.edits['a'] = rec\n"
        "    del memoir.edits['a']\n"
        "    memoir.memory.version += 1\n"
        "    memoir.weights.acc.zero_()\n"
        "    memoir.keybank.add('a', None)\n"
        "    memoir.version, memoir.guard = 0, None\n"
        "    rec.version = 3\n"  # an EditRecord's own field: fine
        "    store.version = 3\n"
        "class Memoir:\n"
        "    def g(self):\n"
        "        self.edits = {}\n"
        "class Store:\n"
        "    def g(self):\n"
        "        self.version = 1\n")
    found = writes(sample, "sample")
    assert len(found) == 9, found
    assert not any("rec.version" in f or "store.version" in f or "self.version = 1" in f for f in found)


def test_the_facade_reads_the_memory_and_refuses_writes():
    from memoir_core.memoir import Memoir
    from memoir_core.memorystate import Memory, MemoryField

    for name in ("weights", "bank", "keybank", "edits", "version", "guard", "subjects"):
        assert isinstance(Memoir.__dict__[name], MemoryField), name

    class Holder:
        version = MemoryField()

        def __init__(self):
            self.memory = Memory(16, 4, 2, "cpu")

    holder = Holder()
    assert holder.version == 0
    with pytest.raises(AttributeError, match="belongs to the Memory"):
        holder.version = 3
