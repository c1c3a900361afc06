"""Plan an export before carrying anything: resolve every reference, estimate the
size and the media, and pin it all in a lock file a later export reproduces."""

from __future__ import annotations

import json
import math
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from airbundle.adapters import git
from airbundle.adapters.blobcache import BlobCache
from airbundle.adapters.cache import git_mirror
from airbundle.adapters.fsutil import read_regular
from airbundle.adapters.registry.transport import Transport
from airbundle.errors import FormatError, SourceError, UsageError
from airbundle.format import schemas
from airbundle.format.archive import HEADER_SIZE, prefix_upper_bound
from airbundle.format.digest import Digest
from airbundle.format.inventory import Base
from airbundle.format.jsonutil import loads_strict
from airbundle.format.paths import check_object_id, check_ref_name
from airbundle.format.policy import ImagePolicy
from airbundle.format.spec import BundleSpec, ChartPin, ImageSpec, RepoSpec, SourceRef
from airbundle.format.tarstream import BLOCK, padding
from airbundle.limits import DEFAULT_LIMITS, Limits
from airbundle.ops.base import load_bases
from airbundle.ops.carried_files import plan_files
from airbundle.ops.charts import plan_charts
from airbundle.ops.collect import CollectedImage, plan_images, subset_warnings, total_size
from airbundle.ops.lock_extras import (
    PlannedChart,
    PlannedFiles,
    apply_lock_extras,
    lock_json,
    planned_chart,
    planned_files,
    read_lock_extras,
)
from airbundle.ops.sources import Sources
from airbundle.ops.vetting import Judged, judge_images

LOCK_KIND = "BundleLock"


@dataclass(frozen=True)
class PlannedImage:
    text: str  # as written in the spec
    ref: str
    digest: str
    platforms: tuple[str, ...]
    size: int  # bytes this export would carry for it (blobs not in the base)
    total: int  # the image's full size
    # With `referrers: true`: the artifacts found (digest, tag kept or None),
    # pinned in the lock like the image; None when not asked for.
    referrers: tuple[tuple[str, str | None], ...] | None = None
    # With --policy: the verdict (scope, signers or reasons); None without.
    policy: str | None = None
    accepted: bool = True
    # The charts whose `images: true` asked for it (such an image is pinned
    # in the lock under its chart, not as a spec image).
    requested_by: tuple[str, ...] = ()
    from_chart: bool = False
    # A platform subset: the index the bundle carries for it (`digest` is the
    # source's, what the lock pins and the registry knows); None otherwise.
    subset_digest: str | None = None


@dataclass(frozen=True)
class PlannedRepo:
    name: str
    url: str
    refs: dict[str, str]
    size: int  # packed size of the history this export would carry (not in the base)


