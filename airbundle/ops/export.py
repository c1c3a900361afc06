"""Export: spec -> one signed, compressed bundle, streaming each byte once.

The steps, in `export_bundle`'s order: plan (resolve images, fetch repos),
lay out (which members, in which order, and the manifest they make), stream
(every member through the archive writer once), sign (manifest, signatures and
header written into the reserved prefix last).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import itertools
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit, urlunsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airbundle import __version__
from airbundle.adapters import git
from airbundle.adapters.blobcache import BlobCache
from airbundle.adapters.cache import git_mirror
from airbundle.adapters.fsutil import TEMP_MARK, atomic_output, remove_leftovers
from airbundle.adapters.media import VolumeWriter
from airbundle.adapters.parity import shards_of
from airbundle.adapters.pipeline import ahead
from airbundle.adapters.registry.transport import Transport
from airbundle.errors import SourceError, SpecError, TargetError, UsageError
from airbundle.format import sshsig
from airbundle.format.archive import HEADER_SIZE, BundleWriter, prefix_upper_bound
from airbundle.format.digest import Digest
from airbundle.format.files import FileEntry
from airbundle.format.helm import ChartEntry
from airbundle.format.imagescan import Carried
from airbundle.format.inventory import Base
from airbundle.format.manifest import (
    OCI_LAYOUT_DIR,
    SEEK_TABLE_DRAFT,
    BundleInfo,
    BundleManifest,
    ImageEntry,
    MemberEntry,
    RefEntry,
    RepoEntry,
    ScanSummary,
    SeekTableRef,
    blob_member_path,
    format_time,
    repo_member_path,
)
from airbundle.format.oci import LAYOUT_FILE, REF_NAME, Descriptor, layout_index
from airbundle.format.paths import check_channel
from airbundle.format.spec import BundleSpec, RepoSpec
from airbundle.format.vetting import VettingRecord
from airbundle.format.volumes import INDEX_SUFFIX, SIGNATURE_SUFFIX
from airbundle.limits import DEFAULT_LIMITS, Limits
from airbundle.ops.base import load_bases
from airbundle.ops.carried_files import PlannedFile, plan_files
from airbundle.ops.charts import plan_charts
from airbundle.ops.collect import CollectedImage, plan_images, subset_warnings, total_size
from airbundle.ops.scan import ScanResult, carried, scan_repo_all, summarize
from airbundle.ops.sources import Sources
from airbundle.ops.vetting import (
    Judged,
    Vetted,
    VettingOptions,
    judge_images,
    refuse_rejected,
    vet_images,
)
from airbundle.ops.volumes import write_index

Progress = Callable[[int], None]


@dataclass(frozen=True)
class ExportOptions:
    output: Path
    keys: tuple[Ed25519PrivateKey, ...]
    level: int = 3
    threads: int = -1
    channel: str = "default"
    sequence: int | None = None
    expires_in: timedelta | None = None
    source_date_epoch: int | None = None
    transport: Transport | None = None
    # Persistent git mirror cache; None: fetch into a scratch repository.
    cache_dir: Path | None = None
    # Scan the carried repositories for image references the bundle lacks;
    # with strict, any such reference fails the export.
    check_images: bool = False
    strict: bool = False
    # Cut the bundle into volumes of this many bytes (NAME.001, ... + index).
    split_size: int | None = None
    # With split_size: this many parity volumes (NAME.p01, ...), or this
    # fraction of the data volumes, rounded up (docs/bundle-format.md).
    parity: int | float | None = None
    # Incremental: leave out what these earlier bundles / inventories show the
    # disconnected side already has.
    since: tuple[Path, ...] = ()
    # Replace an existing bundle (or volume set) of the same name.
    force: bool = False
    # Vetting: the image policy and vet commands (ops/vetting.py).
    vetting: VettingOptions = field(default_factory=VettingOptions)
    limits: Limits = DEFAULT_LIMITS


@dataclass(frozen=True)
class ExportResult:
    path: Path
    manifest: BundleManifest
    manifest_digest: Digest
    size: int
    warnings: tuple[str, ...] = ()
    volumes: tuple[Path, ...] = ()  # with split_size: the volumes in order, then any parity


def export_bundle(
    spec: BundleSpec,
    options: ExportOptions,
    *,
    progress: Progress | None = None,
    on_total: Progress | None = None,
) -> ExportResult:
    """`progress` is called with the bytes of each blob, file and git bundle
    chunk streamed; `on_total` once before streaming, with what they add up to."""
    if not options.keys:
        raise UsageError("export needs a signing key (--key)")
    check_channel(options.channel, error=UsageError)
    if options.parity is not None and options.split_size is None:
        raise UsageError("--parity needs --split-size: parity volumes protect a volume set")
    replaced = _check_output(options.output, force=options.force)
    # Plan: every image resolved and its manifests read, the base known.
    created = _created(options)
    reproducible = options.source_date_epoch is not None or "SOURCE_DATE_EPOCH" in os.environ
    base = load_bases(options.since, limits=options.limits)
    cache = BlobCache(options.cache_dir) if options.cache_dir is not None else None
    sources = Sources(options.transport or Transport(), options.limits, cache)
    planned = plan_images(spec, sources)
    charts = plan_charts(spec, sources, planned)
    # Charts, and the images they ask for, are judged and vetted like the
    # spec's own images: the far side judges every image the bundle carries.
    chart_specs, chart_images = charts.judged()
    vetted_spec = replace(spec, images=(*spec.images, *chart_specs))
    vetted_images = [*planned, *chart_images]
    judged = _judge(vetted_spec, vetted_images, sources, options.vetting)
    images = [
        carried
        for img in [*planned, *(c.image for c in charts.charts), *charts.images]
        for carried in (img, *img.referrers)
    ]
    remove_leftovers(options.output)
    with _workdir(options.output) as workdir:
        vetted = _vet(vetted_images, judged, options, workdir, created)
        images += vetted.reports if vetted else []
        files = plan_files(
            spec, sources.fetcher(), scratch=workdir / "files", cache=cache, limits=options.limits
        )
        repos = [
            _prepare_repo(r, workdir, options, reproducible=reproducible, base=base)
            for r in spec.repos
        ]
        # Lay out: the members in their order, and what the manifest will say.
        layout = _lay_out(images, repos, base, files)
        entries = _image_entries(images)
        contents = _Contents(
            _bundle_info(spec, options, created, reproducible),
            entries,
            tuple(r.entry for r in repos),
            _check_images(
                options,
                repos,
                carried(entries, layout.draft_members()),
                [c.entry() for c in charts.charts],
            ),
            tuple(base.sources),
            vetted.record if vetted else None,
            tuple(c.entry() for c in charts.charts),
            tuple(f.entry for f in files),
        )
        # Stream and sign.
        if on_total is not None:
            on_total(layout.streamed_bytes())
        written = _write(layout, contents, options, created, progress)
    _drop_replaced(replaced, keep=written.path, volumes=written.volumes)
    return ExportResult(
        written.path,
        written.manifest,
        Digest.sha256_of(written.manifest_bytes),
        written.size,
        (
            *subset_warnings(images, _locked(spec)),
            *(vetted.warnings if vetted else []),
            *charts.notes,
        ),
        written.volumes,
    )


# -- plan ------------------------------------------------------------------------


def _existing_outputs(out: Path) -> list[Path]:
    """What a bundle named `out` is on disk: the file, or a volume set's index,
    signatures and volumes."""
    found = [p for p in (out, out.with_name(out.name + INDEX_SUFFIX)) if p.exists()]
    found += [out.with_name(out.name + SIGNATURE_SUFFIX)] if found else []
    found += sorted(out.parent.glob(glob.escape(out.name) + ".[0-9][0-9][0-9]*"))
    found += sorted(out.parent.glob(glob.escape(out.name) + ".p[0-9][0-9]"))
    return [p for p in dict.fromkeys(found) if p.exists()]


def _locked(spec: BundleSpec) -> frozenset[str]:
    """The spec's images a lock file pinned: `plan` has shown what they carry."""
    return frozenset(i.text for i in spec.images if i.pinned is not None)


