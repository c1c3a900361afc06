"""Import: authenticate, then stream verified members into the targets.

Phase 1 streams the archive once. Manifests and indexes come first in a
bundle (root before children), so by the time layers arrive the importer
knows which target repositories need each blob; every blob goes to the image
target as it passes, committed only after its digest checked. Git bundles go
to temporary files. Only after the whole archive has been verified does phase
2 make anything visible: refs are staged and checked, manifests pushed
(children first), then tags and refs move. A re-run skips blobs already
present, so an interrupted import completes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from airbundle.adapters.bundleaccess import BundleAccess, MemberInfo
from airbundle.adapters.fsutil import TEMP_MARK, atomic_output, write_atomic
from airbundle.adapters.git_targets import GitTarget
from airbundle.adapters.images import ImageTarget
from airbundle.adapters.media import Media, open_media
from airbundle.adapters.pipeline import parallel
from airbundle.adapters.registry.transport import Transport
from airbundle.adapters.targets import open_git_target, open_image_target
from airbundle.errors import (
    ArchiveError,
    FormatError,
    IntegrityError,
    RefUpdateError,
    TargetError,
    UploadLostError,
    UsageError,
)
from airbundle.format.archive import BundleReader
from airbundle.format.digest import Digest
from airbundle.format.files import FILE_PREFIX
from airbundle.format.freshness import Accepted, Decision, decide, trust_set_id
from airbundle.format.manifest import (
    BLOB_PREFIX,
    DEFAULT_CHANNEL,
    BundleManifest,
    ImageEntry,
    MemberEntry,
    format_time,
)
from airbundle.format.mapping import MappingOptions
from airbundle.format.mirrorconfig import CarriedChart
from airbundle.format.oci import OCI_MANIFEST, parse_manifest
from airbundle.format.paths import check_channel
from airbundle.format.policy import ImagePolicy
from airbundle.format.tarstream import TarMember
from airbundle.format.text import escape
from airbundle.format.trust import TrustPolicy
from airbundle.limits import DEFAULT_LIMITS, Limits
from airbundle.ops.adapt import adapt, index_referrers, refuse_repeated_layers
from airbundle.ops.landing import ChartsLanding, FilesLanding
from airbundle.ops.mirrors import trust_record, with_repins, write_mirror_config
from airbundle.ops.proof import prove_published, still_held
from airbundle.ops.sparse import SparseIndexes
from airbundle.ops.state import StateStore, TargetState, default_state_dir
from airbundle.ops.verify import Authenticated, authenticate, stream_members
from airbundle.ops.vetting import check_import
from airbundle.ops.volumes import opened_bundle, rebuilt_notes

Progress = Callable[[int], None]
REPORT_NAME = "airbundle-import.json"


@dataclass(frozen=True)
class ImportOptions:
    policy: TrustPolicy
    # --registry: "oci:DIR" for an OCI layout, else HOST[:PORT][/PREFIX].
    registry: str | None = None
    # --git: a folder of bare repositories, or a URL template with {name}.
    git: str | None = None
    force: bool = False
    keep_source_host: bool = False
    max_nested_paths: int | None = None
    transport: Transport | None = None
    report: Path | None = None
    # Freshness (docs/security.md): the channel this import is for, overrides
    # (loud, recorded in the state's history), and where the state lives
    # (default: inside an OCI layout target, else the user's state folder).
    channel: str = DEFAULT_CHANNEL
    allow_expired: bool = False
    allow_rollback: bool = False
    state_dir: Path | None = None
    # Only branches and tags move by default; other namespaces (notes, pull
    # requests, stashes) only when asked for.
    allow_other_refs: bool = False
    # Write mirror configuration (registries.conf, IDMS/ITMS/ICSP, containerd,
    # kustomize) for exactly the repositories imported, here.
    emit_mirror_config: Path | None = None
    mirror_scope: str = "repository"
    # Vetting (ops/vetting.py): judge every carried image again under this
    # side's image policy, from the signatures the bundle carries; refuse an
    # image without a passing vet record. Both before anything is written.
    image_policy: ImagePolicy | None = None
    require_vetted: bool = False
    at: datetime | None = None
    # A volume set with parity missing volumes: rebuild them into this folder
    # (None: on the fly, nothing written beside the media).
    scratch: Path | None = None
    limits: Limits = DEFAULT_LIMITS
    # --files DIR: where carried files land; --charts DIR: a static Helm
    # repository written from the carried charts (besides --registry).
    files: Path | None = None
    charts: Path | None = None


@dataclass
class ImportReport:
    bundle: str
    bundle_name: str = ""
    bundle_id: str = ""
    manifest_digest: str = ""
    blobs_written: int = 0
    blobs_present: int = 0
    images: list[dict[str, str]] = field(default_factory=list)
    repos: list[dict[str, object]] = field(default_factory=list)
    files: list[dict[str, object]] = field(default_factory=list)
    charts: list[dict[str, object]] = field(default_factory=list)
    report_path: str | None = None
    sequence: int = 0
    channel: str = ""
    noop: bool = False
    notes: list[str] = field(default_factory=list)
    # Per image judged by --policy / --require-vetted: scope, signers, vets.
    vetting: list[dict[str, object]] = field(default_factory=list)
    # How the registry was reached (scheme, verify, ca_file), so that
    # mirror-config from this report tells clients the same.
    mirror: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> bytes:
        doc = {k: v for k, v in self.__dict__.items() if k != "report_path"}
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()

    def describe(self, auth: Authenticated) -> None:
        manifest = auth.manifest
        self.bundle_id = manifest.bundle.id
        self.bundle_name = manifest.bundle.name
        self.manifest_digest = str(auth.manifest_digest)
        self.sequence = manifest.bundle.sequence
        self.channel = manifest.bundle.channel


@dataclass(frozen=True)
class _Targets:
    """What --registry and --git named, parsed once, and whether this bundle
    writes to each (it may carry only images, or only repos)."""

    named_images: ImageTarget | None
    named_gits: GitTarget | None
    carries_images: bool
    carries_repos: bool
    files: FilesLanding | None = None
    charts: ChartsLanding | None = None

    @property
    def images(self) -> ImageTarget | None:
        """The target this bundle's images go to; None if it carries none."""
        return self.named_images if self.carries_images else None

    @property
    def gits(self) -> GitTarget | None:
        """The target this bundle's repos go to; None if it carries none."""
        return self.named_gits if self.carries_repos else None

    def state_stores(self, state_dir: Path | None) -> list[StateStore]:
        """One state per target the operator named (not per what this bundle
        carries: an images-only bundle must not slip past a newer full one)."""
        stores = []
        if self.named_images is not None:
            folder = state_dir or self.named_images.state_dir() or default_state_dir()
            stores.append(StateStore(folder, self.named_images.state_key()))
        if self.named_gits is not None:
            stores.append(StateStore(state_dir or default_state_dir(), self.named_gits.state_key()))
        for landing in (self.files, self.charts):
            if landing is not None:
                stores.append(StateStore(state_dir or default_state_dir(), landing.state_key()))
        return sorted(stores, key=lambda store: str(store.path))

    def close(self) -> None:
        if self.named_gits is not None:
            self.named_gits.close()


