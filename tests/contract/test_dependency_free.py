"""contract/ is the wire contract alone: it imports the standard library and itself, nothing else."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_top_levels(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_contract_imports_only_the_standard_library() -> None:
    sources = sorted((ROOT / "contract").rglob("*.py"))
    assert sources
    for path in sources:
        foreign = imported_top_levels(path) - set(sys.stdlib_module_names) - {"__future__", "contract"}
        assert not foreign, f"{path.relative_to(ROOT)} imports {sorted(foreign)}"
