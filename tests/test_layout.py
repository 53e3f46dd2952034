"""The house rules of docs/development.md ("Imports", "Where each concept lives"), checked on the source: no import
cycle among the library's modules (imports inside functions count: they only hide a cycle), no private name imported
across modules, no module over 600 lines, and no test file importing another test file (shared helpers live in
conftest.py)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "minitron_hf"
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def _imports(mods: dict[str, Path]):
    """(importing module, imported module, imported name) for every ``from minitron_hf... import`` anywhere in a
    module, nested ones included."""
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] == "minitron_hf":
                    for a in node.names:
                        yield m, target, a.name
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "minitron_hf":
                        yield m, a.name, None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_and_no_private_name_across_modules():
    mods = _modules()
    graph = {m: set() for m in mods}
    private = []
    for m, target, name in _imports(mods):
        full = f"{target}.{name}" if name else target
        dep = full if full in mods else target
        if dep in mods and dep != m:
            graph[m].add(dep)
        if name and name.startswith("_") and full not in mods:
            private.append(f"{m} imports {target}.{name}")
    assert _cycles(graph) == []
    assert private == []


def test_naive_cycle_finder_sees_a_cycle():
    # the check above must be able to fail
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_over_600_lines():
    long = {str(f.relative_to(ROOT)): n for f in PACKAGE.rglob("*.py")
            if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_test_file_imports_another():
    tests = {f.stem for f in (ROOT / "tests").glob("test_*.py")}
    found = []
    for f in (ROOT / "tests").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            found += [f"{f.name} imports {n}" for n in names if n.split(".")[0] in tests - {f.stem}]
    assert found == []