def _open_targets(manifest: BundleManifest, options: ImportOptions) -> _Targets:
    """Parse --registry and --git, and check they can take what the bundle
    carries, before a byte is written to either."""
    transport = options.transport or Transport()
    images = None
    if options.registry is not None:
        images = open_image_target(
            options.registry,
            transport=transport,
            mapping=MappingOptions(
                keep_source_host=options.keep_source_host,
                max_nested_paths=options.max_nested_paths,
            ),
            limits=options.limits,
        )
    gits = None
    if options.git is not None:
        gits = open_git_target(options.git, tls=transport.tls, limits=options.limits)
    if options.emit_mirror_config is not None and (images is None or images.mirror_host() is None):
        raise UsageError("--emit-mirror-config needs a registry target (--registry HOST)")
    if manifest.images:
        if images is None:
            raise UsageError(
                f"the bundle carries {len(manifest.images)} image(s): say where they go with "
                "--registry HOST[:PORT][/PREFIX] or --registry oci:DIR"
            )
        images.assign([i.ref for i in manifest.images])
    if manifest.repos and gits is None:
        raise UsageError(
            f"the bundle carries {len(manifest.repos)} repo(s): say where they go with "
            "--git DIR or --git 'URL/{name}.git'"
        )
    if manifest.files and options.files is None:
        raise UsageError(
            f"the bundle carries {len(manifest.files)} file(s): say where they go with --files DIR"
        )
    return _Targets(
        images,
        gits,
        bool(manifest.images),
        bool(manifest.repos),
        FilesLanding(options.files, manifest, options.limits) if options.files else None,
        ChartsLanding(options.charts, options.limits) if options.charts else None,
    )


