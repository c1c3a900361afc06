"""Media-sized volumes: a bundle's bytes cut into NAME.001, NAME.002, ... plus a
signed volume index that lets anyone check each volume on its own.

A volume is a plain byte range of the bundle file, so `cat NAME.0*` gives the
bundle back. The index hashes each volume's bytes, except the first volume's
header and prefix region: that region changes when a bundle is co-signed, and
is authenticated by the manifest signatures inside it anyway.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from airbundle.errors import FormatError, ManifestError, UsageError
from airbundle.format import schemas
from airbundle.format.digest import Digest
from airbundle.format.jsonutil import loads_strict
from airbundle.limits import DEFAULT_LIMITS, Limits

KIND = "VolumeIndex"
API_VERSION = "airbundle/v1"
INDEX_SUFFIX = ".volumes"
SIGNATURE_SUFFIX = ".volumes.sig"
MAX_VOLUMES = DEFAULT_LIMITS.max_volumes

GiB = 1 << 30
PRESETS = {
    "fat32": 4 * GiB - 1,  # FAT32's largest file
    "dvd": 4_700_000_000,  # DVD±R single layer, as sold
    "bd25": 25_025_314_816,  # BD-R single layer
    "bd50": 50_050_629_632,  # BD-R dual layer
}
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)")


def parse_size(text: str) -> int:
    """`4GiB`, `700MB`, `4700000000`, or a preset (fat32, dvd, bd25, bd50)."""
    preset = PRESETS.get(text.strip().lower())
    if preset is not None:
        return preset
    match = _SIZE.fullmatch(text.strip())
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise UsageError(
            f"invalid size {text!r}: use bytes with a unit (4GiB, 700MB) or a preset "
            f"({', '.join(PRESETS)})"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def volume_name(base: str, number: int) -> str:
    return f"{base}.{number:03d}"


@dataclass(frozen=True)
class VolumeEntry:
    name: str  # file name only, no folder
    size: int
    covered_from: int  # offset inside this volume where the hashed range starts
    digest: Digest  # sha256 of bytes [covered_from, size)


@dataclass(frozen=True)
class VolumeIndex:
    bundle: str  # base file name of the bundle, e.g. weekly.airbundle
    total_length: int
    volumes: tuple[VolumeEntry, ...]

    def to_bytes(self) -> bytes:
        doc = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "bundle": self.bundle,
            "totalLength": self.total_length,
            "volumes": [
                {
                    "name": v.name,
                    "size": v.size,
                    "coveredFrom": v.covered_from,
                    "digest": str(v.digest),
                }
                for v in self.volumes
            ],
        }
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(
        cls, data: bytes, *, source: str, limits: Limits = DEFAULT_LIMITS
    ) -> VolumeIndex:
        doc = loads_strict(
            data,
            what=f"volume index {source}",
            max_bytes=limits.max_volume_index_bytes,
            max_depth=limits.max_flat_json_depth,
            error=ManifestError,
        )
        schemas.check(
            schemas.VOLUME_INDEX, doc, what=f"volume index {source}", error=ManifestError
        )
        try:
            return _parse(doc, source)
        except (KeyError, TypeError, ValueError, FormatError) as exc:
            raise ManifestError(f"volume index {source} is malformed: {exc}") from None


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")


def _parse(doc: Any, source: str) -> VolumeIndex:
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        raise ManifestError(f"{source} is not an airbundle volume index")
    bundle = doc["bundle"]
    total = doc["totalLength"]
    if not isinstance(bundle, str) or not _NAME.fullmatch(bundle):
        raise ManifestError(f"volume index {source}: bad bundle name {bundle!r}")
    if not isinstance(total, int) or total < 0:
        raise ManifestError(f"volume index {source}: bad total length")
    volumes = []
    raw = doc["volumes"]
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_VOLUMES:
        raise ManifestError(f"volume index {source}: expected 1 to {MAX_VOLUMES} volumes")
    for i, v in enumerate(raw, start=1):
        name = v["name"]
        # Names become paths next to the index: nothing but the expected name.
        if name != volume_name(bundle, i):
            raise ManifestError(f"volume index {source}: volume {i} is named {name!r}")
        size, covered = v["size"], v["coveredFrom"]
        if not (isinstance(size, int) and isinstance(covered, int) and 0 <= covered <= size):
            raise ManifestError(f"volume index {source}: volume {name} has bad sizes")
        volumes.append(VolumeEntry(name, size, covered, Digest.parse(v["digest"])))
    if sum(v.size for v in volumes) != total:
        raise ManifestError(f"volume index {source}: volume sizes do not add up to {total}")
    return VolumeIndex(bundle, total, tuple(volumes))
