"""The import graph keeps its layers: no cycles (imports inside functions count), a
registry that imports nothing of autoslim, an artifact writer that knows no technique."""

from __future__ import annotations

import grimp
import pytest

PACKAGE = "autoslim"


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # Imports under ``if TYPE_CHECKING`` never run, so they cannot form a cycle.
    return grimp.build_graph(PACKAGE, exclude_type_checking_imports=True)


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def describe(graph: grimp.ImportGraph, cycle: list[str]) -> str:
    """One cycle as its edges with line numbers, so the message says what to cut."""
    members = set(cycle)
    edges = []
    for importer in cycle:
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
            lines = [
                d["line_number"]
                for d in graph.get_import_details(importer=importer, imported=imported)
            ]
            edges.append(f"  {importer} -> {imported} (line {', '.join(map(str, lines))})")
    return "\n".join(edges)


def test_the_tarjan_helper_finds_a_cycle_and_ignores_a_chain():
    class Fake:
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
        modules = set(edges)

        def find_modules_directly_imported_by(self, module):
            return self.edges[module]

    assert import_cycles(Fake()) == [["a", "b", "c"]]


def test_no_module_is_part_of_an_import_cycle(graph):
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n\n".join(describe(graph, c) for c in cycles)


def test_the_registry_imports_nothing_else_from_autoslim(graph):
    assert graph.find_modules_directly_imported_by("autoslim.registry") == set()


def test_the_artifact_module_imports_no_technique(graph):
    for module in ("autoslim.artifact", "autoslim._artifact_checks"):
        imported = graph.find_modules_directly_imported_by(module)
        assert not {m for m in imported if m.startswith("autoslim.techniques")}, module


@pytest.mark.parametrize("core", ["autoslim.recipe", "autoslim.space", "autoslim.pipeline"])
def test_core_modules_reach_no_technique(graph, core):
    """Registration is by the registry's loader, never by a core module importing the list."""
    reachable = graph.find_upstream_modules(core)  # everything it imports, transitively
    assert not {m for m in reachable if m.startswith("autoslim.techniques")}
