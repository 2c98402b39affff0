"""The shape of the code: ``policies/`` stays small, at the bottom, and free of import circles.

Imports are read with ``ast`` from the source (every ``import`` and ``from … import``, including
those inside functions and ``if TYPE_CHECKING:`` blocks), so nothing is imported to check them.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from resources.settings import REPO_ROOT

POLICIES = REPO_ROOT / "policies"
MAX_MODULE_LINES = 400
# Packages of this project that sit above policies/ (or beside it, as separate processes).
ABOVE_POLICIES = frozenset({"resources", "orchestrator_assets", "gateway", "jobs", "sensors", "definitions", "sandbox"})
# Third-party libraries a policy rule genuinely needs: the models, the YAML reader, template
# parsing and rendering, e-mail address checks, campaigns' cron schedules. Anything else belongs above policies/.
POLICIES_THIRD_PARTY = frozenset({"pydantic", "yaml", "jinja2", "email_validator", "cronsim"})


def module_name(path: Path) -> str:
    """``policies/tenants.py`` -> ``policies.tenants``; a package's ``__init__.py`` -> the package."""
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, as absolute dotted names (relative imports resolved).

    ``from package import name`` yields ``package.name`` when that is a module of this tree,
    otherwise ``package``: a submodule imported that way is a dependency on the submodule.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                is_module = (REPO_ROOT / Path(*candidate.split("."))).with_suffix(".py").exists() or (
                    REPO_ROOT / Path(*candidate.split(".")) / "__init__.py"
                ).exists()
                found.add(candidate if is_module else base)
    return found


def policies_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(POLICIES.rglob("*.py"))}


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every set of modules that reach each other through imports (Tarjan's strongly connected
    components of size > 1, or a module importing itself), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_no_policies_module_is_over_the_line_limit():
    too_long = {
        name: lines
        for name, path in policies_modules().items()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not too_long, f"policies modules over {MAX_MODULE_LINES} lines (split them by concern): {too_long}"


def test_policies_import_nothing_above_them():
    upward = {
        name: sorted(target for target in imported_modules(path) if target.split(".")[0] in ABOVE_POLICIES)
        for name, path in policies_modules().items()
    }
    upward = {name: targets for name, targets in upward.items() if targets}
    assert not upward, f"policies must not import from {sorted(ABOVE_POLICIES)}; found: {upward}"


def test_policies_use_only_the_standard_library_and_their_light_libraries():
    foreign = {
        name: sorted(
            target
            for target in imported_modules(path)
            if (top := target.split(".")[0]) != "policies"
            and top not in sys.stdlib_module_names
            and top not in POLICIES_THIRD_PARTY
            and top not in ABOVE_POLICIES  # reported by the test above
        )
        for name, path in policies_modules().items()
    }
    foreign = {name: targets for name, targets in foreign.items() if targets}
    assert not foreign, f"policies may use only the standard library and {sorted(POLICIES_THIRD_PARTY)}; found: {foreign}"


def test_policies_modules_import_each_other_without_circles():
    modules = policies_modules()
    graph = {
        name: {target for target in imported_modules(path) if target in modules}
        for name, path in modules.items()
    }
    assert not import_circles(graph), f"import circles among policies modules: {import_circles(graph)}"


def test_import_circles_are_found_in_a_drawn_graph():
    """The circle finder itself: a two-module loop and a three-module loop are found, a chain is not."""
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": set(), "x": {"y"}, "y": {"z"}, "z": {"x"}, "s": {"s"}}
    assert sorted(import_circles(graph)) == [["a", "b"], ["s"], ["x", "y", "z"]]
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