class _Documents:
    """Manifests and indexes discovered top-down from the images' roots."""

    def __init__(self, images: tuple[ImageEntry, ...], target: ImageTarget, limits: Limits):
        self.limits = limits
        self.expected: dict[Digest, tuple[str, set[str]]] = {}  # digest -> (media type, repos)
        # Source indexes carried beside platform subsets: their other
        # platforms are not in the bundle, by design.
        self.sparse = SparseIndexes(images)
        for image in images:
            repo = target.locate(image.ref)
            self._expect(image.digest, image.media_type, {repo})
            if image.source_digest in self.sparse.images:
                assert image.source_digest is not None and image.source_media_type is not None
                self._expect(image.source_digest, image.source_media_type, {repo})
        self.data: dict[Digest, bytes] = {}
        self.order: list[Digest] = []
        self.blob_repos: dict[Digest, set[str]] = {}
        # Index nesting depth: manifests are pushed deepest first, one level
        # at a time, so an index never arrives before what it references.
        self.depth: dict[Digest, int] = {}

    def _expect(self, digest: Digest, media_type: str, repos: set[str]) -> None:
        known = self.expected.setdefault(digest, (media_type, set()))
        known[1].update(repos)

    def is_document(self, digest: Digest) -> bool:
        return digest in self.expected

    def add(self, digest: Digest, data: bytes) -> None:
        media_type, repos = self.expected[digest]
        try:
            parsed = parse_manifest(
                data, declared_type=media_type, where=f"manifest {digest}", limits=self.limits
            )
        except FormatError as exc:
            raise ArchiveError(f"bundle member for {digest}: {exc.message}") from None
        self.data[digest] = data
        self.order.append(digest)
        if digest in self.sparse.images:
            return  # its carried children come through the subset index
        for child in parsed.children:
            self._expect(child.digest, child.media_type, repos)
            self.depth[child.digest] = max(
                self.depth.get(child.digest, 0), self.depth.get(digest, 0) + 1
            )
        for blob in parsed.blobs:
            self.blob_repos.setdefault(blob.digest, set()).update(repos)

    def media_type(self, digest: Digest) -> str:
        return self.expected[digest][0] or OCI_MANIFEST

    def repos(self, digest: Digest) -> list[str]:
        return sorted(self.expected[digest][1])

    def media_types(self) -> dict[Digest, str]:
        return {d: self.media_type(d) for d in self.data}

    def repo_map(self) -> dict[Digest, list[str]]:
        return {d: self.repos(d) for d in self.data}


