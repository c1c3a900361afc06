"""Access to the JSON Schemas shipped in schemas/ (also inside the package)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from airbundle.errors import AirbundleError
from airbundle.format.jsoncheck import Check, compile_schema
from airbundle.format.text import escape

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

BUNDLE_SPEC = "bundle-spec.schema.json"
BUNDLE_MANIFEST = "bundle-manifest.schema.json"
VOLUME_INDEX = "volume-index.schema.json"
INVENTORY = "inventory.schema.json"
LOCK = "lock.schema.json"
IMPORT_STATE = "import-state.schema.json"
IMPORT_REPORT = "import-report.schema.json"
OCI_MANIFEST = "oci-manifest.schema.json"
DOCKER_ARCHIVE_MANIFEST = "docker-archive-manifest.schema.json"
REGISTRY_LIST = "registry-list.schema.json"
SIGN_JOURNAL = "sign-journal.schema.json"
VETTING = "vetting.schema.json"
# Every JSON document airbundle reads has one (docs/security.md, section 6).
ALL = (
    BUNDLE_SPEC,
    BUNDLE_MANIFEST,
    VOLUME_INDEX,
    INVENTORY,
    LOCK,
    IMPORT_STATE,
    IMPORT_REPORT,
    OCI_MANIFEST,
    DOCKER_ARCHIVE_MANIFEST,
    REGISTRY_LIST,
    SIGN_JOURNAL,
    VETTING,
)
_MESSAGE_CHARS = 200


@cache
def _schema(name: str) -> dict[str, Any]:
    text = resources.files("airbundle").joinpath("schemas", name).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _quick(name: str) -> Check | None:
    return compile_schema(_schema(name))


@cache
def validator(name: str) -> Draft202012Validator:
    # Imported on first use, and only for a document the quick check turns
    # down: jsonschema costs ~60 ms of CPU at start-up. The schemas themselves
    # are checked by the test suite, not on every run.
    from jsonschema import Draft202012Validator

    return Draft202012Validator(_inline_refs(_schema(name)))


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its local `#/$defs/NAME` references replaced by their
    definitions: the same constraints, and validation of a manifest with ten
    layers costs 0.55 ms instead of 1.5 ms (reference resolution dominates).
    Our schemas have no recursive definitions."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/") and len(node) == 1:
                return walk(defs[ref[len("#/$defs/") :]])
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out: dict[str, Any] = walk(schema)
    return out


def errors(name: str, instance: Any) -> Iterator[ValidationError]:
    """Validation errors, most specific (deepest path) first, stable order."""
    if _passes(name, instance):
        return
    checker = validator(name)
    if checker.is_valid(instance):
        return
    found = list(checker.iter_errors(instance))
    found.sort(key=lambda e: (-len(e.absolute_path), [str(p) for p in e.absolute_path]))
    yield from found


def _passes(name: str, instance: Any) -> bool:
    """The quick check's yes (jsonschema would say yes too; format/jsoncheck.py)."""
    quick = _quick(name)
    if quick is None:
        return False
    try:
        return quick(instance)
    except Exception:  # an oddity the quick check cannot weigh: ask jsonschema
        return False


def check(name: str, instance: Any, *, what: str, error: type[AirbundleError]) -> None:
    """Raise `error` naming the document and the first failing field, if any.

    The validator's message quotes the offending value (repr: control
    characters escaped); a long value is cut so the message stays one line.
    """
    for problem in errors(name, instance):
        message = problem.message
        if len(message) > _MESSAGE_CHARS:
            message = message[:_MESSAGE_CHARS] + "..."
        raise error(f"{what} is malformed: field {json_path(problem)}: {message}")


def json_path(error: ValidationError) -> str:
    """A readable path to the failing field: images[2].ref"""
    out = ""
    for part in error.absolute_path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:  # a key from the document: shown escaped, one line whatever it holds
            name = escape(str(part))
            out += f".{name}" if out else name
    return out or "(top level)"
