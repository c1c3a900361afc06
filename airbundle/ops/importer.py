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
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from airbundle.adapters.fsutil import TEMP_MARK, atomic_output, write_atomic
from airbundle.adapters.git import redact
from airbundle.adapters.git_targets import GitTarget, open_git_target
from airbundle.adapters.images import ImageTarget
from airbundle.adapters.oci_layout import OciLayoutTarget
from airbundle.adapters.pipeline import parallel
from airbundle.adapters.registry.client import RegistryClient
from airbundle.adapters.registry.target import RegistryImageTarget
from airbundle.adapters.registry.transport import Transport
from airbundle.errors import (
    ArchiveError,
    FormatError,
    RefUpdateError,
    TargetError,
    UploadLostError,
    UsageError,
)
from airbundle.format.archive import BundleReader
from airbundle.format.digest import Digest
from airbundle.format.freshness import Accepted, decide, trust_set_id
from airbundle.format.manifest import (
    BLOB_PREFIX,
    DEFAULT_CHANNEL,
    BundleManifest,
    ImageEntry,
    MemberEntry,
    format_time,
)
from airbundle.format.mapping import MappingOptions, RegistryLocation, map_images
from airbundle.format.mirrorconfig import CarriedImage
from airbundle.format.oci import OCI_INDEX, OCI_MANIFEST, parse_manifest
from airbundle.format.tarstream import TarMember
from airbundle.format.trust import TrustPolicy
from airbundle.limits import DEFAULT_LIMITS, Limits
from airbundle.ops.mirrors import write_mirror_config
from airbundle.ops.state import StateStore, TargetState, default_state_dir
from airbundle.ops.verify import Authenticated, authenticate, stream_members
from airbundle.ops.volumes import opened_bundle

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
    at: datetime | None = None
    limits: Limits = DEFAULT_LIMITS


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
    report_path: str | None = None
    sequence: int = 0
    channel: str = ""
    noop: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> bytes:
        doc = {k: v for k, v in self.__dict__.items() if k != "report_path"}
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def _image_target(manifest: BundleManifest, options: ImportOptions) -> ImageTarget | None:
    if not manifest.images:
        return None
    if options.registry is None:
        raise UsageError(
            f"the bundle carries {len(manifest.images)} image(s): say where they go with "
            "--registry HOST[:PORT][/PREFIX] or --registry oci:DIR"
        )
    if options.registry.startswith("oci:"):
        return OciLayoutTarget(Path(options.registry[4:]).resolve(), limits=options.limits)
    location = RegistryLocation.parse(options.registry)
    mapping = map_images(
        [i.ref for i in manifest.images],
        location,
        MappingOptions(
            keep_source_host=options.keep_source_host, max_nested_paths=options.max_nested_paths
        ),
    )
    client = RegistryClient(
        location.host, options.transport or Transport(), error=TargetError, limits=options.limits
    )
    return RegistryImageTarget(client, mapping)


def _git_target(manifest: BundleManifest, options: ImportOptions) -> GitTarget | None:
    if not manifest.repos:
        return None
    if options.git is None:
        raise UsageError(
            f"the bundle carries {len(manifest.repos)} repo(s): say where they go with "
            "--git DIR or --git 'URL/{name}.git'"
        )
    return open_git_target(options.git)


class _Documents:
    """Manifests and indexes discovered top-down from the images' roots."""

    def __init__(self, images: tuple[ImageEntry, ...], target: ImageTarget, limits: Limits):
        self.limits = limits
        self.expected: dict[Digest, tuple[str, set[str]]] = {}  # digest -> (media type, repos)
        for image in images:
            repo = target.locate(image.ref)
            self._expect(image.digest, image.media_type, {repo})
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


