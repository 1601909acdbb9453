"""The codebase keeps its shape: small modules, short functions, and the
control plane and the agent never importing each other (they share only the
generated API and muster/common)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREES = ("controlplane", "agent", "muster", "muster_cli", "tests", "benchmarks", "scripts")


def sources() -> list[Path]:
    return [
        path
        for tree in TREES
        for path in sorted((ROOT / tree).rglob("*.py"))
        if "muster/v1" not in path.as_posix()  # generated
    ]


def test_no_module_over_500_lines_and_no_function_over_60() -> None:
    long_modules, long_functions = [], []
    for path in sources():
        text = path.read_text()
        name = path.relative_to(ROOT).as_posix()
        if text.count("\n") > 500:
            long_modules.append(name)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 60:
                    long_functions.append(f"{name}:{node.lineno} {node.name} ({length} lines)")
    assert len(sources()) > 300
    assert long_modules == [] and long_functions == []


def imported(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module.split(".")[0])
    return modules


def test_the_control_plane_and_the_agent_never_import_each_other() -> None:
    crossing = [
        path.relative_to(ROOT).as_posix()
        for side, other in (("controlplane", "agent"), ("agent", "controlplane"))
        for path in (ROOT / side).rglob("*.py")
        if other in imported(path)
    ]
    assert crossing == []