class _Sinks:
    def __init__(
        self,
        target: ImageTarget | None,
        scratch: Path | None,
        manifest: BundleManifest,
        report: ImportReport,
        limits: Limits,
        files: FilesLanding | None = None,
    ) -> None:
        self.files = files
        self.target = target
        self.scratch = scratch
        self.report = report
        self.limits = limits
        self.repos = {r.member: r for r in manifest.repos}
        self.staged: dict[str, Path] = {}
        self.documents = _Documents(manifest.images, target, limits) if target is not None else None
        self.manifest = manifest
        self._base_checked = False
        # Blobs whose upload failed past what could be resent in the same
        # request (member path -> target repositories): read again, once.
        self.resend: dict[str, list[str]] = {}
        # Several members are taken at once when the bundle is read in place.
        self._lock = threading.Lock()
        self._base_lock = threading.Lock()

    def check_base(self) -> None:
        """Once every manifest has been read, and before any blob is written:
        each blob an image needs but the bundle does not carry must already be
        in the target (an incremental bundle's base)."""
        with self._base_lock:
            if self._base_checked or self.target is None or self.documents is None:
                return
            self._check_base()
            self._base_checked = True

    def _check_base(self) -> None:
        assert self.target is not None and self.documents is not None
        docs = self.documents
        self.target.warm({d: sorted(r) for d, r in docs.blob_repos.items()})
        unread = [d for d in docs.expected if d not in docs.data]
        if unread:
            raise ArchiveError(f"manifest {unread[0]} is referenced but not in the bundle")
        refuse_repeated_layers(
            self.target, docs.data, docs.media_types(), docs.repo_map(), self.limits
        )
        carried = {m.digest for m in self.manifest.members}
        for digest, repos in sorted(docs.blob_repos.items()):
            if digest not in carried and not self.target.has_blob(
                digest, sorted(repos), anywhere=True
            ):
                raise TargetError(
                    f"blob {digest} (needed by {', '.join(sorted(repos))}) is neither in the "
                    f"bundle nor in {self.target.describe()}",
                    hint=base_hint(self.manifest),
                )

    def is_document(self, entry: MemberEntry) -> bool:
        docs = self.documents
        return (
            entry.path.startswith(BLOB_PREFIX)
            and docs is not None
            and docs.is_document(entry.digest)
        )

    def add_document(self, entry: MemberEntry, data: Callable[[], bytes]) -> None:
        assert self.documents is not None
        if entry.size > self.limits.max_oci_manifest_bytes:
            raise ArchiveError(f"manifest {entry.digest} is {entry.size} bytes, too large")
        self.documents.add(entry.digest, data())  # data() raises if the digest is wrong

    def blob_repos(self, entry: MemberEntry) -> list[str]:
        assert self.documents is not None
        repos = sorted(self.documents.blob_repos.get(entry.digest, ()))
        if not repos:
            raise ArchiveError(
                f"{entry.path}: blob is not referenced by any image in the bundle, or comes "
                "before the manifests that reference it"
            )
        return repos

    def __call__(self, member: TarMember, entry: MemberEntry, chunks: Iterator[bytes]) -> None:
        if self.is_document(entry):
            self.add_document(entry, lambda: b"".join(chunks))
            return
        self.take(entry, chunks)

    def take(self, entry: MemberEntry, chunks: Iterator[bytes]) -> bool:
        """A blob to the image target or a git bundle to scratch; False when
        its upload was lost past what memory held (read it again)."""
        if entry.path.startswith(BLOB_PREFIX):
            assert self.target is not None
            self.check_base()
            repos = self.blob_repos(entry)
            if self.target.has_blob(entry.digest, repos):
                with self._lock:
                    self.report.blobs_present += 1
                return True  # the reader still drains and verifies the bytes
            try:
                self.target.write_blob(entry.digest, entry.size, chunks, repos)
            except UploadLostError:
                with self._lock:
                    self.resend[entry.path] = repos
                    self.report.notes.append(
                        f"{self.target.describe()}: the upload of {entry.digest} to "
                        f"{', '.join(repos)} was lost mid-blob; it was read again from the bundle"
                    )
                return False  # the reader still drains and verifies the bytes
            with self._lock:
                self.report.blobs_written += 1
        elif entry.path.startswith(FILE_PREFIX):
            assert self.files is not None
            self.files.sink(entry, chunks)
        elif entry.path in self.repos:
            assert self.scratch is not None
            repo = self.repos[entry.path]
            path = self.scratch / f"{TEMP_MARK}{repo.name}.bundle"
            with atomic_output(path, fsync=False) as fh:
                for chunk in chunks:
                    fh.write(chunk)
            self.staged[repo.name] = path
        return True


