"""The house rules that keep the rooms apart: no import cycles, leaves that stay leaves, and a
merge that imports neither torch nor numpy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for f in SRC.rglob("*.py"):
        parts = f.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def import_graph() -> dict[str, set[str]]:
    """Module → calmerge modules it imports anywhere in its body (lazy imports included:
    a cycle through a function-level import is still two modules that need each other)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import sub` is an import of the submodule when `pkg.sub` is one
                subs = [f"{node.module}.{a.name}" for a in node.names]
                targets = [s for s in subs if s in mods] or [node.module]
            else:
                continue
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

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
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_leaves_import_nothing_of_calmerge_but_errors_and_the_registry():
    """What configs and the numeric core build on must not pull the rest of calmerge in."""
    graph = import_graph()
    for leaf in ("calmerge.dtypes", "calmerge.registry", "calmerge.errors", "calmerge.coords",
                 "calmerge.eval.calibration", "calmerge.eval.diversity", "calmerge.merge.families",
                 "calmerge.sweep.simplex"):
        # coords: how a point's weights are written, itself importing nothing of calmerge
        allowed = {"calmerge.errors", "calmerge.registry", "calmerge.coords"}
        assert graph[leaf] <= allowed, (leaf, graph[leaf])
    assert graph["calmerge.coords"] == set()


def test_a_merge_imports_neither_torch_nor_numpy():
    code = (
        "import sys; import calmerge.cli, calmerge.api, calmerge.merge.engine, calmerge.config; "
        "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
