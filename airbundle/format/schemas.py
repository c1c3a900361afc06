"""Access to the JSON Schemas shipped in schemas/ (also inside the package)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

BUNDLE_SPEC = "bundle-spec.schema.json"
BUNDLE_MANIFEST = "bundle-manifest.schema.json"
VETTING = "vetting.schema.json"


@cache
def validator(name: str) -> Draft202012Validator:
    # Imported on first use: jsonschema costs ~30 ms at start-up, and most
    # commands validate one document at most. The schemas themselves are
    # checked by the test suite, not on every run.
    from jsonschema import Draft202012Validator

    text = resources.files("airbundle").joinpath("schemas", name).read_text("utf-8")
    return Draft202012Validator(json.loads(text))


def errors(name: str, instance: Any) -> Iterator[ValidationError]:
    """Validation errors, most specific (deepest path) first, stable order."""
    found = list(validator(name).iter_errors(instance))
    found.sort(key=lambda e: (-len(e.absolute_path), [str(p) for p in e.absolute_path]))
    yield from found


def json_path(error: ValidationError) -> str:
    """A readable path to the failing field: images[2].ref"""
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"