def import_bundle(
    path: Path, options: ImportOptions, *, progress: Progress | None = None
) -> ImportReport:
    check_channel(options.channel, error=UsageError)
    report = ImportReport(bundle=str(path))
    with contextlib.ExitStack() as stack:
        access, auth, reader, media = _open_bundle(stack, path, options)
        report.describe(auth)
        manifest = auth.manifest
        _check_vetting(manifest, options, report, access.source if access else _source(reader))
        if not options.allow_other_refs:
            _check_ref_namespaces(manifest)
        # Preflight: targets named and able to take what the bundle carries.
        targets = _open_targets(manifest, options)
        stack.callback(targets.close)
        # Freshness, under the targets' state locks (held to the end).
        stores = targets.state_stores(options.state_dir)
        states = [stack.enter_context(store.locked()) for store in stores]
        now = options.at or datetime.now(UTC)
        decisions = [_decide(auth, state, options, now) for state in states]
        report.notes = list(dict.fromkeys(n for d in decisions for n in d.notes))
        if decisions and all(d.action == "noop" for d in decisions) and still_held(
            manifest, targets.images, targets.gits, report, limits=options.limits
        ):
            report.noop = True
            _record_all(stores, states, options, auth, report, now, "noop")
            return report
        scratch = _prepare(stack, manifest, targets)
        _adapt(manifest, targets, options, report)
        # Stream phase, then publish phase; nothing visible moves before the last.
        sinks = _Sinks(targets.images, scratch, manifest, report, options.limits, targets.files)
        with _cleanup_on_failure(manifest, targets):
            if access is not None:
                _take_in_place(access, sinks, options.limits, progress)
            else:
                assert reader is not None
                stream_members(reader, manifest, sinks, progress=progress)
                if sinks.resend:
                    assert targets.images is not None
                    _resend(path, options, auth, targets.images, sinks.resend, report, progress)
            report.notes += rebuilt_notes(media.rebuilt() if media is not None else {})
            _publish(auth, sinks, targets, options, report)
            _record_all(stores, states, options, auth, report, now, "import")
    return report


def _source(reader: BundleReader | None) -> str:
    assert reader is not None
    return reader.source


def _open_bundle(
    stack: contextlib.ExitStack, path: Path, options: ImportOptions
) -> tuple[BundleAccess | None, Authenticated, BundleReader | None, Media | None]:
    """Authenticated, and open for reading members at their own offsets when
    the bundle has a signed seek table and is a file or volume set (several
    blobs in flight: ops/sections.py); else open for one front-to-back pass.
    A bundle the random-access opening finds damaged is read front to back,
    whose error names the damage (and which refuses it before any write)."""
    if options.limits.import_streams > 1:
        from airbundle.ops.sections import in_place, media_size

        media = open_media(path)
        # (a set with parity volumes rebuilds what is lost in its reader,
        # which the sections share, and names it for the report)
        media.scratch = options.scratch
        if media_size(media) is not None:
            inner = contextlib.ExitStack()
            try:
                access, auth = inner.enter_context(
                    in_place(media, path, options.policy, at=options.at, limits=options.limits)
                )
            except IntegrityError:
                inner.close()
            else:
                stack.push(inner)
                if access is not None:
                    return access, auth, None, media
    media, fh = stack.enter_context(
        opened_bundle(path, options.policy, at=options.at, scratch=options.scratch)
    )
    reader = BundleReader(fh, source=media.description, limits=options.limits)
    auth = authenticate(
        reader.read_prefix(),
        options.policy,
        source=media.description,
        at=options.at,
        limits=options.limits,
    )
    return None, auth, reader, media


def _take_in_place(
    access: BundleAccess, sinks: _Sinks, limits: Limits, progress: Progress | None
) -> None:
    """The stream phase over a bundle read in place: the manifests and indexes
    first (each checked against its digest as it is read), then every member
    in sections, `limits.import_streams` at once (ops/sections.py): each blob's
    upload is finished only after its last byte matched the signed digest; a
    lost upload is read again at once, from its own offset."""
    from airbundle.ops.sections import checked, read_sections, read_verified

    members = access.manifest.members
    for entry in members:
        if sinks.is_document(entry):
            sinks.add_document(entry, functools.partial(read_verified, access, entry.path))
    documents = {e.path for e in members if sinks.is_document(e)}
    taken = [e for e in members if e.path not in documents]
    if sinks.target is not None and sinks.documents is not None:
        sinks.check_base()
        for entry in taken:  # every blob accounted for before the first is written
            if entry.path.startswith(BLOB_PREFIX):
                sinks.blob_repos(entry)

    def work(info: MemberInfo, chunks: Iterator[bytes]) -> None:
        entry = info.place.entry
        if entry.path in documents:
            return  # read and checked above; the section checks it again
        if not sinks.take(entry, chunks):
            for _ in chunks:
                pass
            # Lost past what memory held: this member again, from its offset.
            reader = access.open_member(entry.path)
            again = checked(
                iter(lambda: reader.read(limits.io_chunk_bytes), b""), info, access.source
            )
            assert sinks.target is not None
            sinks.target.write_blob(entry.digest, entry.size, again, sinks.resend[entry.path])
            with sinks._lock:
                sinks.report.blobs_written += 1

    read_sections(access, work, workers=limits.import_streams, progress=progress)


