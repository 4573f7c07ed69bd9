"""The code's shape: no import circles among the modules of ``promptscore/`` and ``udfs/``, no module
over 400 lines and no function over 60 lines (but for the executor's scoring loop and engine host,
listed below), read from the source with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400
# The executor side's long loops, kept whole where splitting them would hide their order of events.
LONG_FUNCTIONS_ALLOWED = {"udfs/engines.py", "udfs/engine_host.py", "udfs/engine_client.py", "udfs/reward.py",
                          "udfs/live.py"}
MODULE_SIZE_ALLOWED: set[str] = set()


def modules() -> dict[str, Path]:
    """Every module of the two packages, by dotted name."""
    out = {}
    for package in ("promptscore", "udfs"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``name`` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def test_no_import_circles():
    mods = modules()
    graph = {name: imports_of(name, path, set(mods)) for name, path in mods.items()}
    # A package's __init__ only hands names on here; an arrow into it is an arrow into its modules.
    graph = {n: {t for t in ts if mods[t].name != "__init__.py" or mods[t].stat().st_size > 0 and
                 any(isinstance(s, (ast.Import, ast.ImportFrom)) for s in ast.parse(mods[t].read_text()).body)}
             for n, ts in graph.items()}
    circles = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, f"import circles: {circles}"


def test_no_long_functions_or_modules():
    long_functions, long_modules = [], []
    for path in modules().values():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES and rel not in MODULE_SIZE_ALLOWED:
            long_modules.append(f"{rel}: {len(text.splitlines())} lines")
        if rel in LONG_FUNCTIONS_ALLOWED:
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long_functions.append(f"{rel}:{node.lineno} {node.name}: {lines} lines")
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_the_circle_check_sees_a_circle(tmp_path):
    """The check itself: two modules that import each other are found."""
    (tmp_path / "a.py").write_text("from pkg import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from pkg.a import x\n")
    known = {"pkg.a", "pkg.b"}
    assert imports_of("pkg.a", tmp_path / "a.py", known) == {"pkg.b"}
    assert imports_of("pkg.b", tmp_path / "b.py", known) == {"pkg.a"}