def _check_output(out: Path, *, force: bool) -> list[Path]:
    """Refuse to write over an existing bundle without --force (it may be the
    one already imported); return what --force will replace once the new
    bundle is complete."""
    if not out.parent.is_dir():
        # A typo in -o must not scatter bundles into a new tree of folders.
        raise UsageError(
            f"{out.parent} is not a folder",
            hint="create it first, or choose an -o in an existing folder",
        )
    existing = _existing_outputs(out)
    if existing and not force:
        raise UsageError(
            f"{existing[0]} exists already",
            hint="choose another name, or pass --force to replace that bundle",
        )
    return existing


def _drop_replaced(replaced: list[Path], *, keep: Path, volumes: tuple[Path, ...]) -> None:
    """After --force: the old bundle's files the new one did not overwrite (a
    volume set replaced by a single file, volumes past the new set's last)."""
    written = {keep, *volumes}
    if volumes:  # keep is the set's index; its signatures sit beside it
        written.add(keep.with_name(keep.name.removesuffix(INDEX_SUFFIX) + SIGNATURE_SUFFIX))
    for path in replaced:
        if path not in written:
            path.unlink(missing_ok=True)


def _created(options: ExportOptions) -> datetime:
    epoch = options.source_date_epoch
    if epoch is None and os.environ.get("SOURCE_DATE_EPOCH"):
        try:
            epoch = int(os.environ["SOURCE_DATE_EPOCH"])
        except ValueError:
            raise UsageError("SOURCE_DATE_EPOCH must be an integer (seconds since 1970)") from None
    return datetime.fromtimestamp(epoch if epoch is not None else int(time.time()), UTC)


