"""Imports go one way: no cycle between the packages of ``bartops``, and no private names across modules.

Each subpackage (``bartops.gate``, ``bartops.reward``, …) is a node; a top-level module
(``bartops.config``) is its own node.  A package's ``cli.py`` is the command line, the layer above
every package (it loads, calls the steps or their executor, and reports), so it counts as the node
``cli``, which nothing but ``cli`` may import.  Every import is counted, including those inside
functions, so a cycle cannot hide in a deferred import.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "bartops"


def _node(module: str) -> str:
    parts = module.split(".")
    if parts[-1] == "cli" or module == f"{PACKAGE}.cli":
        return "cli"
    return parts[1] if len(parts) > 1 else PACKAGE


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = f.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every ``bartops`` import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith(PACKAGE):
            found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith(PACKAGE)]
    return found


def _graph() -> dict[str, dict[str, list[str]]]:
    """node → imported node → where ("file:line")."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for module, path in _modules().items():
        for target, _, line in _imports(path):
            a, b = _node(module), _node(target)
            if a != b:
                graph[a][b].append(f"{path.relative_to(SRC)}:{line}")
    return graph


def _cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Each strongly connected component of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return components


def test_the_package_graph_has_no_cycle():
    graph = _graph()
    cycles = _cycles(graph)
    detail = [f"{a} -> {b} at {graph[a][b][:3]}" for comp in cycles for a in comp for b in comp if b in graph[a]]
    assert not cycles, f"import cycles between packages {cycles}: {detail}"


def test_only_the_command_line_imports_the_command_line():
    graph = _graph()
    offenders = {a: graph[a]["cli"] for a in graph if a != "cli" and "cli" in graph[a]}
    assert not offenders, f"packages importing a cli module: {offenders}"


def test_the_cycle_check_finds_a_planted_cycle():
    planted = {"gate": {"reward": ["x"]}, "reward": {"scale": ["y"]}, "scale": {"gate": ["z"]}, "ope": {}}
    assert _cycles(planted) == [["gate", "reward", "scale"]], f"planted cycle not found: {_cycles(planted)}"


def test_no_module_takes_a_private_name_from_another():
    private = [f"{path.relative_to(SRC)}:{line} takes {name} from {target}"
               for module, path in _modules().items() for target, names, line in _imports(path)
               for name in names if name.startswith("_") and not name.startswith("__") and target != module]
    assert not private, f"private names imported across modules: {private}"
