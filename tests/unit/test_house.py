"""The house's rules: no module of the server or the SDK imports itself back through others, the
engine imports neither gRPC nor a store, and no module grows past a reviewer's reading size.

Every import counts, wherever it stands in a module (at the top, inside a function, under
TYPE_CHECKING): an import moved into a function still ties the two modules together.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"mcp_server": ROOT / "mcp_server", "mcp_sdk": ROOT / "sdk" / "python" / "mcp_sdk"}


def modules() -> dict[str, Path]:
    """Every module of the packages, by dotted name (the generated contract code left out)."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            relative = path.relative_to(folder).with_suffix("")
            if relative.parts and relative.parts[0] == "proto":
                continue
            parts = [package, *relative.parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imported(module: str, path: Path, known: set[str]) -> Iterator[str]:
    """The known modules `module` imports, anywhere in its text."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        yield from (name for name in names if name in known and name != module)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
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
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_of_the_server_or_the_sdk_imports_itself_back():
    known = modules()
    graph = {name: set(imported(name, path, set(known))) for name, path in known.items()}
    assert cycles(graph) == []


def test_the_check_finds_a_circle_when_there_is_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_engine_core_imports_no_grpc_server_code_and_no_redis():
    known = modules()
    for name, path in known.items():
        if not name.startswith("mcp_server.engine"):
            continue
        text = path.read_text()
        tree = ast.parse(text)
        roots = {
            alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        } | {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not roots & {"grpc", "redis", "sqlite3"}, (name, roots & {"grpc", "redis", "sqlite3"})
        assert not any(m.startswith(("mcp_server.api", "mcp_server.state")) for m in imported(name, path, set(known)))


MAX_MODULE_LINES = 450


def test_no_module_of_the_server_or_the_sdk_passes_450_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}