@contextlib.contextmanager
def _workdir(out: Path) -> Iterator[Path]:
    """A scratch folder beside the output (git bundles are written there first)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{TEMP_MARK}{out.name}.work-", dir=out.parent))
    try:
        yield workdir.resolve()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass(frozen=True)
class _GitMember:
    """A repository's git bundle: `header` (empty, or the bundle's header when
    `path` holds only the pack that completes it) followed by `path`."""

    header: bytes
    path: Path
    heads: git.BundleHeads

    @property
    def size(self) -> int:
        return len(self.header) + self.path.stat().st_size


@dataclass(frozen=True)
class _PreparedRepo:
    spec: RepoSpec
    member: _GitMember
    entry: RepoEntry
    scanned: ScanResult = field(default_factory=ScanResult)


def _prepare_repo(
    spec: RepoSpec, workdir: Path, options: ExportOptions, *, reproducible: bool, base: Base
) -> _PreparedRepo:
    what = f"repo {spec.name!r} ({_redact_url(spec.url)})"
    with git_mirror(spec.url, spec.name, options.cache_dir, workdir) as bare:
        refs, head = git.fetch_selected_refs(spec.url, spec.refs, bare, what=what)
        if spec.pinned is not None:
            refs = _pin_refs(bare, refs, spec.pinned, what)
        if not refs:
            raise SourceError(
                f"{what}: none of the refs {', '.join(spec.refs)} exist in the repository"
            )
        fmt = git.object_format(bare, error=SourceError, what=what)
        base_commits = base.commits(spec.name)
        member = None
        # Not for reproducible exports: the pack is the server's, and its delta
        # choices vary from run to run (docs/decisions/0005-git-pack-shortcut.md).
        if not (reproducible or base_commits or spec.pinned is not None):
            member = _linked_pack(bare, refs, fmt, workdir / f"{spec.name}.pack", what)
        if member is None:
            bundle = workdir / f"{spec.name}.bundle"
            member = _created_bundle(
                bare, refs, bundle, what, reproducible, base_commits, options.limits
            )
        entry = RepoEntry(
            name=spec.name,
            url=_redact_url(spec.written_url or spec.url),
            member=repo_member_path(spec.name),
            object_format=fmt,
            refs=tuple(RefEntry(n, oid) for n, oid in sorted(member.heads.refs)),
            head=head,
            prerequisites=member.heads.prerequisites,
        )
        scanned = ScanResult()
        if options.check_images:
            refs_carried = [r.name for r in entry.refs]
            scanned = scan_repo_all(spec.name, bare, refs_carried, limits=options.limits)
        return _PreparedRepo(spec, member, entry, scanned)


def _linked_pack(
    bare: Path, refs: list[tuple[str, str]], fmt: str, link: Path, what: str
) -> _GitMember | None:
    """A full bundle of a fresh fetch: the fetched pack behind a header (no
    second pack-objects run, no copy), if the mirror allows it."""
    packed = git.pack_as_bundle(bare, refs, fmt)
    if packed is None:
        return None
    try:
        # A link stays readable whatever git does to the cache later.
        os.link(packed.pack, link)
    except OSError:  # the cache is on another file system
        return None
    return _GitMember(packed.header, link, git.parse_bundle_header(packed.header, source=what))


def _created_bundle(
    bare: Path,
    refs: list[tuple[str, str]],
    out: Path,
    what: str,
    reproducible: bool,
    base_commits: list[str],
    limits: Limits,
) -> _GitMember:
    git.create_bundle(
        bare, sorted(refs), out, what=what, reproducible=reproducible, exclude=base_commits
    )
    return _GitMember(b"", out, git.read_bundle_heads(out, limits=limits))


def _pin_refs(
    bare: Path, refs: list[tuple[str, str]], pinned: tuple[tuple[str, str], ...], what: str
) -> list[tuple[str, str]]:
    """Point the mirror's refs at the locked commits (they must be in its history)."""
    current = dict(refs)
    for name, oid in pinned:
        if current.get(name) == oid:
            continue
        if not git.known_objects(bare, [oid]):
            raise SourceError(
                f"{what}: the lock file pins {name} to {oid}, which the repository no longer "
                "has (history rewritten?)",
                hint="review and run airbundle plan again",
            )
        git.run_git(["-C", str(bare), "update-ref", name, oid], error=SourceError, what=what)
    return list(pinned)


