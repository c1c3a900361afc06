"""Walk an image's manifests at its source and list what a bundle must carry."""

from __future__ import annotations

from dataclasses import dataclass, field

from airbundle.adapters.images import ImageSource
from airbundle.errors import FormatError, SourceError
from airbundle.format.digest import Digest
from airbundle.format.oci import (
    OCI_INDEX,
    Descriptor,
    Platform,
    config_platform,
    index_bytes,
    parse_manifest,
)
from airbundle.format.reference import ImageReference
from airbundle.limits import DEFAULT_LIMITS, Limits

_MAX_INDEX_DEPTH = 4


@dataclass
class CollectedImage:
    ref: ImageReference
    source_text: str
    source: ImageSource
    root: Descriptor
    platforms: tuple[str, ...]
    source_digest: Digest | None = None
    # Manifest and index documents by digest (exact bytes), root first.
    documents: dict[Digest, bytes] = field(default_factory=dict)
    # Config and layer descriptors in the order they appear.
    blobs: list[Descriptor] = field(default_factory=list)
    # Artifacts that refer to this image (signatures, SBOMs), when asked for.
    referrers: list[CollectedImage] = field(default_factory=list)


def collect_image(
    source: ImageSource,
    ref: ImageReference,
    platforms: tuple[Platform, ...] | None,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> CollectedImage:
    what = source.describe()
    resolved = source.resolve()
    root = resolved.descriptor
    image = CollectedImage(ref, what, source, root, ())
    try:
        root_bytes = source.read_manifest(root)
        parsed = parse_manifest(
            root_bytes, declared_type=root.media_type, where=what, limits=limits
        )
        found: list[str] = []
        if parsed.is_index:
            children = list(parsed.children)
            if platforms:
                children = _select(children, platforms, what)
                if [c.digest for c in children] != [c.digest for c in parsed.children]:
                    # A subset changes the index digest; the original is recorded
                    # so that pins on it can be explained (docs/bundle-format.md).
                    root_bytes = index_bytes(children)
                    image.source_digest = root.digest
                    root = Descriptor(OCI_INDEX, Digest.sha256_of(root_bytes), len(root_bytes))
            for child in children:
                _walk(source, child, image, found, limits, depth=1)
                if child.platform:
                    found.append(str(child.platform))
        else:
            if platforms:
                _check_single_platform(source, parsed.blobs[0], platforms, what, limits)
            _add_blobs(parsed.blobs, image)
        image.root = root
        # Root first, then children: an importer reading the stream discovers
        # every document from the ones before it (docs/bundle-format.md).
        image.documents = {root.digest: root_bytes, **image.documents}
        image.platforms = tuple(dict.fromkeys(found))
    except FormatError as exc:
        raise SourceError(f"{what}: {exc.message}") from None
    return image


def _check_single_platform(
    source: ImageSource,
    config: Descriptor,
    wanted: tuple[Platform, ...],
    what: str,
    limits: Limits,
) -> None:
    """`platforms:` on a single-platform image: it must ask for exactly the
    platform the image's config declares, never be ignored in silence."""
    if config.size > limits.max_oci_manifest_bytes:
        raise SourceError(f"{what}: image config of {config.size} bytes is too large to read")
    data = b"".join(source.open_blob(config))
    if len(data) != config.size or Digest.sha256_of(data) != config.digest:
        raise SourceError(f"{what}: image config does not match its digest {config.digest}")
    where = f"{what} config"
    have = config_platform(data, media_type=config.media_type, where=where, limits=limits)
    if have is None:
        raise SourceError(
            f"{what}: platforms: {', '.join(map(str, wanted))} asked for, but the image is a "
            "single manifest whose config declares no platform",
            hint="remove `platforms:` from this image in the spec",
        )
    missing = [str(p) for p in wanted if not p.matches(have)]
    if missing:
        raise SourceError(
            f"{what}: no manifest for platform {', '.join(missing)} (the image is a single "
            f"manifest for {have})",
            hint=f"remove `platforms:` or ask for {have}",
        )


def _select(
    children: list[Descriptor], wanted: tuple[Platform, ...], what: str
) -> list[Descriptor]:
    chosen: list[Descriptor] = []
    for platform in wanted:
        matches = [c for c in children if c.platform and platform.matches(c.platform)]
        if not matches:
            have = ", ".join(sorted({str(c.platform) for c in children if c.platform}))
            raise SourceError(f"{what}: no manifest for platform {platform} (index has: {have})")
        chosen.extend(m for m in matches if m not in chosen)
    # Keep the index's own order so the subset is deterministic.
    return [c for c in children if c in chosen]


def _walk(
    source: ImageSource,
    desc: Descriptor,
    image: CollectedImage,
    found: list[str],
    limits: Limits,
    *,
    depth: int,
) -> None:
    if depth > _MAX_INDEX_DEPTH:
        raise SourceError(f"{image.source_text}: indexes nested deeper than {_MAX_INDEX_DEPTH}")
    data = source.read_manifest(desc)
    parsed = parse_manifest(
        data,
        declared_type=desc.media_type,
        where=f"{image.source_text}@{desc.digest}",
        limits=limits,
    )
    image.documents[desc.digest] = data
    if parsed.is_index:
        for child in parsed.children:
            _walk(source, child, image, found, limits, depth=depth + 1)
    else:
        _add_blobs(parsed.blobs, image)


def _add_blobs(blobs: tuple[Descriptor, ...], image: CollectedImage) -> None:
    for blob in blobs:
        if all(b.digest != blob.digest for b in image.blobs):
            image.blobs.append(blob)