def _check_vetting(
    manifest: BundleManifest, options: ImportOptions, report: ImportReport, source: str
) -> None:
    """The far side's own judgement of every image, before any target is touched."""
    checks = check_import(
        manifest, options.image_policy, require_vetted=options.require_vetted, source=source
    )
    for check in checks:
        entry: dict[str, object] = {"ref": str(check.ref), "digest": str(check.digest)}
        if check.verdict is not None:
            entry["scope"] = check.verdict.scope.describe()
            entry["signers"] = sorted(
                {c.key.fingerprint for c in check.verdict.verified if c.key is not None}
            )
        if check.vetted is not None:
            entry["vetted"] = check.vetted
        report.vetting.append(entry)


def _decide(
    auth: Authenticated, state: TargetState, options: ImportOptions, now: datetime
) -> Decision:
    return decide(
        auth.manifest,
        str(auth.manifest_digest),
        state.accepted.get(options.channel),
        channel=options.channel,
        now=now,
        allow_expired=options.allow_expired,
        allow_rollback=options.allow_rollback,
    )


def _adapt(
    manifest: BundleManifest, targets: _Targets, options: ImportOptions, report: ImportReport
) -> None:
    """The import fitted to what the image target accepts (ops/adapt.py),
    before anything is written."""
    if targets.images is not None:
        report.notes += adapt(manifest, targets.images, max_nested_paths=options.max_nested_paths)


def _prepare(
    stack: contextlib.ExitStack, manifest: BundleManifest, targets: _Targets
) -> Path | None:
    """Check the git prerequisites, lock and prepare the image target; the
    scratch folder git bundles are spooled to (None if the bundle has none)."""
    if targets.gits is not None:
        _check_prerequisites(manifest, targets.gits)
    if targets.files is not None:
        targets.files.prepare(base_hint(manifest))
    if targets.charts is not None and manifest.charts:
        targets.charts.prepare()
    if targets.images is not None:
        stack.enter_context(targets.images.locked())
        targets.images.prepare()
    if not manifest.repos:
        return None
    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="airbundle-")))


@contextlib.contextmanager
def _cleanup_on_failure(manifest: BundleManifest, targets: _Targets) -> Iterator[None]:
    """On any failure: staged objects may stay (unreferenced); staging refs may not."""
    try:
        yield
    except BaseException:
        if targets.files is not None:
            targets.files.discard()
        if targets.images is not None:
            # Let background uploads settle before reporting the failure.
            with contextlib.suppress(Exception):
                targets.images.drain()
        if targets.gits is not None:
            for repo in manifest.repos:
                with contextlib.suppress(Exception):
                    targets.gits.discard(repo.name)
        raise


def _resend(
    path: Path,
    options: ImportOptions,
    auth: Authenticated,
    target: ImageTarget,
    resend: dict[str, list[str]],
    report: ImportReport,
    progress: Progress | None,
) -> None:
    """Upload again, from a second read of the bundle, the blobs whose upload
    sessions were lost past what memory held (a registry or a proxy that drops a
    session mid-blob). Every member is checked again on the way; a failure now
    ends the import (a re-run continues from what is stored)."""
    with opened_bundle(path, options.policy, at=options.at) as (media, fh):
        reader = BundleReader(fh, source=media.description, limits=options.limits)
        if Digest.sha256_of(reader.read_prefix().manifest) != auth.manifest_digest:
            raise ArchiveError(
                f"{media.description}: the bundle changed during the import (its signed "
                "manifest is not the one verified at the start)"
            )

        def sink(_member: TarMember, entry: MemberEntry, chunks: Iterator[bytes]) -> None:
            repos = resend.get(entry.path)
            if repos is not None:
                target.write_blob(entry.digest, entry.size, chunks, repos)
                report.blobs_written += 1

        # The same progress as the first read: it runs past 100 % rather than
        # leave the operator looking at a finished bar while the media is read.
        stream_members(reader, auth.manifest, sink, progress=progress)