def _redact_url(url: str) -> str:
    """Credentials in a clone URL must never travel in a manifest."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=host))


# -- vet -------------------------------------------------------------------------


def _judge(
    spec: BundleSpec, planned: list[CollectedImage], sources: Sources, vetting: VettingOptions
) -> list[Judged] | None:
    """Every image under the image policy, before anything is downloaded in full."""
    if vetting.policy is None:
        return None
    judged = judge_images(spec, planned, sources, vetting.policy)
    refuse_rejected(judged, vetting.policy.source)
    return judged


def _vet(
    planned: list[CollectedImage],
    judged: list[Judged] | None,
    options: ExportOptions,
    workdir: Path,
    created: datetime,
) -> Vetted | None:
    """The vet commands run on every image, and the evidence the manifest carries."""
    if not options.vetting.active:
        return None
    return vet_images(
        planned,
        judged,
        options.vetting,
        workdir,
        created=format_time(created),
        limits=options.limits,
    )


# -- lay out ---------------------------------------------------------------------

_PLACEHOLDER = Digest("sha256", "0" * 64)


@dataclass
class _Layout:
    """The members of the bundle in the order they are written: the layout's
    two files, every manifest and index (always, even when incremental), the
    config and layer blobs the base lacks, the git bundles."""

    index: bytes  # images/index.json
    documents: dict[Digest, bytes] = field(default_factory=dict)
    blobs: list[tuple[Digest, Descriptor, CollectedImage]] = field(default_factory=list)
    repos: list[_PreparedRepo] = field(default_factory=list)
    # Files the base does not show the far side holding (by digest).
    files: list[PlannedFile] = field(default_factory=list)

    def draft_members(self) -> list[MemberEntry]:
        """The members as the manifest will list them; the digests not known
        before streaming are placeholders of the same length."""
        return [
            MemberEntry(f"{OCI_LAYOUT_DIR}/oci-layout", len(LAYOUT_FILE), _PLACEHOLDER),
            MemberEntry(f"{OCI_LAYOUT_DIR}/index.json", len(self.index), _PLACEHOLDER),
            *(MemberEntry(blob_member_path(d), len(data), d) for d, data in self.documents.items()),
            *(MemberEntry(blob_member_path(d), desc.size, d) for d, desc, _ in self.blobs),
            *(MemberEntry(f.entry.member, f.local.size, f.local.digest) for f in self.files),
            *(MemberEntry(r.entry.member, r.member.size, _PLACEHOLDER) for r in self.repos),
        ]

    def streamed_bytes(self) -> int:
        """What `_stream` reports as progress: blobs, files and git bundles
        (the documents are small and already in memory)."""
        return (
            sum(desc.size for _, desc, _ in self.blobs)
            + sum(f.local.size for f in self.files)
            + sum(r.member.size for r in self.repos)
        )


def _lay_out(
    images: list[CollectedImage],
    repos: list[_PreparedRepo],
    base: Base,
    files: list[PlannedFile],
) -> _Layout:
    index = layout_index(
        [replace(img.root, annotations={REF_NAME: str(img.ref)}, raw={}) for img in images]
    )
    # A file whose content the far side already holds stays home, as a blob does.
    layout = _Layout(
        index, repos=repos, files=[f for f in files if f.local.digest not in base.files]
    )
    blobs: dict[Digest, tuple[Descriptor, CollectedImage]] = {}
    for img in images:
        layout.documents.update(img.documents)
        for blob in img.blobs:
            # Manifests always travel (small, needed to tag); layers and
            # configs the other side has stay home.
            if blob.digest not in base.blobs:
                blobs.setdefault(blob.digest, (blob, img))
    layout.blobs = [(d, desc, img) for d, (desc, img) in blobs.items() if d not in layout.documents]
    return layout


@dataclass(frozen=True)
class _Contents:
    """Everything the manifest says except its members and the bundle id,
    which are known only once the members have been written."""

    info: BundleInfo
    images: tuple[ImageEntry, ...]
    repos: tuple[RepoEntry, ...]
    scan: ScanSummary | None
    base: tuple[dict[str, str], ...]
    vetting: VettingRecord | None = None
    charts: tuple[ChartEntry, ...] = ()
    files: tuple[FileEntry, ...] = ()

    def manifest(
        self,
        members: list[MemberEntry],
        bundle_id: str | None = None,
        seek_table: SeekTableRef | None = None,
    ) -> BundleManifest:
        info = self.info if bundle_id is None else replace(self.info, id=bundle_id)
        return BundleManifest(
            info,
            tuple(members),
            self.images,
            self.repos,
            self.scan,
            self.base,
            seek_table=seek_table,
            vetting=self.vetting,
            charts=self.charts,
            files=self.files,
        )


def _bundle_info(
    spec: BundleSpec, options: ExportOptions, created: datetime, reproducible: bool
) -> BundleInfo:
    sequence = options.sequence
    if sequence is None:
        sequence = _default_sequence(reproducible, created)
    return BundleInfo(
        name=spec.name,
        id=str(uuid.UUID(int=0)),  # set from the members once written
        created=created,
        tool=f"airbundle {__version__}",
        channel=options.channel,
        sequence=sequence,
        expires=created + options.expires_in if options.expires_in else None,
    )


def _default_sequence(reproducible: bool, created: datetime) -> int:
    """Milliseconds since 1970: monotonic enough for one exporter, and two
    exports in the same second still differ (unless made reproducible)."""
    if reproducible:
        return int(created.timestamp()) * 1000
    return time.time_ns() // 1_000_000


def _image_entries(images: list[CollectedImage]) -> tuple[ImageEntry, ...]:
    return tuple(
        ImageEntry(
            img.ref,
            img.source_text,
            img.root.digest,
            img.root.media_type,
            img.root.size,
            img.platforms,
            img.source_digest,
            img.source_root.media_type if img.source_root is not None else None,
            img.source_root.size if img.source_root is not None else None,
            tuple(dict.fromkeys(img.requested_by)),
            total_size(img),
        )
        for img in images
    )


def _check_images(
    options: ExportOptions,
    repos: list[_PreparedRepo],
    bundle: Carried,
    charts: list[ChartEntry],
) -> ScanSummary | None:
    """With --check-images: the image and chart references in the carried
    repositories that the bundle lacks (with --strict, any is an error)."""
    if not options.check_images:
        return None
    files = sum(r.scanned.files for r in repos)
    findings = [f for r in repos for f in r.scanned.images]
    chart_findings = [f for r in repos for f in r.scanned.charts]
    scan = summarize(files, findings, bundle, chart_findings, charts)
    if options.strict and scan.missing:
        shown = "; ".join(f"{m.ref} ({m.file}:{m.line})" for m in scan.missing[:20])
        more = f" and {len(scan.missing) - 20} more" if len(scan.missing) > 20 else ""
        raise SpecError(
            f"{len(scan.missing)} image reference(s) in the carried repositories are "
            f"not in the bundle: {shown}{more}",
            hint="add them to the spec's images, or export without --strict",
        )
    return scan


# -- stream and sign -------------------------------------------------------------


@dataclass(frozen=True)
class _Written:
    path: Path  # the bundle, or a volume set's index
    manifest: BundleManifest
    manifest_bytes: bytes
    size: int
    volumes: tuple[Path, ...] = ()  # a volume set's volumes, in order


def _write(
    layout: _Layout,
    contents: _Contents,
    options: ExportOptions,
    created: datetime,
    progress: Progress | None,
) -> _Written:
    limits = options.limits
    # Every field of the manifest has its final length now (the digests and
    # the id have fixed lengths; the seek table's numbers are drafted as wide
    # as they can be): this sizes the reserved prefix.
    draft = contents.manifest(layout.draft_members(), seek_table=SEEK_TABLE_DRAFT)
    capacity = prefix_upper_bound(
        len(draft.to_bytes()), limits.reserved_signatures, limits.reserved_signature_bytes
    )
    out = options.output
    with _output(out, options.split_size, HEADER_SIZE + capacity, options.parity) as fh:
        writer = BundleWriter(
            fh,
            prefix_capacity=capacity,
            level=options.level,
            threads=options.threads,
            mtime=int(created.timestamp()),
            limits=limits,
            format_version=draft.format_version,
        )
        members = _stream(writer, layout, limits, progress)
        manifest = contents.manifest(
            members,
            _bundle_id(contents.info.name, created, members),
            seek_table=writer.end_content(),
        )
        manifest_bytes = manifest.to_bytes()
        # Read back as an importer will, before anything is signed: a bundle
        # whose manifest its own readers refuse must never be written.
        BundleManifest.from_bytes(manifest_bytes, limits=limits)
        writer.finish(manifest_bytes, [sshsig.sign(manifest_bytes, key) for key in options.keys])
        size = fh.tell()
        path: Path = out
        volumes: tuple[Path, ...] = ()
        if isinstance(fh, VolumeWriter):
            index = fh.commit()
            path = write_index(out.parent, index, options.keys)
            volumes = tuple(out.parent / v.name for v in shards_of(index))
    return _Written(path, manifest, manifest_bytes, size, volumes)


def _stream(
    writer: BundleWriter, layout: _Layout, limits: Limits, progress: Progress | None
) -> list[MemberEntry]:
    """Every member through the writer, in the layout's order; what was written."""
    written = [
        writer.add_bytes(f"{OCI_LAYOUT_DIR}/oci-layout", LAYOUT_FILE),
        writer.add_bytes(f"{OCI_LAYOUT_DIR}/index.json", layout.index),
    ]
    for digest, data in layout.documents.items():
        written.append(
            writer.add_stream(blob_member_path(digest), len(data), [data], expected=digest)
        )
    # Small blobs are fetched a few at a time ahead of the writer (round trips,
    # not bytes, are their cost); large ones stream in their turn.
    small = functools.partial(_small_blob, limit=limits.small_blob_bytes)
    pool = ahead(
        small, layout.blobs, window=limits.small_blob_window, workers=limits.small_blob_workers
    )
    with contextlib.closing(pool) as smalls:
        for (digest, desc, img), whole in zip(layout.blobs, smalls, strict=True):
            content = [whole] if whole is not None else img.source.open_blob(desc)
            written.append(
                writer.add_stream(
                    blob_member_path(digest),
                    desc.size,
                    _counting(content, progress),
                    expected=digest,
                    what=f"{img.source_text}: blob {digest}",
                )
            )
    for planned in layout.files:
        local = planned.local
        written.append(
            writer.add_stream(
                planned.entry.member,
                local.size,
                _counting(_file_chunks(local.path, limits.io_chunk_bytes), progress),
                expected=local.digest,
                what=f"file {local.name} ({local.path})",
            )
        )
    for repo in layout.repos:
        with repo.member.path.open("rb") as bfh:
            pack = itertools.chain(
                [repo.member.header] if repo.member.header else [],
                iter(lambda bfh=bfh: bfh.read(limits.io_chunk_bytes), b""),  # type: ignore[misc]
            )
            written.append(
                writer.add_stream(repo.entry.member, repo.member.size, _counting(pack, progress))
            )
        repo.member.path.unlink()
    return [MemberEntry(w.path, w.size, w.sha256) for w in written]