class _Sinks:
    def __init__(
        self,
        target: ImageTarget | None,
        scratch: Path | None,
        manifest: BundleManifest,
        report: ImportReport,
        limits: Limits,
    ) -> None:
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

    def check_base(self) -> None:
        """Once every manifest has been read, and before any blob is written:
        each blob an image needs but the bundle does not carry must already be
        in the target (an incremental bundle's base)."""
        if self._base_checked or self.target is None or self.documents is None:
            return
        self._base_checked = True
        docs = self.documents
        self.target.warm({d: sorted(r) for d, r in docs.blob_repos.items()})
        unread = [d for d in docs.expected if d not in docs.data]
        if unread:
            raise ArchiveError(f"manifest {unread[0]} is referenced but not in the bundle")
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

    def __call__(self, member: TarMember, entry: MemberEntry, chunks: Iterator[bytes]) -> None:
        if entry.path.startswith(BLOB_PREFIX):
            assert self.target is not None and self.documents is not None
            docs = self.documents
            if docs.is_document(entry.digest):
                if entry.size > self.limits.max_oci_manifest_bytes:
                    raise ArchiveError(f"manifest {entry.digest} is {entry.size} bytes, too large")
                docs.add(entry.digest, b"".join(chunks))  # chunks raise if the digest is wrong
                return
            self.check_base()
            repos = sorted(docs.blob_repos.get(entry.digest, ()))
            if not repos:
                raise ArchiveError(
                    f"{entry.path}: blob is not referenced by any image in the bundle, or comes "
                    "before the manifests that reference it"
                )
            if self.target.has_blob(entry.digest, repos):
                self.report.blobs_present += 1
                return  # stream_members still drains and verifies the bytes
            try:
                self.target.write_blob(entry.digest, entry.size, chunks, repos)
            except UploadLostError:
                self.resend[entry.path] = repos
                self.report.notes.append(
                    f"{self.target.describe()}: the upload of {entry.digest} to "
                    f"{', '.join(repos)} was lost mid-blob; it was read again from the bundle"
                )
                return  # stream_members still drains and verifies the bytes
            self.report.blobs_written += 1
        elif entry.path in self.repos:
            assert self.scratch is not None
            repo = self.repos[entry.path]
            path = self.scratch / f"{TEMP_MARK}{repo.name}.bundle"
            with atomic_output(path, fsync=False) as fh:
                for chunk in chunks:
                    fh.write(chunk)
            self.staged[repo.name] = path


def import_bundle(
    path: Path, options: ImportOptions, *, progress: Progress | None = None
) -> ImportReport:
    report = ImportReport(bundle=str(path))
    with contextlib.ExitStack() as stack:
        media, fh = stack.enter_context(opened_bundle(path, options.policy, at=options.at))
        source = media.description
        reader = BundleReader(fh, source=source, limits=options.limits)
        auth = authenticate(
            reader.read_prefix(),
            options.policy,
            source=source,
            at=options.at,
            limits=options.limits,
        )
        manifest = auth.manifest
        report.bundle_id = manifest.bundle.id
        report.bundle_name = manifest.bundle.name
        report.manifest_digest = str(auth.manifest_digest)
        report.sequence = manifest.bundle.sequence
        report.channel = manifest.bundle.channel
        if not options.allow_other_refs:
            _check_ref_namespaces(manifest)
        if options.emit_mirror_config is not None and (
            options.registry is None or options.registry.startswith("oci:")
        ):
            raise UsageError("--emit-mirror-config needs a registry target (--registry HOST)")
        # Both targets are checked before a byte is written to either.
        target = _image_target(manifest, options)
        gits = _git_target(manifest, options)
        # One state per target the operator named (not per what this bundle
        # carries: an images-only bundle must not slip past a newer full one).
        stores = sorted(_state_stores(options), key=lambda s: str(s.path))
        states = [stack.enter_context(store.locked()) for store in stores]
        now = options.at or datetime.now(UTC)
        decisions = [
            decide(
                manifest,
                str(auth.manifest_digest),
                state.accepted.get(options.channel),
                channel=options.channel,
                now=now,
                allow_expired=options.allow_expired,
                allow_rollback=options.allow_rollback,
            )
            for state in states
        ]
        report.notes = list(dict.fromkeys(n for d in decisions for n in d.notes))
        if decisions and all(d.action == "noop" for d in decisions):
            report.noop = True
            for store, state in zip(stores, states, strict=True):
                _record(store, state, options, auth, report, now, "noop")
            return report
        if gits is not None:
            stack.callback(gits.close)
            _check_prerequisites(manifest, gits)
        if isinstance(target, OciLayoutTarget):
            stack.enter_context(target.locked())
        if target is not None:
            target.prepare()
        scratch = None
        if manifest.repos:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="airbundle-")))
        sinks = _Sinks(target, scratch, manifest, report, options.limits)
        try:
            stream_members(reader, manifest, sinks, progress=progress)
            if sinks.resend:
                assert target is not None
                _resend(path, options, auth, target, sinks.resend, report, progress)
            _publish(auth, sinks, target, gits, options, report)
            for store, state in zip(stores, states, strict=True):
                _record(store, state, options, auth, report, now, "import")
        except BaseException:
            if target is not None:
                # Let background uploads settle before reporting the failure.
                with contextlib.suppress(Exception):
                    target.drain()
            # Staged objects may stay (unreferenced); staging refs may not.
            if gits is not None:
                for repo in manifest.repos:
                    with contextlib.suppress(Exception):
                        gits.discard(repo.name)
            raise
    return report


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
        f"bundle {b.get('name')} ({b.get('id')})"
        if b.get("kind") == "bundle"
        else f"the inventory of {b.get('target')} taken {b.get('created')}"
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


