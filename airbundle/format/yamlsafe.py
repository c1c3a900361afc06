"""YAML read from charts and chart repositories: hostile input, read as nodes.

A chart's Chart.yaml, values.yaml and a repository's index.yaml come from the
network. They are composed (never constructed: no tags act), the graph is
measured before anything walks it (aliases may not expand beyond a budget,
nor refer to themselves), and values are read as the scalar text written,
the way Helm reads Chart.yaml (`version: 1.10` is "1.10", not 1.1).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml

from airbundle.errors import FormatError

# libyaml's parser when present (a large index.yaml composes ~10 times faster).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def compose(text: str, what: str, *, max_nodes: int | None) -> yaml.Node | None:
    """The one document of `text` as a node graph whose expansion stays within
    `max_nodes` (None: the caller checks the parts it walks); None for an
    empty document."""
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except (yaml.YAMLError, RecursionError) as exc:
        raise FormatError(f"{what}: not valid YAML: {_first_line(exc)}") from None
    if node is not None and max_nodes is not None:
        check_expansion(node, what, max_nodes=max_nodes)
    return node


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def children(node: yaml.Node) -> Iterator[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield key
            yield value
    elif isinstance(node, yaml.SequenceNode):
        yield from node.value


def check_expansion(root: yaml.Node, what: str, *, max_nodes: int) -> None:
    """Refuse a graph that expands (aliases followed) beyond `max_nodes`, or
    whose aliases refer to themselves. Linear in the distinct nodes: each
    node's expanded size is computed once."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            total = 1 + sum(sizes[id(c)] for c in children(node))
            if total > max_nodes:
                raise FormatError(
                    f"{what}: expands to more than {max_nodes} YAML values (an alias bomb?)"
                )
            sizes[key] = total
            active.discard(key)
            continue
        if key in sizes:
            continue
        if key in active:
            raise FormatError(f"{what}: a YAML alias refers to itself")
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children(node) if id(c) not in sizes)


def fields(node: yaml.Node | None) -> dict[str, yaml.Node]:
    """A mapping's fields by key text (the first of a repeated key wins, as
    in imagescan); {} for anything that is not a mapping."""
    out: dict[str, yaml.Node] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                out.setdefault(str(key.value), value)
    return out


_NULLS = ("", "~", "null", "Null", "NULL")


def text(node: yaml.Node | None) -> str | None:
    """A scalar's text as written (None for a missing value, null or a collection)."""
    if not isinstance(node, yaml.ScalarNode):
        return None
    if node.tag == "tag:yaml.org,2002:null" or (node.style is None and node.value in _NULLS):
        return None
    return str(node.value)


def texts(node: yaml.Node | None) -> list[str]:
    """The scalar texts of a sequence (others skipped)."""
    if not isinstance(node, yaml.SequenceNode):
        return []
    return [t for t in (text(item) for item in node.value) if t is not None]


def boolean(node: yaml.Node | None) -> bool:
    value = text(node)
    return value is not None and value.lower() in ("true", "yes", "on")


def line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"


def plain(node: yaml.Node | None) -> Any:
    """The node as plain data: mappings, lists, and scalars as their text,
    except booleans and integers (which keep their kind, so that writing the
    data back keeps them so); call check_expansion first."""
    if node is None:
        return None
    if isinstance(node, yaml.MappingNode):
        return {str(k.value): plain(v) for k, v in node.value if isinstance(k, yaml.ScalarNode)}
    if isinstance(node, yaml.SequenceNode):
        return [plain(item) for item in node.value]
    value = text(node)
    if value is None:
        return None
    if node.tag == _BOOL_TAG:
        return value.lower() in ("true", "yes", "on")
    if node.tag == _INT_TAG and re.fullmatch(r"[-+]?[0-9]+", value):
        return int(value)
    return value
