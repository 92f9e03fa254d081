"""The shape of the code base: the store owns the database, and functions stay short."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The benchmark drives its peers' databases directly and is held to other rules.
EXEMPT = ROOT / "orchestrator" / "bench"
LONGEST_FUNCTION = 60


def _modules(*folders: str) -> list[Path]:
    return [
        path
        for folder in folders
        for path in sorted((ROOT / folder).rglob("*.py"))
        if EXEMPT not in path.parents
    ]


def _imports(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_only_the_store_talks_to_the_database() -> None:
    store = ROOT / "orchestrator" / "store"
    offenders = [
        str(path.relative_to(ROOT))
        for path in _modules("orchestrator", "workers")
        if store not in path.parents
        and any(
            name == "asyncpg" or name.startswith(("asyncpg.", "orchestrator.store.queries"))
            for name in _imports(ast.parse(path.read_text()))
        )
    ]
    assert offenders == []


def test_no_function_is_longer_than_its_limit() -> None:
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)"
        for path in _modules("orchestrator")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (length := (node.end_lineno or node.lineno) - node.lineno + 1) > LONGEST_FUNCTION
    ]
    assert long == []
