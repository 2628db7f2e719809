"""Hypothesis strategies from the JSON Schemas of an OpenAPI document: the subset llmq's
documents use (`type`, `enum`, `const`, `$ref` to `#/components/schemas/`, `anyOf`/`oneOf`,
`allOf` of objects, `properties`/`required`/`additionalProperties`, `items`, numeric and
length bounds). Mostly values that fit the schema, sometimes any JSON at all, so both the
checks past the decoder and the decoder's own refusals are reached."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

FINITE = st.floats(allow_nan=False, allow_infinity=False)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), FINITE, st.text(max_size=20)
)
ANY_JSON = st.recursive(
    SCALARS,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3)
    ),
    max_leaves=8,
)
MAX_DEPTH = 6


def from_schema(
    schema: dict[str, Any], components: dict[str, Any], depth: int = 0
) -> st.SearchStrategy[Any]:
    """Values for `schema`: usually fitting, one time in five anything."""
    fitting = _fitting(schema, components, depth)
    return st.one_of(fitting, fitting, fitting, fitting, ANY_JSON) if depth < 2 else fitting


def _fitting(schema: dict[str, Any], components: dict[str, Any], depth: int) -> Any:
    if depth > MAX_DEPTH:
        return SCALARS
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return st.deferred(lambda: _fitting(components[name], components, depth + 1))
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([_fitting(s, components, depth + 1) for s in schema[key]])
    if "allOf" in schema:
        parts = [_fitting(s, components, depth + 1) for s in schema["allOf"]]
        return st.tuples(*parts).map(_merged)
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([_fitting({**schema, "type": k}, components, depth) for k in kind])
    if kind == "object" or "properties" in schema:
        return _object(schema, components, depth)
    if kind == "array":
        items = _fitting(schema.get("items", {}), components, depth + 1)
        return st.lists(
            items, min_size=schema.get("minItems", 0), max_size=min(schema.get("maxItems", 4), 4)
        )
    if kind == "string":
        return st.text(
            min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40)
        )
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(
            schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return ANY_JSON


def _object(schema: dict[str, Any], components: dict[str, Any], depth: int) -> Any:
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    fields = {k: _fitting(v, components, depth + 1) for k, v in props.items()}
    extra = schema.get("additionalProperties")
    base = st.fixed_dictionaries(
        {k: s for k, s in fields.items() if k in required},
        optional={k: s for k, s in fields.items() if k not in required},
    )
    if isinstance(extra, dict) and extra:
        more = st.dictionaries(
            st.text(max_size=10), _fitting(extra, components, depth + 1), max_size=3
        )
        return st.tuples(base, more).map(lambda pair: {**pair[1], **pair[0]})
    return base


def _merged(parts: tuple[Any, ...]) -> Any:
    out: dict[str, Any] = {}
    for part in parts:
        if not isinstance(part, dict):
            return part
        out.update(part)
    return out
