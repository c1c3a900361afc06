"""Strict JSON decoding for documents that arrive from untrusted media."""

from __future__ import annotations

import json
from typing import Any

from airbundle.errors import AirbundleError


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # Two parsers may pick different values for a duplicated key;
            # a signed document must mean one thing only.
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _depth(value: Any, limit: int) -> int:
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return depth
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def loads_strict(
    data: bytes, *, what: str, max_bytes: int, max_depth: int, error: type[AirbundleError]
) -> Any:
    """Decode UTF-8 JSON with no duplicate keys, no NaN, bounded size and depth."""
    if len(data) > max_bytes:
        raise error(f"{what} is {len(data)} bytes, more than the {max_bytes} allowed")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not valid UTF-8: {exc}") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except RecursionError:
        raise error(f"{what} is nested too deeply") from None
    except ValueError as exc:
        raise error(f"{what} is not valid JSON: {exc}") from None
    if _depth(value, max_depth) > max_depth:
        raise error(f"{what} is nested deeper than {max_depth} levels")
    return value
