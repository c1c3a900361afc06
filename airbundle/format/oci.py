"""OCI image-spec values: descriptors, platforms, manifests, indexes, layouts.

Manifests are kept as the exact bytes they arrived as (their digest is the
image's identity); this module only reads them to find what they reference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from airbundle.errors import InvalidOCIError
from airbundle.format import schemas
from airbundle.format.digest import Digest
from airbundle.format.jsonutil import loads_strict
from airbundle.limits import DEFAULT_LIMITS, Limits

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
REF_NAME = "org.opencontainers.image.ref.name"
# On an OCI layout's index.json entry: an index some of whose platform
# manifests are deliberately absent (a platform subset kept under the upstream
# digest), so that readers serve what is there instead of refusing the image.
SPARSE_INDEX = "org.airbundle.index.sparse"
LAYOUT_FILE = b'{"imageLayoutVersion":"1.0.0"}'


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidOCIError(f"invalid platform {text!r}: expected os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base

    def matches(self, other: Platform) -> bool:
        """True if `other` (found in an index) satisfies this requested platform.

        A request without a variant accepts any variant (linux/arm64 matches
        linux/arm64/v8), as docker and skopeo do.
        """
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        return self.variant is None or self.variant == other.variant


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def from_json(cls, doc: Any, where: str) -> Descriptor:
        if not isinstance(doc, dict):
            raise InvalidOCIError(f"{where}: descriptor is not an object")
        media_type = doc.get("mediaType")
        size = doc.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise InvalidOCIError(f"{where}: descriptor has no mediaType")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidOCIError(f"{where}: descriptor size {size!r} is not a non-negative int")
        digest = Digest.parse(str(doc.get("digest")))
        platform = None
        if isinstance(doc.get("platform"), dict):
            p = doc["platform"]
            if not isinstance(p.get("os"), str) or not isinstance(p.get("architecture"), str):
                raise InvalidOCIError(f"{where}: platform lacks os or architecture")
            variant = p.get("variant")
            platform = Platform(p["os"], p["architecture"], variant if variant else None)
        annotations = doc.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise InvalidOCIError(f"{where}: annotations must map strings to strings")
        return cls(media_type, digest, size, platform, dict(annotations), dict(doc))

    def to_json(self) -> dict[str, Any]:
        out = dict(self.raw) if self.raw else {}
        out.update({"mediaType": self.media_type, "digest": str(self.digest), "size": self.size})
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class ParsedManifest:
    """What an image manifest or index references, in the order to copy it."""

    media_type: str
    children: tuple[Descriptor, ...]  # index: platform manifests
    blobs: tuple[Descriptor, ...]  # manifest: config then layers
    subject: Descriptor | None = None

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


IMAGE_CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})


def config_platform(
    data: bytes, *, media_type: str, where: str, limits: Limits = DEFAULT_LIMITS
) -> Platform | None:
    """The platform an image config declares (`os`, `architecture`, `variant`),
    or None for a config that is not an image's (an artifact's)."""
    if media_type not in IMAGE_CONFIG_TYPES:
        return None
    doc = loads_strict(
        data,
        what=where,
        max_bytes=limits.max_oci_manifest_bytes,
        max_depth=limits.max_json_depth,
        error=InvalidOCIError,
    )
    if not isinstance(doc, dict):
        raise InvalidOCIError(f"{where}: image config is not a JSON object")
    os_, arch, variant = doc.get("os"), doc.get("architecture"), doc.get("variant")
    if not (isinstance(os_, str) and os_ and isinstance(arch, str) and arch):
        return None
    return Platform(os_, arch, variant if isinstance(variant, str) and variant else None)


def parse_manifest(
    data: bytes, *, declared_type: str | None, where: str, limits: Limits = DEFAULT_LIMITS
) -> ParsedManifest:
    doc = loads_strict(
        data,
        what=where,
        max_bytes=limits.max_oci_manifest_bytes,
        max_depth=limits.max_json_depth,
        error=InvalidOCIError,
    )
    if not isinstance(doc, dict):
        raise InvalidOCIError(f"{where}: not a JSON object")
    schemas.check(schemas.OCI_MANIFEST, doc, what=where, error=InvalidOCIError)
    media_type = doc.get("mediaType") or declared_type
    if media_type is None:
        # OCI allows omitting mediaType; the shape decides.
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if declared_type and doc.get("mediaType") and doc["mediaType"] != declared_type:
        raise InvalidOCIError(
            f"{where}: manifest says mediaType {doc['mediaType']!r}, "
            f"its descriptor says {declared_type!r}"
        )
    subject = Descriptor.from_json(doc["subject"], f"{where}.subject") if "subject" in doc else None
    if media_type in INDEX_TYPES:
        manifests = doc.get("manifests")
        if not isinstance(manifests, list):
            raise InvalidOCIError(f"{where}: index has no manifests list")
        children = tuple(
            Descriptor.from_json(d, f"{where}.manifests[{i}]") for i, d in enumerate(manifests)
        )
        return ParsedManifest(media_type, children, (), subject)
    if media_type in MANIFEST_TYPES:
        config = Descriptor.from_json(doc.get("config"), f"{where}.config")
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise InvalidOCIError(f"{where}: manifest has no layers list")
        blobs = (
            config,
            *(Descriptor.from_json(d, f"{where}.layers[{i}]") for i, d in enumerate(layers)),
        )
        return ParsedManifest(media_type, (), blobs, subject)
    raise InvalidOCIError(f"{where}: unsupported manifest media type {media_type!r}")


def layout_index(entries: list[Descriptor]) -> bytes:
    """index.json of an OCI layout listing `entries`, deterministic bytes."""
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [d.to_json() for d in entries],
    }
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8")


def index_bytes(children: list[Descriptor], *, annotations: dict[str, str] | None = None) -> bytes:
    """An OCI image index document referencing `children` (for platform subsets)."""
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [d.to_json() for d in children],
    }
    if annotations:
        doc["annotations"] = annotations
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")


def referrer_of(
    data: bytes, *, media_type: str, where: str, limits: Limits = DEFAULT_LIMITS
) -> tuple[Digest, Descriptor] | None:
    """For a manifest with a `subject`: the subject's digest, and the
    descriptor that lists this manifest among its referrers (with
    `artifactType`, the config's media type when the manifest names none, and
    its annotations), as the distribution spec's referrers index holds it."""
    parsed = parse_manifest(data, declared_type=media_type, where=where, limits=limits)
    if parsed.subject is None:
        return None
    doc = json.loads(data)
    kind = doc.get("artifactType")
    if not isinstance(kind, str) or not kind:
        config = doc.get("config")
        kind = config.get("mediaType") if isinstance(config, dict) else None
    raw: dict[str, Any] = {"artifactType": kind} if isinstance(kind, str) and kind else {}
    annotations = doc.get("annotations")
    if isinstance(annotations, dict):
        kept = {k: v for k, v in annotations.items() if isinstance(k, str) and isinstance(v, str)}
        if kept:
            raw["annotations"] = kept
    desc = Descriptor(parsed.media_type, Digest.sha256_of(data), len(data), None, {}, raw)
    return parsed.subject.digest, desc


def repeated_layers(parsed: ParsedManifest) -> list[Digest]:
    """Layer digests a manifest lists more than once (cosign signature
    manifests can; some registries refuse them)."""
    seen: set[Digest] = set()
    repeated: list[Digest] = []
    for blob in parsed.blobs[1:]:
        if blob.digest in seen and blob.digest not in repeated:
            repeated.append(blob.digest)
        seen.add(blob.digest)
    return repeated
