"""The quick schema check (format/jsoncheck.py) answers as jsonschema does.

schemas.check asks the quick check first and loads jsonschema only when it
says no, so a yes that jsonschema would not give is a hole in validation.
Hypothesis draws documents from each shipped schema, valid ones and ones
with a node changed (replaced, pushed past a bound, a key dropped or added),
and holds the two to the same answer; hand-picked cases cover JSON's equality
rules (True is not 1, 1 is 1.0) and keywords outside the subset."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from airbundle.errors import ManifestError
from airbundle.format import schemas
from airbundle.format.jsoncheck import Check, compile_schema
from support.env import REPO_ROOT

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((REPO_ROOT / "schemas" / name).read_text())
    return schema


def _valid(schema: Any, defs: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Documents the schema accepts (mostly: two oneOf branches may both fit)."""
    if not isinstance(schema, dict) or depth > 12:
        return JSON
    if "$ref" in schema:
        return _valid(defs[schema["$ref"].rsplit("/", 1)[1]], defs, depth + 1)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "oneOf" in schema:
        return st.one_of(*(_valid(s, defs, depth + 1) for s in schema["oneOf"]))
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    return st.one_of(*(_of_type(k, schema, defs, depth) for k in kinds))


def _of_type(kind: Any, schema: dict[str, Any], defs: dict[str, Any], depth: int) -> Any:
    if kind == "object":
        return _object(schema, defs, depth)
    if kind == "array":
        low = schema.get("minItems", 0)
        return st.lists(
            _valid(schema.get("items", True), defs, depth + 1),
            min_size=low,
            max_size=min(schema.get("maxItems", low + 3), low + 3),
            unique_by=json.dumps if schema.get("uniqueItems") else None,
        )
    if kind == "string":
        low, high = schema.get("minLength", 0), schema.get("maxLength", 10**9)
        if "pattern" in schema:
            return st.from_regex(schema["pattern"]).filter(lambda s: low <= len(s) <= high)
        edges = st.sampled_from(["x" * low, "\u00e9" * min(high, 5000)])
        return edges | st.text(min_size=low, max_size=min(high, low + 20))
    if kind in ("integer", "number"):
        low, high = schema.get("minimum", -(2**63)), schema.get("maximum", 2**63)
        edges = st.sampled_from([low, high, max(low, min(high, 1.0))])
        return edges | st.integers(low, high)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return JSON


def _object(schema: dict[str, Any], defs: dict[str, Any], depth: int) -> Any:
    props = schema.get("properties", {})
    required = [k for k in schema.get("required", []) if k in props]
    optional = {k: v for k, v in props.items() if k not in required}
    extra = schema.get("additionalProperties", True)
    more: st.SearchStrategy[dict[str, Any]] = st.just({})
    if extra is not False:
        names = schema.get("propertyNames")
        keys = _valid(names, defs, depth + 1) if names else st.text(max_size=6)
        keys = keys.filter(lambda k: isinstance(k, str) and k not in props)
        more = st.dictionaries(keys, _valid(extra, defs, depth + 1), max_size=2)
    return st.builds(
        lambda req, opt, more: {**more, **req, **opt},
        st.fixed_dictionaries({k: _valid(props[k], defs, depth + 1) for k in required}),
        st.fixed_dictionaries(
            {}, optional={k: _valid(v, defs, depth + 1) for k, v in optional.items()}
        ),
        more,
    )


@st.composite
def _mutated(draw: st.DrawFn, documents: st.SearchStrategy[Any]) -> Any:
    """A document with one node changed: replaced, emptied, pushed past a
    bound, a key dropped or added."""
    doc = draw(documents)
    holder: Any = None
    key: Any = None
    node = doc
    while isinstance(node, (dict, list)) and node and draw(st.integers(0, 3)):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        holder, key = node, draw(st.sampled_from(keys))
        node = node[key]
    if isinstance(node, dict) and draw(st.booleans()):
        if node:
            node.pop(draw(st.sampled_from(list(node))))
        else:
            node[draw(st.text(max_size=4))] = draw(JSON)
        return doc
    changed = draw(
        st.sampled_from(
            [
                lambda v: v + "\n" if isinstance(v, str) else v,
                lambda v: v + "x" if isinstance(v, str) else v,
                lambda v: v + 1 if isinstance(v, int) else v,
                lambda v: v - 1 if isinstance(v, int) else v,
                lambda v: v + "x" * 5000 if isinstance(v, str) else v,
                lambda v: v[:-1] if isinstance(v, (str, list)) else v,
                lambda v: -1 - v if isinstance(v, int) else v,
                lambda v: v + 2**63 if isinstance(v, int) else v,
                lambda v: int(v) if isinstance(v, bool) else v,
                lambda v: [*v, v[0]] if isinstance(v, list) and v else v,
            ]
        )
        | JSON.map(lambda j: lambda _: j)
    )(node)
    if holder is None:
        return changed
    holder[key] = changed
    return doc


