"""Values a JSON Schema allows, as a hypothesis strategy: for the subset of JSON Schema the API's
document uses (types, bounds, enum, const, pattern, anyOf/oneOf, objects, arrays). Every value
drawn is checked against the schema itself, so a gap here makes fewer values, never wrong ones.
(hypothesis-jsonschema does this in general, but does not work with current hypothesis.)"""

from __future__ import annotations

from typing import Any

import jsonschema
from hypothesis import strategies as st


def values(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    validator = jsonschema.Draft202012Validator(schema)
    return _values(schema).filter(validator.is_valid)


def _values(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    branches = schema.get("anyOf") or (schema.get("oneOf") if "type" not in schema else None)
    if branches:
        return st.one_of([_values({**_without(schema, "anyOf", "oneOf"), **b}) for b in branches])
    if "oneOf" in schema:
        # Branches that narrow an object's properties (or require one of them).
        return st.one_of([_values(_merge(_without(schema, "oneOf"), b)) for b in schema["oneOf"]])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        lo, hi = schema.get("minimum"), schema.get("maximum")
        return st.one_of(
            st.floats(lo, hi, allow_nan=False, allow_infinity=False),
            st.integers(
                None if lo is None else int(-(-lo // 1)), None if hi is None else int(hi // 1)
            ),
        )
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        return st.text(min_size=schema.get("minLength", 0), max_size=schema.get("maxLength", 20))
    if kind == "array":
        lo = schema.get("minItems", 0)
        return st.lists(_values(schema.get("items", {})), min_size=lo, max_size=max(lo, 4))
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: _values(v) for k, v in props.items() if k in required},
            optional={k: _values(v) for k, v in props.items() if k not in required},
        )
    # No type: any JSON value.
    return st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5))


def _without(schema: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k not in keys}


def _merge(base: dict[str, Any], branch: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    merged["properties"] = {**base.get("properties", {}), **branch.get("properties", {})}
    merged["required"] = [*base.get("required", ()), *branch.get("required", ())]
    return merged
