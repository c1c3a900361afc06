"""Media-sized volumes: a bundle's bytes cut into NAME.001, NAME.002, ... plus a
signed volume index that lets anyone check each volume on its own.

A volume is a plain byte range of the bundle file, so `cat NAME.0*` gives the
bundle back. The index hashes each volume's bytes, except the first volume's
header and prefix region: that region changes when a bundle is co-signed, and
is authenticated by the manifest signatures inside it anyway.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from airbundle.errors import FormatError, ManifestError, UsageError
from airbundle.format import erasure, schemas
from airbundle.format.digest import Digest
from airbundle.format.jsonutil import loads_strict
from airbundle.limits import DEFAULT_LIMITS, Limits

KIND = "VolumeIndex"
API_VERSION = "airbundle/v1"
INDEX_SUFFIX = ".volumes"
SIGNATURE_SUFFIX = ".volumes.sig"
MAX_VOLUMES = DEFAULT_LIMITS.max_volumes
MAX_PARITY_VOLUMES = DEFAULT_LIMITS.max_parity_volumes

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


def parity_name(base: str, number: int) -> str:
    return f"{base}.p{number:02d}"


def parse_parity(text: str) -> int | float:
    """`--parity N` (volumes) or `P%` (of the data volumes, rounded up): an
    int, or the fraction as a float."""
    raw = text.strip()
    try:
        if raw.endswith("%"):
            percent = float(raw[:-1])
            if not 0 < percent <= 10_000:
                raise ValueError
            return percent / 100
        count = int(raw)
        if not 1 <= count <= MAX_PARITY_VOLUMES:
            raise ValueError
        return count
    except ValueError:
        raise UsageError(
            f"invalid --parity {text!r}: a number of parity volumes (1 to "
            f"{MAX_PARITY_VOLUMES}) or a percentage of the data volumes, such as 10%"
        ) from None


def parity_count(parity: int | float, data_volumes: int) -> int:
    """How many parity volumes `--parity` asks for, given the data volumes."""
    if isinstance(parity, int):
        return parity
    return max(1, math.ceil(round(parity * data_volumes, 9)))


@dataclass(frozen=True)
class VolumeEntry:
    name: str  # file name only, no folder
    size: int
    covered_from: int  # offset inside this volume where the hashed range starts
    digest: Digest  # sha256 of bytes [covered_from, size)


@dataclass(frozen=True)
class ParityInfo:
    """The parity volumes of a set (docs/bundle-format.md, "Parity volumes").

    Each data volume is one shard of `shard_size` bytes (zero-padded; the
    first volume's [0, coveredFrom) read as zeros, since co-signing rewrites
    it). A parity volume holds a copy of that region, then its shard: its
    coveredFrom is the first volume's, its size coveredFrom + shard_size."""

    scheme: str
    shard_size: int
    volumes: tuple[VolumeEntry, ...]

    @property
    def count(self) -> int:
        return len(self.volumes)

    def to_json(self, data_volumes: int) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "dataVolumes": data_volumes,
            "parityVolumes": self.count,
            "shardSize": self.shard_size,
            "volumes": [_entry_json(v) for v in self.volumes],
        }


@dataclass(frozen=True)
class VolumeIndex:
    bundle: str  # base file name of the bundle, e.g. weekly.airbundle
    total_length: int
    volumes: tuple[VolumeEntry, ...]
    parity: ParityInfo | None = None

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "bundle": self.bundle,
            "totalLength": self.total_length,
            "volumes": [_entry_json(v) for v in self.volumes],
        }
        if self.parity is not None:
            doc["parity"] = self.parity.to_json(len(self.volumes))
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()

    def entry(self, name: str) -> VolumeEntry | None:
        """A data or parity volume of the set, by file name."""
        every = self.volumes + (self.parity.volumes if self.parity else ())
        return next((v for v in every if v.name == name), None)

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