@pytest.mark.parametrize("name", schemas.ALL)
def test_every_shipped_schema_compiles_to_a_quick_check(name: str) -> None:
    """Else every document of that kind would load jsonschema again."""
    assert compile_schema(_schema(name)) is not None


@functools.cache
def _cases(name: str) -> tuple[Check, Draft202012Validator, st.SearchStrategy[Any]]:
    schema = _schema(name)
    quick = compile_schema(schema)
    assert quick is not None
    valid = _valid(schema, schema.get("$defs", {}))
    return quick, Draft202012Validator(schema), valid | _mutated(valid) | _mutated(valid)


@pytest.mark.parametrize("name", schemas.ALL)
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_quick_check_answers_as_jsonschema_on_documents_of_each_schema(
    name: str, data: st.DataObject
) -> None:
    quick, judge, documents = _cases(name)
    doc = data.draw(documents)
    assert quick(doc) == judge.is_valid(doc), doc


EQUALITY = [
    ({"const": 1}, True),
    ({"const": 1}, 1.0),
    ({"const": True}, 1),
    ({"const": False}, 0),
    ({"const": None}, False),
    ({"enum": [[1, "a"], {"k": [True]}]}, [1.0, "a"]),
    ({"enum": [[1, "a"], {"k": [True]}]}, {"k": [1]}),
    ({"enum": [[1, "a"], {"k": [True]}]}, {"k": [True]}),
    ({"uniqueItems": True}, [1, True]),
    ({"uniqueItems": True}, [1, 1.0]),
    ({"uniqueItems": True}, [0, False, None]),
    ({"uniqueItems": True}, [{"a": 1}, {"a": 1.0}]),
    ({"uniqueItems": True}, [[1], [True]]),
    ({"type": "integer"}, 2.0),
    ({"type": "integer"}, True),
    ({"type": "number"}, False),
    ({"minimum": 0}, -1),
    ({"minimum": 0}, "-1"),
    ({"maxLength": 2}, "\u00e9\u00e9"),
    ({"pattern": "^a$"}, "a\n"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, 1),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, 1.5),
    ({"dependentRequired": {"a": ["b"]}}, {"a": 1}),
    ({"propertyNames": {"maxLength": 1}}, {"ab": 1}),
    ({"additionalProperties": False, "properties": {"a": {}}}, {"a": 1, "b": 2}),
    ({"items": {"type": "string"}}, ["a", 1]),
]


@pytest.mark.parametrize(("schema", "doc"), EQUALITY)
def test_quick_check_follows_jsonschema_equality_and_types(schema: Any, doc: Any) -> None:
    quick = compile_schema(schema)
    assert quick is not None
    assert quick(doc) == Draft202012Validator(schema).is_valid(doc)


@pytest.mark.parametrize(
    "schema",
    [
        {"allOf": [{"type": "string"}]},
        {"patternProperties": {"^x": {}}, "additionalProperties": False},
        {"prefixItems": [{}], "items": False},
        {"$ref": "https://example.com/other.json"},
        {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
        {"$dynamicRef": "#x"},
        {"type": "decimal"},
    ],
)
def test_a_schema_outside_the_subset_compiles_to_none(schema: Any) -> None:
    """None sends every document to jsonschema: nothing is waved through."""
    assert compile_schema(schema) is None


def test_a_refused_document_still_gets_jsonschemas_message_naming_the_field() -> None:
    doc = {"apiVersion": "airbundle/v1", "kind": "Nope"}
    with pytest.raises(ManifestError, match=r"field kind: 'BundleManifest' was expected"):
        schemas.check(schemas.BUNDLE_MANIFEST, doc, what="m", error=ManifestError)
