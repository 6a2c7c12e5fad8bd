"""The shape of chaos/, kept: its import graph, read from the source (nothing imported), and the README as a
front door whose links into docs/ all resolve.

- No two packages (or top-level modules) of chaos/ import each other, through any import, lazy ones included:
  the supervisor and the host agents share process ownership through chaos/ownership/, which imports neither.
- No cycle between modules through imports made at import time (module level, `if TYPE_CHECKING:` included).
  A lazy import inside a function may close a loop where the data is recursive (a torch.save archive holds
  pickles that hold archives: chaos.state.archive <-> chaos.state.unpickle).
"""

from __future__ import annotations

import ast
from pathlib import Path

CHAOS = Path(__file__).resolve().parents[1] / "chaos"
HOOK = CHAOS / "selftest" / "hook"  # runs inside the ranks as top-level modules, never imports chaos

KNOWN_MODULE_CYCLES: set[frozenset[str]] = set()
"""Module cycles tolerated for now: none (an attempt talks to its run through chaos.supervisor.attempt_context,
never the supervisor itself). Nothing may join this list."""


def _modules() -> dict[str, Path]:
    out = {}
    for path in CHAOS.rglob("*.py"):
        if HOOK in path.parents:
            continue
        parts = path.relative_to(CHAOS.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported chaos module, at import time?) for every import in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, at_import_time: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            at_import_time = False
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in targets:
            while target and target not in modules:  # `import chaos.x.y` names chaos.x.y, or a symbol's module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.append((target, at_import_time))
        for child in ast.iter_child_nodes(node):
            visit(child, at_import_time)

    visit(ast.parse(path.read_text()), True)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def strong(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                strong(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in list(graph):
        if node not in index:
            strong(node)
    return found


def _unit(module: str) -> str:
    """chaos.supervisor.attempt -> chaos.supervisor; chaos.runner -> chaos.runner."""
    return ".".join(module.split(".")[:2])


def test_no_two_parts_of_chaos_import_each_other():
    modules = _modules()
    units: dict[str, set[str]] = {}
    for name, path in modules.items():
        for target, _ in _imports(name, path, modules):
            if _unit(target) != _unit(name) and _unit(target) != "chaos":
                units.setdefault(_unit(name), set()).add(_unit(target))
    assert _cycles(units) == [], "packages or modules of chaos/ that import each other"


def test_no_module_cycle_at_import_time():
    modules = _modules()
    graph = {name: {t for t, at_import_time in _imports(name, path, modules) if at_import_time}
             for name, path in modules.items()}
    cycles = [c for c in _cycles(graph) if frozenset(c) not in KNOWN_MODULE_CYCLES]
    assert cycles == [], "modules of chaos/ that import each other at import time"


def test_the_graph_reader_sees_a_cycle(tmp_path):
    """The two tests above can fail: a planted package cycle and a planted module cycle are found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    modules = _modules()
    agent = modules["chaos.agent.host"]
    targets = {t for t, _ in _imports("chaos.agent.host", agent, modules)}
    assert "chaos.ownership.processes" in targets and "chaos.agent.protocol" in targets
    assert not any(t.startswith("chaos.supervisor") for t in targets)


REPO = CHAOS.parent


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings (outside code blocks)."""
    import re

    anchors, in_code = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return anchors


def test_readme_is_a_front_door_and_every_link_resolves():
    import re

    readme = REPO / "README.md"
    lines = readme.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: reference belongs in docs/"
    assert "scripts/demo.sh" in "\n".join(lines[:6]) and "scripts/test.sh" in "\n".join(lines[:6])
    broken = []
    for page in [readme, *sorted((REPO / "docs").rglob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file, _, anchor = target.partition("#")
            resolved = (page.parent / file) if file else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert broken == []
