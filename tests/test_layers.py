"""The house's layers, read from the import statements of bench/ and methods/ (function-level ones too, never by
importing): no import cycle, and each layer imports only the layers below it.

    cli > tools > report > grid > harness (+ methods/) > api
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAYERS = ["api", "harness", "grid", "report", "tools", "cli"]  # bottom to top
INTERNAL = ("bench", "methods")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, name: str, modules: set[str]) -> set[str]:
    """The project modules `path` imports, at any depth of its code: `from a.b import c` names a.b.c when that is a
    module, else a.b."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t.split(".")[0] in INTERNAL}
    return found - {name}


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    paths = [p for d in INTERNAL for p in (root / d).rglob("*.py") if "__pycache__" not in p.parts]
    modules = {module_name(p, root) for p in paths}
    return {module_name(p, root): imported(p, module_name(p, root), modules) for p in paths}


def layer(module: str) -> str:
    """A module's layer: its package under bench/ (bench/cli.py and bench/__main__.py: cli); methods/ sit with the
    harness, which loads them by name."""
    parts = module.split(".")
    if parts[0] == "methods":
        return "harness"
    if module in ("bench", "bench.__main__"):
        return "cli"
    return parts[1]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a module from a layer above its own (a package's __init__ importing its parent is fine)."""
    rank = {name: i for i, name in enumerate(LAYERS)}  # a module in no layer is test_every_module_sits_in_a_layer's
    return [
        f"{source} ({layer(source)}) imports {target} ({layer(target)})"
        for source, targets in sorted(graph.items())
        for target in sorted(targets)
        if target != "bench" and rank.get(layer(target), -1) > rank.get(layer(source), len(LAYERS))
    ]


def test_every_module_sits_in_a_layer():
    unplaced = [m for m in import_graph() if layer(m) not in LAYERS]
    assert not unplaced, f"modules outside bench/{{{','.join(LAYERS)}}}: {unplaced}"


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_each_layer_imports_only_layers_below_it():
    assert upward_imports(import_graph()) == []


def test_the_checks_see_a_function_level_cycle_and_an_upward_import(tmp_path):
    """The walker itself: an import inside a function closes a cycle; harness importing report is flagged."""
    for package in ("bench", "bench/harness", "bench/report", "methods"):
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "bench/harness/a.py").write_text("from bench.harness import b\n")
    (tmp_path / "bench/harness/b.py").write_text("def f():\n    from bench.harness.a import x\n")
    (tmp_path / "bench/harness/c.py").write_text("def g():\n    from bench.report import summary\n")
    (tmp_path / "bench/report/summary.py").write_text("from . import other\n")
    (tmp_path / "bench/report/other.py").write_text("x = 1\n")
    graph = import_graph(tmp_path)
    assert graph["bench.report.summary"] == {"bench.report.other"}  # a relative import resolved
    assert cycles(graph) == [["bench.harness.a", "bench.harness.b"]]
    assert upward_imports(graph) == ["bench.harness.c (harness) imports bench.report.summary (report)"]


@pytest.mark.parametrize("module", ["bench.harness.cell", "bench.harness.train", "methods.lora"])
def test_the_harness_reaches_nothing_above_it(module):
    """The import closure of the modules a cell runs stays in api + harness (what the fingerprint covers)."""
    graph, seen, pending = import_graph(), set(), [module]
    while pending:
        current = pending.pop()
        if current not in seen:
            seen.add(current)
            pending += graph.get(current, ())
    assert {layer(m) for m in seen} <= {"api", "harness"}
