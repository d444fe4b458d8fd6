"""The in-memory store declares the bulk tables' columns itself; they must be schema.sql's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from actors.memstore import _TABLES

SCHEMA = (Path(__file__).resolve().parents[2] / "schema.sql").read_text()
_TYPES = {"text": str, "double precision": float, "integer": int, "bigint": int, "real": float}


def _columns(table: str) -> dict[str, tuple[type, bool]]:
    body = re.search(rf"CREATE TABLE IF NOT EXISTS {table} \((.*?)\n\)", SCHEMA, re.S)
    assert body is not None, table
    out = {}
    for line in body.group(1).splitlines():
        m = re.match(r"\s+([a-z_]+)\s+(text|double precision|integer|bigint|real)\b(.*)", line)
        if m:
            out[m.group(1)] = (_TYPES[m.group(2)], "NOT NULL" in m.group(3))
    # Columns added later, by ALTER TABLE (schema.sql is applied to existing databases too).
    for name, kind, rest in re.findall(
        rf"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS ([a-z_]+) "
        r"(text|double precision|integer|bigint|real)\b([^;]*);",
        SCHEMA,
    ):
        out[name] = (_TYPES[kind], "NOT NULL" in rest)
    return out


@pytest.mark.parametrize("table", sorted(_TABLES))
def test_the_memory_stores_columns_are_the_schemas(table: str):
    assert _TABLES[table] == _columns(table)
