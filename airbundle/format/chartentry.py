"""A carried chart as the signed manifest lists it (`charts[]`).

Kept apart from format/helm.py, which reads YAML: every reader of a manifest
(serve among them) loads this, not a YAML parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from airbundle.errors import FormatError
from airbundle.format.digest import Digest
from airbundle.format.reference import ImageReference
from airbundle.format.semver import Version

# A chart's name and version become a file name (NAME-VERSION.tgz) on import.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class ChartEntry:
    """A carried chart: its name and version, the image entry it travels as
    (`ref`, `digest`: the chart's OCI manifest), where it came from, and its
    .tgz (the manifest's chart layer)."""

    name: str
    version: str
    ref: ImageReference
    source: str
    digest: Digest
    chart_digest: Digest
    chart_size: int
    app_version: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "ref": str(self.ref),
            "source": self.source,
            "digest": str(self.digest),
            "chartDigest": str(self.chart_digest),
            "chartSize": self.chart_size,
            "appVersion": self.app_version,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], where: str) -> ChartEntry:
        name, version = doc["name"], doc["version"]
        if not _SAFE_NAME.fullmatch(name):
            raise FormatError(f"{where}.name: {name!r} is not a chart name")
        try:
            Version.parse(version)
        except FormatError:
            raise FormatError(f"{where}.version: {version!r} is not a semantic version") from None
        ref = ImageReference.parse(doc["ref"])
        if str(ref) != doc["ref"]:
            raise FormatError(f"{where}.ref: {doc['ref']!r} is not in normalized form ({ref})")
        return cls(
            name,
            version,
            ref,
            doc["source"],
            Digest.parse(doc["digest"]),
            Digest.parse(doc["chartDigest"]),
            doc["chartSize"],
            doc.get("appVersion", ""),
        )