def _file_chunks(path: Path, chunk: int) -> Iterator[bytes]:
    try:
        with path.open("rb") as fh:
            while data := fh.read(chunk):
                yield data
    except OSError as exc:
        raise SourceError(f"file {path}: {exc.strerror}") from None


def _small_blob(item: tuple[Digest, Descriptor, CollectedImage], *, limit: int) -> bytes | None:
    """A small blob's bytes, read whole (the writer checks size and digest);
    None for a large one."""
    _digest, desc, img = item
    if desc.size > limit:
        return None
    return b"".join(img.source.open_blob(desc))


def _counting(chunks: Iterable[bytes], progress: Progress | None) -> Iterator[bytes]:
    for chunk in chunks:
        if progress:
            progress(len(chunk))
        yield chunk


def _bundle_id(name: str, created: datetime, members: list[MemberEntry]) -> str:
    h = hashlib.sha256(f"{name}\n{created.isoformat()}\n".encode())
    for m in members:
        h.update(f"{m.path} {m.size} {m.digest}\n".encode())
    return str(uuid.UUID(bytes=h.digest()[:16], version=4))


@contextlib.contextmanager
def _output(
    out: Path, split_size: int | None, unhashed: int, parity: int | float | None
) -> Iterator[BinaryIO]:
    """One bundle file written atomically, or a volume set (committed by the caller)."""
    try:
        if split_size is None:
            with atomic_output(out) as fh:
                yield fh
            return
        volumes = VolumeWriter(
            out.parent, out.name, split_size, unhashed=unhashed, parity=parity
        )
        try:
            yield volumes  # type: ignore[misc]
        except BaseException:
            volumes.abort()
            raise
    except OSError as exc:
        # Disk full, media removed, permissions: the temporary output is gone,
        # any earlier bundle of that name is untouched.
        raise TargetError(
            f"cannot write {out}: {exc.strerror or exc}",
            hint="free space or choose another output folder; nothing was left behind",
        ) from exc
