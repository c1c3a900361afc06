"""Resolve the spec's images at their sources, walk their manifests, and list
what a bundle must carry (export and plan)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from airbundle.adapters.images import FixedRootSource, ImageSource, ReferringSource
from airbundle.errors import FormatError, SourceError, UsageError
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
from airbundle.format.spec import BundleSpec, ImageSpec
from airbundle.limits import DEFAULT_LIMITS, Limits
from airbundle.ops.sources import Sources


@dataclass
class CollectedImage:
    ref: ImageReference
    source_text: str
    source: ImageSource
    root: Descriptor
    platforms: tuple[str, ...]
    source_digest: Digest | None = None
    # With a platform subset: the index the source holds (what its signatures cover).
    source_index: bytes | None = None
    # The source's index when a platform subset left some of its platforms
    # behind: carried as it is (a sparse index), beside the subset index.
    source_root: Descriptor | None = None
    # Manifest and index documents by digest (exact bytes), root first.
    documents: dict[Digest, bytes] = field(default_factory=dict)
    # Config and layer descriptors in the order they appear.
    blobs: list[Descriptor] = field(default_factory=list)
    # Artifacts that refer to this image (signatures, SBOMs), when asked for.
    referrers: list[CollectedImage] = field(default_factory=list)
    # The charts (their refs) whose `images: true` asked for this image.
    requested_by: list[str] = field(default_factory=list)


def total_size(image: CollectedImage) -> int:
    """The image's whole size: its documents and every config and layer, each
    once (platforms share layers); its referrers are images of their own."""
    return sum(len(d) for d in image.documents.values()) + sum(b.size for b in image.blobs)


def plan_images(spec: BundleSpec, sources: Sources) -> list[CollectedImage]:
    """Resolve every image and fetch its manifests; round trips overlap in a
    bounded pool (hundreds of small images are latency-bound, not byte-bound)."""
    workers = max(1, min(sources.limits.planning_workers, len(spec.images)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_plan_one, item, sources) for item in spec.images]
        images = [f.result() for f in futures]
    seen: dict[str, str] = {}
    for item, image in zip(spec.images, images, strict=True):
        key = str(image.ref)
        if key in seen:
            raise UsageError(
                f"image {key} is listed twice in the spec ({seen[key]} and {item.text})"
            )
        seen[key] = item.text
    return images


def subset_warnings(
    images: list[CollectedImage], reviewed: frozenset[str] = frozenset()
) -> list[str]:
    """What a platform subset means for pins, once per image: by `plan`, and
    by `export` for the images no lock file pinned (`reviewed`: the spec
    texts a lock pinned, whose plan already said it)."""
    return [
        f"{img.source_text}: carrying {', '.join(img.platforms)} only: the source index "
        f"{img.source_digest} travels as it is (sparse) beside a subset index "
        f"{img.root.digest}; references pinned to {img.source_digest} resolve where the "
        "target takes a sparse index (an OCI layout, serve, `airbundle probe` says for a "
        f"registry), elsewhere the import tags {img.root.digest} and says so"
        for img in images
        if img.source_digest is not None and img.source_text not in reviewed
    ]


def _plan_one(item: ImageSpec, sources: Sources) -> CollectedImage:
    """One spec entry: its image, and with `referrers: true` the artifacts
    that refer to it, each checked against the lock file if there is one."""
    if item.referrers:
        # The spec allows referrers for registry images only.
        referring = sources.open_referring(item.source, text=item.text)
        image = _resolve(item, referring, sources.limits)
        image.referrers += _collect_referrers(item, referring, image, sources.limits)
    else:
        image = _resolve(item, sources.open(item.source, text=item.text), sources.limits)
    for carried in [image, *image.referrers]:
        for digest in [*carried.documents, *(b.digest for b in carried.blobs)]:
            if digest.algorithm != "sha256":
                raise SourceError(
                    f"{item.text}: blob {digest} uses {digest.algorithm}; "
                    "bundles carry sha256 blobs only"
                )
    return image


def _resolve(item: ImageSpec, source: ImageSource, limits: Limits) -> CollectedImage:
    resolved_name = None
    # Resolve once for the recorded name; collect_image resolves again
    # (cheap for local sources, one request for a registry).
    if item.name is None and item.source.transport != "docker":
        resolved_name = source.resolve().recorded_name
    image = collect_image(source, _image_name(item, resolved_name), item.platforms, limits=limits)
    if item.pinned is not None and item.pinned not in (image.root.digest, image.source_digest):
        raise SourceError(
            f"{item.text}: resolves to {image.root.digest}, the lock file pins {item.pinned}",
            hint="the source changed since `airbundle plan`: review and plan again",
        )
    return image


def _collect_referrers(
    item: ImageSpec, source: ReferringSource, image: CollectedImage, limits: Limits
) -> list[CollectedImage]:
    return [
        collect_image(
            FixedRootSource(source, desc, f"{item.text} (referrer {desc.digest})"),
            replace(image.ref, tag=tag, digest=None if tag else desc.digest),
            None,
            limits=limits,
        )
        for desc, tag in _referrers(item, source, image)
    ]


def _referrers(
    item: ImageSpec, source: ReferringSource, image: CollectedImage
) -> list[tuple[Descriptor, str | None]]:
    """The artifacts to carry with `image`: those a lock file pins, fetched by
    digest (a signature added since the plan was reviewed stays behind), or
    else every one the registry lists for its root and child manifests."""
    if item.pinned_referrers is not None:
        pinned = []
        for digest, tag in item.pinned_referrers:
            desc = source.descriptor_of(digest)
            if desc is None:
                raise SourceError(
                    f"{item.text}: the lock file pins referrer {digest}, which the registry "
                    "no longer has",
                    hint="the source changed since `airbundle plan`: review and plan again",
                )
            pinned.append((desc, tag))
        return pinned
    subjects = [image.root.digest, *(d for d in image.documents if d != image.root.digest)]
    found: dict[Digest, tuple[Descriptor, str | None]] = {}
    for subject in subjects:
        for desc, tag in source.referrers(subject):
            found.setdefault(desc.digest, (desc, tag))
    return list(found.values())


def _image_name(spec: ImageSpec, recorded: str | None) -> ImageReference:
    if spec.name is not None:
        return spec.name
    if spec.source.transport == "docker":
        assert spec.source.reference is not None
        return spec.source.reference
    if not recorded or ("/" not in recorded and ":" not in recorded):
        raise SourceError(
            f"{spec.text}: the source names the image only {recorded!r}, not a full reference",
            hint="add `name: REGISTRY/REPOSITORY:TAG` to this image in the spec",
        )
    try:
        return ImageReference.parse(recorded)
    except Exception as exc:
        raise SourceError(
            f"{spec.text}: recorded name {recorded!r} is not a reference: {exc}"
        ) from None


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
        source_bytes = b""
        if parsed.is_index:
            children = list(parsed.children)
            if platforms:
                children = _select(children, platforms, what)
                if [c.digest for c in children] != [c.digest for c in parsed.children]:
                    # A subset is carried twice over: a new index of the chosen
                    # platforms (what every target takes), and the source's index
                    # byte for byte (sparse), so that pins on its digest resolve
                    # where the target takes it (docs/bundle-format.md). Vetting
                    # judges the source index too (what its signatures cover).
                    source_bytes = root_bytes
                    image.source_index = root_bytes
                    image.source_digest = root.digest
                    image.source_root = Descriptor(root.media_type, root.digest, len(root_bytes))
                    root_bytes = index_bytes(children)
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
        # Root first (and the source's index, named in the manifest too), then
        # children: an importer reading the stream discovers every document
        # from the ones before it (docs/bundle-format.md).
        sparse = {image.source_digest: source_bytes} if image.source_digest else {}
        image.documents = {root.digest: root_bytes, **sparse, **image.documents}
        image.platforms = tuple(dict.fromkeys(found))
    except FormatError as exc:
        raise SourceError(f"{what}: {exc.message}") from None
    check_ref_digest(image)
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


def check_ref_digest(image: CollectedImage) -> None:
    """A digest in the name an image is carried under must be the digest of the
    root the bundle carries: the importer tags it under that name (and an OCI
    layout's index.json records it), so any other digest would be a lie."""
    pinned = image.ref.digest
    # A platform subset carries the source's index too (sparse): its digest is
    # one the importer may publish under the name.
    carried = {image.root.digest, image.source_digest if image.source_index else None}
    if pinned is None or pinned in carried:
        return
    raise SourceError(
        f"{image.source_text}: the image is named {image.ref}, but the root it carries is "
        f"{image.root.digest}",
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
    if depth > limits.max_index_depth:
        raise SourceError(
            f"{image.source_text}: indexes nested deeper than {limits.max_index_depth}"
        )
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
