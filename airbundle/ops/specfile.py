"""Read a bundle spec from disk: a regular file, size checked before it is read."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from airbundle.adapters.fsutil import read_regular
from airbundle.errors import SpecError
from airbundle.format.spec import BundleSpec, parse_spec
from airbundle.limits import DEFAULT_LIMITS, Limits


def load_spec(path: Path, *, limits: Limits = DEFAULT_LIMITS) -> BundleSpec:
    data = read_regular(path, limit=limits.max_spec_bytes, what="spec", error=SpecError)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not UTF-8 text") from None
    spec = parse_spec(text, source=str(path), base_dir=path.resolve().parent, limits=limits)
    return replace(spec, path=path)