@dataclass(frozen=True)
class Plan:
    images: tuple[PlannedImage, ...]
    repos: tuple[PlannedRepo, ...]
    image_bytes: int
    volumes: int | None
    # The whole bundle, estimated: images and git history as they pack, the
    # tar framing, the header and the reserved prefix (before compression,
    # which gains nothing on layers and packs).
    bundle_bytes: int = 0
    charts: tuple[PlannedChart, ...] = ()
    files: tuple[PlannedFiles, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def rejected(self) -> tuple[PlannedImage | PlannedChart, ...]:
        """The images and charts the image policy would reject (export would stop)."""
        return (
            *(i for i in self.images if not i.accepted),
            *(c for c in self.charts if not c.accepted),
        )

    def lock_bytes(self) -> bytes:
        doc = {
            "apiVersion": "airbundle/v1",
            "kind": LOCK_KIND,
            "images": [_lock_image(i) for i in self.images if not i.from_chart],
            "repos": [{"name": r.name, "refs": dict(sorted(r.refs.items()))} for r in self.repos],
            **lock_json(self.charts, self.files),
        }
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def _lock_image(image: PlannedImage) -> dict[str, Any]:
    doc: dict[str, Any] = {"spec": image.text, "ref": image.ref, "digest": image.digest}
    if image.referrers is not None:
        doc["referrers"] = [{"digest": d, "tag": t} for d, t in image.referrers]
    return doc


def _plan_repo(spec: RepoSpec, base: Base, cache_dir: Path | None, scratch: Path) -> PlannedRepo:
    """Fetch the selected refs into the export's git mirror (the export that
    follows then fetches only what moved) and measure the history to carry."""
    what = f"repo {spec.name!r}"
    with git_mirror(spec.url, spec.name, cache_dir, scratch) as bare:
        refs, _head = git.fetch_selected_refs(spec.url, spec.refs, bare, what=what)
        if not refs:
            raise SourceError(f"{what}: none of {', '.join(spec.refs)} exist")
        size = git.history_size(bare, [oid for _, oid in refs], base.commits(spec.name), what=what)
    return PlannedRepo(spec.name, spec.written_url or spec.url, dict(refs), size)


def _member_bytes(size: int) -> int:
    return BLOCK + size + padding(size)


@dataclass
class _Tally:
    """What the bundle carries so far: digests seen, bytes with tar framing, members."""

    base: Base
    seen: set[Digest] = field(default_factory=set)
    framed: int = 0  # the members with their tar headers and padding
    members: int = 0

    def member(self, size: int) -> None:
        self.framed += _member_bytes(size)
        self.members += 1

    def image(self, image: CollectedImage) -> tuple[int, int]:
        """Bytes carried for the image (and its referrers), and its whole size."""
        total = size = 0
        for part in (image, *image.referrers):
            total += total_size(part)
            for digest, data in part.documents.items():
                if digest not in self.seen:
                    size += len(data)
                    self.member(len(data))
                    self.seen.add(digest)
            for blob in part.blobs:
                if blob.digest not in self.base.blobs and blob.digest not in self.seen:
                    size += blob.size
                    self.member(blob.size)
                    self.seen.add(blob.digest)
        return size, total


def _planned_image(
    text: str,
    image: CollectedImage,
    size: int,
    total: int,
    judgement: Judged | None,
    referrers: tuple[tuple[str, str | None], ...] | None = None,
    *,
    from_chart: bool = False,
) -> PlannedImage:
    return PlannedImage(
        text,
        str(image.ref),
        # The source's digest: a platform subset's index is ours, the registry
        # only knows the one it came from (the lock pins that one).
        str(image.source_digest or image.root.digest),
        image.platforms,
        size,
        total,
        referrers,
        judgement.describe() if judgement else None,
        judgement.verdict.accepted if judgement else True,
        tuple(dict.fromkeys(image.requested_by)),
        from_chart=from_chart,
        subset_digest=str(image.root.digest) if image.source_digest else None,
    )


def make_plan(
    spec: BundleSpec,
    *,
    since: tuple[Path, ...] = (),
    split_size: int | None = None,
    transport: Transport | None = None,
    cache_dir: Path | None = None,
    policy: ImagePolicy | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Plan:
    base = load_bases(since, limits=limits)
    sources = Sources(transport or Transport(), limits)
    images = plan_images(spec, sources)
    charts = plan_charts(spec, sources, images)
    chart_specs, chart_images = charts.judged()
    # Manifests and signature payloads only: nothing is downloaded in full. The
    # images charts ask for are judged like the spec's own.
    judged = (
        judge_images(
            replace(spec, images=(*spec.images, *chart_specs)),
            [*images, *chart_images],
            sources,
            policy,
        )
        if policy is not None
        else None
    )
    planned = []
    tally = _Tally(base)
    carried = 0
    for n, (item, image) in enumerate(zip(spec.images, images, strict=True)):
        size, total = tally.image(image)
        carried += size
        referrers = (
            tuple((str(r.root.digest), r.ref.tag) for r in image.referrers)
            if item.referrers
            else None
        )
        judgement = judged[n] if judged else None
        planned.append(_planned_image(item.text, image, size, total, judgement, referrers))
    planned_charts = []
    digests = {str(i.ref): str(i.root.digest) for i in [*images, *charts.images]}
    for n, chart in enumerate(charts.charts, start=len(spec.images)):
        size, total = tally.image(chart.image)
        carried += size
        verdict = (judged[n].describe(), judged[n].verdict.accepted) if judged else (None, True)
        planned_charts.append(planned_chart(chart, size, total, digests, *verdict))
    after_charts = len(spec.images) + len(charts.charts)
    for n, image in enumerate(charts.images, start=after_charts):
        size, total = tally.image(image)
        carried += size
        judgement = judged[n] if judged else None
        planned.append(
            _planned_image(image.source_text, image, size, total, judgement, from_chart=True)
        )
    with tempfile.TemporaryDirectory(prefix="airbundle-plan-") as scratch:
        cache = BlobCache(cache_dir) if cache_dir is not None else None
        files = planned_files(
            plan_files(spec, sources.fetcher(), scratch=Path(scratch), cache=cache, limits=limits)
        )
        repos = tuple(_plan_repo(r, base, cache_dir, Path(scratch)) for r in spec.repos)
    for group in files:
        for f in group.files:
            if f.digest not in base.files:
                tally.member(f.size)
    for repo in repos:
        # A bundle header line per ref (about 100 bytes), then the pack.
        tally.member(repo.size + 100 * len(repo.refs) + 20)
    tally.member(512)  # images/oci-layout
    tally.member(512)  # images/index.json
    # A manifest entry is about 160 bytes per member, 300 per image, 120 per ref.
    manifest = (
        2048
        + 160 * tally.members
        + 300 * (len(planned) + len(planned_charts))
        + 120 * sum(len(r.refs) for r in repos)
    )
    prefix = prefix_upper_bound(
        manifest, limits.reserved_signatures, limits.reserved_signature_bytes
    )
    total_bytes = HEADER_SIZE + prefix + tally.framed + 2 * BLOCK
    volumes = math.ceil(total_bytes / split_size) if split_size else None
    return Plan(
        tuple(planned),
        repos,
        carried,
        volumes,
        total_bytes,
        tuple(planned_charts),
        files,
        # Said here, where the spec is reviewed; export repeats it only for
        # images no lock file pins.
        (*subset_warnings([*images, *charts.images]), *charts.notes),
    )


@dataclass(frozen=True)
class Lock:
    images: dict[str, Digest]  # spec text -> digest
    repos: dict[str, dict[str, str]]
    # spec text -> the referrers pinned for it (images with `referrers: true`)
    referrers: dict[str, tuple[tuple[Digest, str | None], ...]] = field(default_factory=dict)
    # chart spec text -> its pin; file spec text -> its files (name, digest)
    charts: dict[str, ChartPin] = field(default_factory=dict)
    files: dict[str, tuple[tuple[str, Digest], ...]] = field(default_factory=dict)


def read_lock(path: Path, *, limits: Limits = DEFAULT_LIMITS) -> Lock:
    data = read_regular(path, limit=limits.max_lock_bytes, what="lock file", error=UsageError)
    doc: Any = loads_strict(
        data,
        what=f"lock file {path}",
        max_bytes=limits.max_lock_bytes,
        max_depth=limits.max_flat_json_depth,
        error=UsageError,
    )
    schemas.check(schemas.LOCK, doc, what=f"lock file {path}", error=UsageError)
    try:
        if doc["kind"] != LOCK_KIND:
            raise UsageError(f"{path} is not an airbundle lock file")
        images = {i["spec"]: Digest.parse(i["digest"]) for i in doc["images"]}
        referrers = {
            i["spec"]: tuple(
                # One entry per digest: an edited lock cannot carry one twice.
                dict.fromkeys(
                    (Digest.parse(r["digest"]), _lock_tag(r["tag"])) for r in i["referrers"]
                )
            )
            for i in doc["images"]
            if "referrers" in i
        }
        for pinned in referrers.values():
            digests = [d for d, _ in pinned]
            if len(set(digests)) != len(digests):
                raise FormatError("a referrer is listed twice with different tags")
        repos = {
            r["name"]: {
                check_ref_name(k, error=UsageError): check_object_id(v, error=UsageError)
                for k, v in r["refs"].items()
            }
            for r in doc["repos"]
        }
        charts, files = read_lock_extras(doc)
    except (KeyError, TypeError, AttributeError, FormatError) as exc:
        raise UsageError(f"lock file {path} is malformed: {exc}") from None
    return Lock(images, repos, referrers, charts, files)


# The tags referrers are found under: the OCI fallback tag and cosign's. A lock
# naming any other (the image's own tag, say) was edited to move a tag.
_REFERRER_TAG = re.compile(r"sha256-[0-9a-f]{64}(\.(sig|att|sbom))?")


def _lock_tag(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _REFERRER_TAG.fullmatch(value):
        raise FormatError(f"referrer tag {value!r} is not sha256-HEX[.sig|.att|.sbom]")
    return value


def apply_lock(spec: BundleSpec, lock: Lock) -> BundleSpec:
    """The spec with every registry image pinned to its locked digest (keeping
    its name) and every repo restricted to its locked refs."""
    images: list[ImageSpec] = []
    for item in spec.images:
        digest = lock.images.get(item.text)
        if digest is None:
            raise UsageError(f"{item.text} is not in the lock file; run airbundle plan again")
        if item.referrers:
            if item.text not in lock.referrers:
                raise UsageError(
                    f"{item.text}: the lock file pins no referrers for it; run airbundle plan again"
                )
            item = replace(item, pinned_referrers=lock.referrers[item.text])
        if item.source.transport == "docker" and item.source.reference is not None:
            ref = item.source.reference
            pinned = SourceRef("docker", reference=ref.with_digest(digest))
            images.append(replace(item, source=pinned, name=item.name or ref, pinned=digest))
        else:
            images.append(replace(item, pinned=digest))
    repos = []
    for repo in spec.repos:
        refs = lock.repos.get(repo.name)
        if refs is None:
            raise UsageError(f"repo {repo.name!r} is not in the lock file")
        repos.append(replace(repo, refs=tuple(sorted(refs)), pinned=tuple(sorted(refs.items()))))
    return apply_lock_extras(
        replace(spec, images=tuple(images), repos=tuple(repos)), lock.charts, lock.files
    )