def base_hint(manifest: BundleManifest) -> str:
    if not manifest.base:
        return "this bundle is not incremental; was the target changed since?"
    names = ", ".join(
        f"bundle {escape(str(b.get('name')))} ({escape(str(b.get('id')))})"
        if b.get("kind") == "bundle"
        else f"the inventory of {escape(str(b.get('target')))} "
        f"taken {escape(str(b.get('created')))}"
        for b in manifest.base
    )
    return (
        f"this is an incremental bundle built on {names}: the target must hold what that "
        "base holds (import the base bundle first), or export again with --since a fresh "
        "inventory of this target (airbundle inventory)"
    )


def _check_prerequisites(manifest: BundleManifest, gits: GitTarget) -> None:
    """Before anything is written: the commits an incremental bundle builds on."""
    for repo in manifest.repos:
        missing = gits.missing(repo.name, list(repo.prerequisites))
        if missing:
            raise TargetError(
                f"repo {repo.name!r}: {gits.describe(repo.name)} lacks "
                f"{len(missing)} commit(s) this bundle builds on ({', '.join(missing[:5])})",
                hint=base_hint(manifest),
            )


def _check_ref_namespaces(manifest: BundleManifest) -> None:
    for repo in manifest.repos:
        for ref in repo.refs:
            if not ref.name.startswith(("refs/heads/", "refs/tags/")):
                raise UsageError(
                    f"repo {repo.name!r}: the bundle carries {ref.name}, outside refs/heads "
                    "and refs/tags",
                    hint="pass --allow-other-refs if the target should receive it",
                )


def _record_all(
    stores: list[StateStore],
    states: list[TargetState],
    options: ImportOptions,
    auth: Authenticated,
    report: ImportReport,
    now: datetime,
    action: str,
) -> None:
    for store, state in zip(stores, states, strict=True):
        _record(store, state, options, auth, report, now, action)


def _record(
    store: StateStore,
    state: TargetState,
    options: ImportOptions,
    auth: Authenticated,
    report: ImportReport,
    now: datetime,
    action: str,
) -> None:
    info = auth.manifest.bundle
    if action == "import":
        # Keyed by channel alone: changing the trust file (a key rotation)
        # must not make the target forget what it has seen.
        state.accepted[options.channel] = Accepted(
            info.sequence,
            str(auth.manifest_digest),
            info.id,
            format_time(info.created),
            format_time(now),
        )
    policy = options.policy
    state.history.append(
        {
            "time": format_time(now),
            "action": action,
            "channel": info.channel,
            "trustSet": trust_set_id(
                [k.public_key.fingerprint for k in policy.keys], policy.threshold
            ),
            "sequence": info.sequence,
            "bundle": info.name,
            "bundleId": info.id,
            "manifestDigest": str(auth.manifest_digest),
            "signers": [s.public_key.fingerprint for s in auth.signers],
            "notes": report.notes,
            # Overrides an auditor will want to see next to the import.
            "flags": {
                "force": options.force,
                "allowOtherRefs": options.allow_other_refs,
                "allowExpired": options.allow_expired,
                "allowRollback": options.allow_rollback,
                "imagePolicy": str(options.image_policy.digest) if options.image_policy else None,
                "requireVetted": options.require_vetted,
            },
        }
    )
    store.save(state)


def _publish(
    auth: Authenticated,
    sinks: _Sinks,
    targets: _Targets,
    options: ImportOptions,
    report: ImportReport,
) -> None:
    """Make the import visible, once every member verified: git objects
    staged and ref moves checked first, then manifests, tags, and refs."""
    manifest = auth.manifest
    if targets.gits is not None:
        _stage_repos(manifest, sinks.staged, targets.gits, force=options.force)
    if targets.images is not None:
        _publish_images(manifest, sinks, targets.images, report, options.limits)
    if targets.files is not None:
        targets.files.publish()
        report.files = targets.files.report()
    report.charts = [
        {"name": c.name, "version": c.version, "ref": str(c.ref), "digest": str(c.chart_digest)}
        for c in manifest.charts
    ]
    if targets.charts is not None and manifest.charts:
        assert targets.images is not None and sinks.documents is not None
        targets.charts.publish(manifest, sinks.documents.data, targets.images)
        report.charts = list(targets.charts.charts)
    if targets.gits is not None:
        _publish_repos(manifest, targets.gits, report, force=options.force)
    prove_published(manifest, targets.images, targets.gits, limits=options.limits)
    if targets.images is not None and targets.images.mirror_host() is not None:
        entries = targets.images.mirror_entries()
        report.mirror = trust_record(entries.trust, entries.ca_file)
        if options.emit_mirror_config is not None:
            write_mirror_config(
                options.emit_mirror_config,
                manifest.bundle.name,
                with_repins(entries.images, report.images),
                trust=entries.trust,
                scope=options.mirror_scope,
                charts=[CarriedChart(c.name, c.version, c.ref) for c in manifest.charts],
            )
    report_path = options.report
    folder = targets.images.report_folder() if targets.images is not None else None
    if report_path is None and folder is not None:
        report_path = folder / REPORT_NAME
    if report_path is not None:
        write_atomic(report_path, report.to_json())
        report.report_path = str(report_path)


