"""A yes/no JSON Schema check for the keywords airbundle's own schemas use.

jsonschema (with referencing, attrs, rpds) costs ~60 ms of CPU to import on
every run that validates a document: more than the rest of `verify` of a
small bundle. Nearly every document is valid, so schemas.py asks this check
first and loads jsonschema only when the answer is no, for the message that
names the field at fault (or when jsonschema, the reference, disagrees and
accepts after all).

The check may be stricter than jsonschema, never laxer: each keyword tests what
jsonschema's does (same type predicates, `re.search`, jsonschema's equality
of JSON values), and a schema with a keyword outside this subset compiles to
None, which sends every document to jsonschema. tests/test_jsoncheck.py holds
the two to the same answers on generated documents for every shipped schema.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Check = Callable[[Any], bool]
# Keywords that constrain nothing (Draft 2020-12 annotations; $defs are
# reached through $ref).
_ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "$defs", "title", "description", "default", "examples"}
)


class _UnsupportedError(Exception):
    """A keyword or form this check does not implement."""


def compile_schema(schema: Any) -> Check | None:
    """A predicate: True only for documents jsonschema's Draft 2020-12
    validator accepts; None if the schema uses anything outside the subset."""
    defs = schema.get("$defs", {}) if isinstance(schema, dict) else {}
    try:
        return _Compiler(defs).compile(schema, ())
    except _UnsupportedError:
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


_TYPES: dict[str, Check] = {
    "array": lambda v: isinstance(v, list),
    "boolean": lambda v: isinstance(v, bool),
    "integer": _is_integer,
    "null": lambda v: v is None,
    "number": _is_number,
    "object": lambda v: isinstance(v, dict),
    "string": lambda v: isinstance(v, str),
}


def _key(value: Any) -> Any:
    """A hashable stand-in: two values have equal keys only if jsonschema
    holds them equal (True is not 1, 1 is 1.0, containers by content)."""
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, bool) or value is None:
        return ("b", value)
    if isinstance(value, Sequence):
        return ("l", tuple(_key(v) for v in value))
    if isinstance(value, Mapping):
        return ("m", frozenset((k, _key(v)) for k, v in value.items()))
    hash(value)  # an unhashable oddity raises: the caller answers no
    return ("n", value)


class _Compiler:
    def __init__(self, defs: Any) -> None:
        self.defs = defs if isinstance(defs, dict) else {}

    def compile(self, node: Any, refs: tuple[str, ...]) -> Check:
        if node is True:
            return lambda _: True
        if node is False:
            return lambda _: False
        if not isinstance(node, dict):
            raise _UnsupportedError(repr(node))
        checks = []
        for keyword, value in node.items():
            if keyword in _ANNOTATIONS:
                continue
            make = _KEYWORDS.get(keyword)
            if make is None:
                raise _UnsupportedError(keyword)
            checks.append(make(self, value, node, refs))
        return lambda v: all(check(v) for check in checks)

    def ref(self, ref: Any, node: Any, refs: tuple[str, ...]) -> Check:
        prefix = "#/$defs/"
        if not isinstance(ref, str) or not ref.startswith(prefix):
            raise _UnsupportedError(ref)
        name = ref[len(prefix) :]
        if name not in self.defs or name in refs:  # absent, or recursive
            raise _UnsupportedError(ref)
        return self.compile(self.defs[name], (*refs, name))

    def type(self, types: Any, node: Any, refs: tuple[str, ...]) -> Check:
        names = [types] if isinstance(types, str) else types
        if not isinstance(names, list) or not all(n in _TYPES for n in names):
            raise _UnsupportedError(repr(types))
        predicates = [_TYPES[n] for n in names]
        return lambda v: any(p(v) for p in predicates)

    def properties(self, props: Any, node: Any, refs: tuple[str, ...]) -> Check:
        if not isinstance(props, dict):
            raise _UnsupportedError("properties")
        checks = [(name, self.compile(sub, refs)) for name, sub in props.items()]
        return lambda v: (
            not isinstance(v, dict) or all(check(v[name]) for name, check in checks if name in v)
        )

    def additional_properties(self, extra: Any, node: Any, refs: tuple[str, ...]) -> Check:
        if "patternProperties" in node:
            raise _UnsupportedError("patternProperties")
        known = frozenset(node.get("properties", {}))
        check = self.compile(extra, refs)
        return lambda v: (
            not isinstance(v, dict)
            or all(check(item) for name, item in v.items() if name not in known)
        )

    def property_names(self, sub: Any, node: Any, refs: tuple[str, ...]) -> Check:
        check = self.compile(sub, refs)
        return lambda v: not isinstance(v, dict) or all(check(name) for name in v)

    def required(self, names: Any, node: Any, refs: tuple[str, ...]) -> Check:
        names = list(names)
        return lambda v: not isinstance(v, dict) or all(n in v for n in names)

    def dependent_required(self, deps: Any, node: Any, refs: tuple[str, ...]) -> Check:
        pairs = [(name, list(needed)) for name, needed in dict(deps).items()]
        return lambda v: (
            not isinstance(v, dict)
            or all(n in v for name, needed in pairs if name in v for n in needed)
        )

    def items(self, sub: Any, node: Any, refs: tuple[str, ...]) -> Check:
        if "prefixItems" in node:
            raise _UnsupportedError("prefixItems")
        check = self.compile(sub, refs)
        return lambda v: not isinstance(v, list) or all(check(item) for item in v)

    def min_items(self, n: Any, node: Any, refs: tuple[str, ...]) -> Check:
        return lambda v: not isinstance(v, list) or len(v) >= n

    def max_items(self, n: Any, node: Any, refs: tuple[str, ...]) -> Check:
        return lambda v: not isinstance(v, list) or len(v) <= n

    def unique_items(self, unique: Any, node: Any, refs: tuple[str, ...]) -> Check:
        if not unique:
            return lambda _: True
        return lambda v: not isinstance(v, list) or len({_key(item) for item in v}) == len(v)

    def min_length(self, n: Any, node: Any, refs: tuple[str, ...]) -> Check:
        return lambda v: not isinstance(v, str) or len(v) >= n

    def max_length(self, n: Any, node: Any, refs: tuple[str, ...]) -> Check:
        return lambda v: not isinstance(v, str) or len(v) <= n

    def pattern(self, pattern: Any, node: Any, refs: tuple[str, ...]) -> Check:
        # re.search as jsonschema calls it; re's cache compiles on first use.
        return lambda v: not isinstance(v, str) or re.search(pattern, v) is not None

    def minimum(self, n: Any, node: Any, refs: tuple[str, ...]) -> Check:
        return lambda v: not _is_number(v) or not v < n

    def maximum(self, n: Any, node: Any, refs: tuple[str, ...]) -> Check:
        return lambda v: not _is_number(v) or not v > n

    def const(self, value: Any, node: Any, refs: tuple[str, ...]) -> Check:
        want = _key(value)
        return lambda v: _key(v) == want

    def enum(self, values: Any, node: Any, refs: tuple[str, ...]) -> Check:
        wanted = [_key(value) for value in values]
        return lambda v: _key(v) in wanted

    def one_of(self, subs: Any, node: Any, refs: tuple[str, ...]) -> Check:
        checks = [self.compile(sub, refs) for sub in subs]
        return lambda v: sum(1 for check in checks if check(v)) == 1


_KEYWORDS: dict[str, Callable[[_Compiler, Any, Any, tuple[str, ...]], Check]] = {
    "$ref": _Compiler.ref,
    "type": _Compiler.type,
    "properties": _Compiler.properties,
    "additionalProperties": _Compiler.additional_properties,
    "propertyNames": _Compiler.property_names,
    "required": _Compiler.required,
    "dependentRequired": _Compiler.dependent_required,
    "items": _Compiler.items,
    "minItems": _Compiler.min_items,
    "maxItems": _Compiler.max_items,
    "uniqueItems": _Compiler.unique_items,
    "minLength": _Compiler.min_length,
    "maxLength": _Compiler.max_length,
    "pattern": _Compiler.pattern,
    "minimum": _Compiler.minimum,
    "maximum": _Compiler.maximum,
    "const": _Compiler.const,
    "enum": _Compiler.enum,
    "oneOf": _Compiler.one_of,
}