def _entry_json(v: VolumeEntry) -> dict[str, Any]:
    return {"name": v.name, "size": v.size, "coveredFrom": v.covered_from, "digest": str(v.digest)}


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
    parity = _parse_parity(doc["parity"], bundle, volumes, source) if "parity" in doc else None
    return VolumeIndex(bundle, total, tuple(volumes), parity)


_PARITY_FIELDS = {"scheme", "dataVolumes", "parityVolumes", "shardSize", "volumes"}
_ENTRY_FIELDS = {"name", "size", "coveredFrom", "digest"}


def _int_field(obj: dict[str, Any], key: str, where: str, source: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ManifestError(
            f"volume index {source}: {where}.{key} must be a non-negative integer, "
            f"not {value!r}"
        )
    return value


def _fields(obj: Any, allowed: set[str], where: str, source: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ManifestError(f"volume index {source}: {where} must be an object")
    unknown = sorted(set(obj) - allowed)
    missing = sorted(allowed - set(obj))
    if unknown or missing:
        what = f"unknown field {unknown[0]!r}" if unknown else f"missing field {missing[0]!r}"
        raise ManifestError(f"volume index {source}: {where} has {what}")
    return obj


def _parse_parity(
    raw: Any, bundle: str, data: list[VolumeEntry], source: str
) -> ParityInfo:
    """The parity section, every field checked against the data volumes (a
    reader rebuilds from these numbers; nothing in them may be left to trust)."""
    doc = _fields(raw, _PARITY_FIELDS, "parity", source)
    if doc["scheme"] != erasure.SCHEME:
        raise ManifestError(
            f"volume index {source}: parity.scheme {doc['scheme']!r} is not one this "
            f"airbundle knows ({erasure.SCHEME})",
            hint="read the set with a newer airbundle, or without its parity volumes",
        )
    k = _int_field(doc, "dataVolumes", "parity", source)
    m = _int_field(doc, "parityVolumes", "parity", source)
    shard = _int_field(doc, "shardSize", "parity", source)
    if k != len(data):
        raise ManifestError(
            f"volume index {source}: parity.dataVolumes is {k}, the index lists {len(data)}"
        )
    if not 1 <= m <= MAX_PARITY_VOLUMES or k + m > erasure.MAX_SHARDS:
        raise ManifestError(
            f"volume index {source}: parity.parityVolumes must be 1 to {MAX_PARITY_VOLUMES} "
            f"with at most {erasure.MAX_SHARDS} volumes in all, not {m}"
        )
    if shard != data[0].size or any(v.size > shard for v in data):
        raise ManifestError(
            f"volume index {source}: parity.shardSize must be the first volume's size "
            f"({data[0].size}), not {shard}"
        )
    entries = doc["volumes"]
    if not isinstance(entries, list) or len(entries) != m:
        raise ManifestError(
            f"volume index {source}: parity.volumes must list {m} parity volumes"
        )
    prefix = data[0].covered_from
    volumes = []
    for j, raw_entry in enumerate(entries, start=1):
        where = f"parity.volumes[{j - 1}]"
        entry = _fields(raw_entry, _ENTRY_FIELDS, where, source)
        if entry["name"] != parity_name(bundle, j):
            raise ManifestError(
                f"volume index {source}: {where}.name must be {parity_name(bundle, j)!r}, "
                f"not {entry['name']!r}"
            )
        size = _int_field(entry, "size", where, source)
        covered = _int_field(entry, "coveredFrom", where, source)
        if covered != prefix or size != prefix + shard:
            raise ManifestError(
                f"volume index {source}: {where} must cover bytes {prefix} to "
                f"{prefix + shard} (coveredFrom {covered}, size {size})"
            )
        if not isinstance(entry["digest"], str):
            raise ManifestError(f"volume index {source}: {where}.digest must be a string")
        try:
            digest = Digest.parse(entry["digest"])
        except FormatError as exc:
            raise ManifestError(f"volume index {source}: {where}.digest: {exc}") from None
        volumes.append(VolumeEntry(entry["name"], size, covered, digest))
    return ParityInfo(erasure.SCHEME, shard, tuple(volumes))