def _state_stores(options: ImportOptions) -> list[StateStore]:
    stores = []
    if options.registry is not None:
        if options.registry.startswith("oci:"):
            root = Path(options.registry[4:]).resolve()
            folder = options.state_dir or root / ".airbundle"
            stores.append(StateStore(folder, f"images=oci:{root}"))
        else:
            location = RegistryLocation.parse(options.registry)
            where = f"{location.host}/{location.prefix}".rstrip("/")
            stores.append(StateStore(options.state_dir or default_state_dir(), f"images={where}"))
    if options.git is not None:
        where = redact(options.git) if "{name}" in options.git else str(Path(options.git).resolve())
        stores.append(StateStore(options.state_dir or default_state_dir(), f"git={where}"))
    return stores


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
            },
        }
    )
    store.save(state)


def _publish(
    auth: Authenticated,
    sinks: _Sinks,
    target: ImageTarget | None,
    gits: GitTarget | None,
    options: ImportOptions,
    report: ImportReport,
) -> None:
    manifest = auth.manifest
    refused: list[str] = []
    if gits is not None:
        for repo in manifest.repos:
            refs = [(r.name, r.target) for r in repo.refs]
            gits.stage(repo.name, sinks.staged[repo.name], refs)
            if not options.force:
                refused += gits.refused(repo.name, refs)
    if refused:
        raise RefUpdateError(
            "refusing to move refs: " + "; ".join(refused),
            hint="nothing was changed; re-run with --force to move them anyway",
        )
    if target is not None:
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
                lambda job: target.put_manifest(
                    job[0], job[1], docs.media_type(job[1]), docs.data[job[1]]
                ),
                jobs,
            )
        # Tags last, once every manifest they name is in place.
        wheres = parallel(
            lambda image: target.tag(
                target.locate(image.ref), image.ref, image.media_type, docs.data[image.digest]
            ),
            list(manifest.images),
        )
        for image, where in zip(manifest.images, wheres, strict=True):
            report.images.append(
                {"source": str(image.ref), "target": where, "digest": str(image.digest)}
            )
        target.finish()
    if gits is not None:
        for repo in manifest.repos:
            refs = [(r.name, r.target) for r in repo.refs]
            gits.publish(repo.name, refs, head=repo.head, force=options.force)
            report.repos.append(
                {"name": repo.name, "target": gits.describe(repo.name), "refs": dict(refs)}
            )
    if options.emit_mirror_config is not None and isinstance(target, RegistryImageTarget):
        mirrored = [
            CarriedImage(ref, target.client.host, repo) for ref, repo in target.mapping.items()
        ]
        write_mirror_config(
            options.emit_mirror_config,
            manifest.bundle.name,
            mirrored,
            insecure=target.client.base.startswith("http://"),
            scope=options.mirror_scope,
        )
    report_path = options.report
    if report_path is None and isinstance(target, OciLayoutTarget):
        report_path = target.root / REPORT_NAME
    if report_path is not None:
        write_atomic(report_path, report.to_json())
        report.report_path = str(report_path)


__all__ = ["OCI_INDEX", "ImportOptions", "ImportReport", "import_bundle"]