def _stage_repos(
    manifest: BundleManifest, staged: dict[str, Path], gits: GitTarget, *, force: bool
) -> None:
    """Every repo's objects into the target, no ref moved; refuse before any
    moves if one would move non-fast-forward (unless forced)."""
    refused: list[str] = []
    for repo in manifest.repos:
        refs = [(r.name, r.target) for r in repo.refs]
        gits.stage(repo.name, staged[repo.name], refs)
        if not force:
            refused += gits.refused(repo.name, refs)
    if refused:
        raise RefUpdateError(
            "refusing to move refs: " + "; ".join(refused),
            hint="nothing was changed; re-run with --force to move them anyway",
        )


def _publish_images(
    manifest: BundleManifest,
    sinks: _Sinks,
    target: ImageTarget,
    report: ImportReport,
    limits: Limits,
) -> None:
    docs = sinks.documents
    assert docs is not None
    sinks.check_base()
    target.drain()  # every blob stored before the first manifest goes up
    # Children before the indexes that reference them: deepest level first,
    # each level's manifests in parallel (round trips, not bytes, dominate).
    for level in sorted({docs.depth.get(d, 0) for d in docs.order}, reverse=True):
        jobs = [
            (location, digest)
            for digest in docs.order
            if docs.depth.get(digest, 0) == level
            for location in docs.repos(digest)
        ]
        parallel(
            lambda job: docs.sparse.put(
                target, job[0], job[1], docs.media_type(job[1]), docs.data[job[1]]
            ),
            jobs,
            workers=limits.import_workers,
        )
    # Tags last, once every manifest they name is in place (a platform
    # subset's tag on the upstream index where the target took it).
    tagged = parallel(
        lambda image: docs.sparse.tag(target, image, docs.data),
        list(manifest.images),
        workers=limits.import_workers,
    )
    for image, (where, digest) in zip(manifest.images, tagged, strict=True):
        report.images.append(
            {
                "source": str(image.ref),
                "target": where,
                "digest": str(digest),
                **docs.sparse.report(image, digest),
            }
        )
    report.notes += docs.sparse.notes(target)
    carried_tags = {(target.locate(i.ref), i.ref.tag) for i in manifest.images if i.ref.tag}
    fallback = index_referrers(
        target,
        docs.data,
        docs.media_types(),
        docs.repo_map(),
        limits,
        carried_tags=carried_tags,
    )
    if fallback:
        report.notes.append(
            f"{target.describe()} has no referrers API: {fallback} subject(s) list their "
            "signatures and attestations under the sha256-HEX tag instead"
        )
    target.finish()


def _publish_repos(
    manifest: BundleManifest, gits: GitTarget, report: ImportReport, *, force: bool
) -> None:
    for repo in manifest.repos:
        refs = [(r.name, r.target) for r in repo.refs]
        gits.publish(repo.name, refs, head=repo.head, force=force)
        report.repos.append(
            {"name": repo.name, "target": gits.describe(repo.name), "refs": dict(refs)}
        )
        if repo.head is not None:
            # A server's HEAD is not moved by a push: set it where we can,
            # say how where we cannot (`git clone` would check out nothing).
            note = gits.set_head(repo.name, repo.head)
            if note is not None:
                report.notes.append(note)


__all__ = ["ImportOptions", "ImportReport", "import_bundle"]
