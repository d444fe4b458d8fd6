"""The packages' one direction: `supervisor` uses `actors`, never the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

ACTORS = Path(__file__).resolve().parents[2] / "actors"


def test_actors_import_nothing_from_supervisor():
    found = []
    for path in sorted(ACTORS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found += [
                f"{path.name}:{node.lineno} {n}"
                for n in names
                if n == "supervisor" or n.startswith("supervisor.")
            ]
    assert found == []
