"""What the disconnected side already holds: the base of an incremental bundle.

A base comes from a previous bundle's manifest (what it carried) or from an
inventory written on the disconnected side (what the targets hold; exact even
when bundles were lost or imported out of order). An inventory names digests
and commit ids only: no content, safe to carry back out through the gap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from airbundle.errors import FormatError, ManifestError
from airbundle.format import schemas
from airbundle.format.digest import Digest
from airbundle.format.files import FILE_PREFIX
from airbundle.format.jsonutil import loads_strict
from airbundle.format.manifest import BLOB_PREFIX, BundleManifest
from airbundle.format.paths import check_object_id, check_ref_name, check_repo_name
from airbundle.limits import DEFAULT_LIMITS, Limits

KIND = "Inventory"
API_VERSION = "airbundle/v1"


@dataclass
class Base:
    """Blobs and commits the target is known to have, and where that knowledge came from."""

    blobs: set[Digest] = field(default_factory=set)
    repos: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> ref -> oid
    sources: list[dict[str, str]] = field(default_factory=list)  # recorded in the manifest
    # Digests of files the far side's files folder holds (import --files).
    files: set[Digest] = field(default_factory=set)

    def merge(self, other: Base) -> None:
        self.blobs |= other.blobs
        self.files |= other.files
        for name, refs in other.repos.items():
            self.repos.setdefault(name, {}).update(refs)
        self.sources += other.sources

    def commits(self, repo: str) -> list[str]:
        return sorted(set(self.repos.get(repo, {}).values()))


def base_from_manifest(manifest: BundleManifest, manifest_digest: Digest) -> Base:
    blobs = {m.digest for m in manifest.members if m.path.startswith(BLOB_PREFIX)}
    files = {m.digest for m in manifest.members if m.path.startswith(FILE_PREFIX)}
    repos = {r.name: {ref.name: ref.target for ref in r.refs} for r in manifest.repos}
    source = {
        "kind": "bundle",
        "name": manifest.bundle.name,
        "id": manifest.bundle.id,
        "manifestDigest": str(manifest_digest),
    }
    return Base(blobs, repos, [source], files)


@dataclass(frozen=True)
class Inventory:
    created: str
    target: str
    blobs: tuple[Digest, ...]
    repos: dict[str, dict[str, str]]
    # The sha256 of every file in the files folder (import --files), if one was named.
    files: tuple[Digest, ...] = ()

    def to_bytes(self) -> bytes:
        doc = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "created": self.created,
            "target": self.target,
            "blobs": sorted(str(d) for d in self.blobs),
            "repos": {n: dict(sorted(r.items())) for n, r in sorted(self.repos.items())},
            **({"files": sorted(str(d) for d in self.files)} if self.files else {}),
        }
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()

    def as_base(self, digest: Digest) -> Base:
        return Base(
            set(self.blobs),
            {k: dict(v) for k, v in self.repos.items()},
            [
                {
                    "kind": "inventory",
                    "target": self.target,
                    "created": self.created,
                    "digest": str(digest),
                }
            ],
            set(self.files),
        )


def parse_inventory(data: bytes, *, source: str, limits: Limits = DEFAULT_LIMITS) -> Inventory:
    doc = loads_strict(
        data,
        what=f"inventory {source}",
        max_bytes=limits.max_inventory_bytes,
        max_depth=limits.max_flat_json_depth,
        error=ManifestError,
    )
    schemas.check(schemas.INVENTORY, doc, what=f"inventory {source}", error=ManifestError)
    try:
        return _parse(doc)
    except (KeyError, TypeError, ValueError, FormatError) as exc:
        raise ManifestError(f"inventory {source} is malformed: {exc}") from None


def _parse(doc: Any) -> Inventory:
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        raise ManifestError("not an airbundle inventory")
    blobs = tuple(Digest.parse(d) for d in doc["blobs"])
    repos: dict[str, dict[str, str]] = {}
    for name, refs in doc["repos"].items():
        check_repo_name(name, error=ManifestError)
        repos[name] = {
            check_ref_name(r, error=ManifestError): check_object_id(o, error=ManifestError)
            for r, o in refs.items()
        }
    files = tuple(Digest.parse(d) for d in doc.get("files", []))
    return Inventory(str(doc.get("created", "")), str(doc.get("target", "")), blobs, repos, files)
