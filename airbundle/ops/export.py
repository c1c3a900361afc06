"""Export: spec -> one signed, compressed bundle, streaming each byte once."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit, urlunsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airbundle import __version__
from airbundle.adapters import git
from airbundle.adapters.blobcache import BlobCache
from airbundle.adapters.fsutil import TEMP_MARK, atomic_output
from airbundle.adapters.images import FixedRootSource
from airbundle.adapters.media import VolumeWriter
from airbundle.adapters.pipeline import ahead
from airbundle.adapters.registry.source import RegistryImageSource
from airbundle.adapters.registry.transport import Transport
from airbundle.errors import SourceError, SpecError, TargetError, UsageError
from airbundle.format import sshsig
from airbundle.format.archive import HEADER_SIZE, BundleWriter, prefix_upper_bound
from airbundle.format.digest import Digest
from airbundle.format.imagescan import Finding
from airbundle.format.inventory import Base
from airbundle.format.manifest import (
    OCI_LAYOUT_DIR,
    BundleInfo,
    BundleManifest,
    ImageEntry,
    MemberEntry,
    RefEntry,
    RepoEntry,
    blob_member_path,
    repo_member_path,
)
from airbundle.format.oci import LAYOUT_FILE, REF_NAME, Descriptor, layout_index
from airbundle.format.reference import ImageReference
from airbundle.format.spec import BundleSpec, ImageSpec, RepoSpec
from airbundle.limits import DEFAULT_LIMITS, Limits
from airbundle.ops.base import load_bases
from airbundle.ops.collect import CollectedImage, collect_image
from airbundle.ops.scan import carried_images, scan_repo, summarize
from airbundle.ops.sources import Sources
from airbundle.ops.volumes import write_index

# Room kept in the prefix for approval signatures added later by `sign`.
RESERVED_SIGNATURES = 16
RESERVED_SIGNATURE_BYTES = 1024

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
    # Incremental: leave out what these earlier bundles / inventories show the
    # disconnected side already has.
    since: tuple[Path, ...] = ()
    limits: Limits = DEFAULT_LIMITS


@dataclass(frozen=True)
class ExportResult:
    path: Path
    manifest: BundleManifest
    manifest_digest: Digest
    size: int
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class _PreparedRepo:
    spec: RepoSpec
    bundle: Path  # the git bundle; or, after `header`, the pack that completes it
    size: int
    entry: RepoEntry
    header: bytes = b""
    scanned: tuple[int, list[Finding]] = (0, [])


def _created(options: ExportOptions) -> datetime:
    epoch = options.source_date_epoch
    if epoch is None and os.environ.get("SOURCE_DATE_EPOCH"):
        try:
            epoch = int(os.environ["SOURCE_DATE_EPOCH"])
        except ValueError:
            raise UsageError("SOURCE_DATE_EPOCH must be an integer (seconds since 1970)") from None
    return datetime.fromtimestamp(epoch if epoch is not None else int(time.time()), UTC)


def _default_sequence(reproducible: bool, created: datetime) -> int:
    """Milliseconds since 1970: monotonic enough for one exporter, and two
    exports in the same second still differ (unless made reproducible)."""
    if reproducible:
        return int(created.timestamp()) * 1000
    return time.time_ns() // 1_000_000


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


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "airbundle"


@contextlib.contextmanager
def git_mirror(spec: RepoSpec, cache_dir: Path | None, workdir: Path) -> Iterator[Path]:
    """A bare repository that persists between exports, so a re-export fetches
    only what changed; locked while in use. Without a cache: a scratch repo."""
    if cache_dir is None:
        yield workdir / f"{spec.name}.git"
        return
    key = hashlib.sha256(spec.url.encode()).hexdigest()[:16]
    folder = cache_dir / "git"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{key}.lock").open("a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield folder / f"{key}-{spec.name}.git"


def _prepare_repo(
    spec: RepoSpec,
    workdir: Path,
    *,
    reproducible: bool,
    cache_dir: Path | None,
    scan: bool,
    base: Base,
) -> _PreparedRepo:
    what = f"repo {spec.name!r} ({_redact_url(spec.url)})"
    with git_mirror(spec, cache_dir, workdir) as bare:
        prepared = _bundle_repo(
            spec,
            bare,
            workdir,
            what,
            reproducible=reproducible,
            base_commits=base.commits(spec.name),
        )
        if scan:
            refs = [r.name for r in prepared.entry.refs]
            prepared = replace(prepared, scanned=scan_repo(spec.name, bare, refs))
        return prepared


def _bundle_repo(
    spec: RepoSpec,
    bare: Path,
    workdir: Path,
    what: str,
    *,
    reproducible: bool,
    base_commits: list[str],
) -> _PreparedRepo:
    refs, head = git.fetch_selected_refs(spec.url, spec.refs, bare, what=what)
    if spec.pinned is not None:
        refs = _pin_refs(bare, refs, spec.pinned, what)
    if not refs:
        raise SourceError(
            f"{what}: none of the refs {', '.join(spec.refs)} exist in the repository"
        )
    fmt = git.object_format(bare, error=SourceError, what=what)
    # A full bundle of a fresh fetch is the fetched pack behind a header: no
    # second pack-objects run, no copy. Not for reproducible exports: the pack
    # is the server's, and its delta choices vary from run to run.
    direct = None
    if not (reproducible or base_commits or spec.pinned is not None):
        direct = git.pack_as_bundle(bare, refs, fmt)
    header = b""
    if direct is not None:
        bundle = workdir / f"{spec.name}.pack"
        try:
            # A link stays readable whatever git does to the cache later.
            os.link(direct[1], bundle)
        except OSError:  # the cache is on another file system
            direct = None
    if direct is not None:
        header = direct[0]
        heads = git.parse_bundle_header(header, source=what)
    else:
        bundle = workdir / f"{spec.name}.bundle"
        names = sorted(name for name, _ in refs)
        git.create_bundle(
            bare, names, bundle, what=what, reproducible=reproducible, exclude=base_commits
        )
        heads = git.read_bundle_heads(bundle)
    entry = RepoEntry(
        name=spec.name,
        url=_redact_url(spec.written_url or spec.url),
        member=repo_member_path(spec.name),
        object_format=fmt,
        refs=tuple(RefEntry(n, oid) for n, oid in sorted(heads.refs)),
        head=head,
        prerequisites=heads.prerequisites,
    )
    return _PreparedRepo(spec, bundle, len(header) + bundle.stat().st_size, entry, header)


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


def _counting(chunks: Iterable[bytes], progress: Progress | None) -> Iterator[bytes]:
    for chunk in chunks:
        if progress:
            progress(len(chunk))
        yield chunk


SMALL_BLOB_BYTES = 1 << 20


def _small_blob(item: tuple[Digest, Descriptor, CollectedImage]) -> bytes | None:
    """A small blob's bytes, read whole (the writer checks size and digest);
    None for a large one."""
    _digest, desc, img = item
    if desc.size > SMALL_BLOB_BYTES:
        return None
    return b"".join(img.source.open_blob(desc))


def _bundle_id(name: str, created: datetime, members: list[MemberEntry]) -> str:
    h = hashlib.sha256(f"{name}\n{created.isoformat()}\n".encode())
    for m in members:
        h.update(f"{m.path} {m.size} {m.digest}\n".encode())
    return str(uuid.UUID(bytes=h.digest()[:16], version=4))


def _plan_one(item: ImageSpec, sources: Sources) -> CollectedImage:
    source = sources.open(item.source, text=item.text)
    resolved_name = None
    # Resolve once for the recorded name; collect_image resolves again
    # (cheap for local sources, one request for a registry).
    if item.name is None and item.source.transport != "docker":
        resolved_name = source.resolve().recorded_name
    ref = _image_name(item, resolved_name)
    image = collect_image(source, ref, item.platforms, limits=sources.limits)
    if item.pinned is not None and item.pinned not in (image.root.digest, image.source_digest):
        raise SourceError(
            f"{item.text}: resolves to {image.root.digest}, the lock file pins {item.pinned}",
            hint="the source changed since `airbundle plan`: review and plan again",
        )
    if item.referrers and isinstance(source, RegistryImageSource):
        for desc, tag in _referrers(item, source, image):
            name = replace(ref, tag=tag, digest=None if tag else desc.digest)
            image.referrers.append(
                collect_image(
                    FixedRootSource(source, desc, f"{item.text} (referrer {desc.digest})"),
                    name,
                    None,
                    limits=sources.limits,
                )
            )
    for carried in [image, *image.referrers]:
        for digest in [*carried.documents, *(b.digest for b in carried.blobs)]:
            if digest.algorithm != "sha256":
                raise SourceError(
                    f"{item.text}: blob {digest} uses {digest.algorithm}; "
                    "bundles carry sha256 blobs only"
                )
    return image


def _referrers(
    item: ImageSpec, source: RegistryImageSource, image: CollectedImage
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


def plan_images(spec: BundleSpec, sources: Sources, *, workers: int = 8) -> list[CollectedImage]:
    """Resolve every image and fetch its manifests; round trips overlap in a
    bounded pool (hundreds of small images are latency-bound, not byte-bound)."""
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(spec.images)))) as pool:
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


def subset_warnings(images: list[CollectedImage]) -> list[str]:
    return [
        f"{img.source_text}: carrying {', '.join(img.platforms)} only changes the index digest "
        f"from {img.source_digest} to {img.root.digest}; references pinned to "
        f"{img.source_digest} will not resolve in the target (tags and the platform manifest "
        "digests will)"
        for img in images
        if img.source_digest is not None
    ]


def export_bundle(
    spec: BundleSpec, options: ExportOptions, *, progress: Progress | None = None
) -> ExportResult:
    if not options.keys:
        raise UsageError("export needs a signing key (--key)")
    limits = options.limits
    created = _created(options)
    reproducible = options.source_date_epoch is not None or "SOURCE_DATE_EPOCH" in os.environ
    base = load_bases(options.since, limits=limits)
    cache = BlobCache(options.cache_dir) if options.cache_dir is not None else None
    planned = plan_images(spec, Sources(options.transport or Transport(), limits, cache))
    images = [carried for img in planned for carried in (img, *img.referrers)]
    out = options.output
    out.parent.mkdir(parents=True, exist_ok=True)
    index_path: Path | None = None
    _remove_leftovers(out)
    workdir = Path(
        tempfile.mkdtemp(prefix=f"{TEMP_MARK}{out.name}.work-", dir=out.parent)
    ).resolve()
    try:
        repos = [
            _prepare_repo(
                r,
                workdir,
                reproducible=reproducible,
                cache_dir=options.cache_dir,
                scan=options.check_images,
                base=base,
            )
            for r in spec.repos
        ]
        # Everything the manifest will say is known now except the git bundles'
        # digests; digests have a fixed length, so this sizes the prefix exactly.
        index = layout_index(
            [replace(img.root, annotations={REF_NAME: str(img.ref)}, raw={}) for img in images]
        )
        documents: dict[Digest, bytes] = {}
        blobs: dict[Digest, tuple[Descriptor, CollectedImage]] = {}
        for img in images:
            documents.update(img.documents)
            for blob in img.blobs:
                # Manifests always travel (small, needed to tag); layers and
                # configs the other side has stay home.
                if blob.digest not in base.blobs:
                    blobs.setdefault(blob.digest, (blob, img))
        placeholder = Digest("sha256", "0" * 64)
        members = [
            MemberEntry(f"{OCI_LAYOUT_DIR}/oci-layout", len(LAYOUT_FILE), placeholder),
            MemberEntry(f"{OCI_LAYOUT_DIR}/index.json", len(index), placeholder),
            *(MemberEntry(blob_member_path(d), len(data), d) for d, data in documents.items()),
            *(
                MemberEntry(blob_member_path(d), desc.size, d)
                for d, (desc, _) in blobs.items()
                if d not in documents
            ),
            *(MemberEntry(r.entry.member, r.size, placeholder) for r in repos),
        ]
        info = BundleInfo(
            name=spec.name,
            id=str(uuid.UUID(int=0)),
            created=created,
            tool=f"airbundle {__version__}",
            channel=options.channel,
            sequence=options.sequence
            if options.sequence is not None
            else _default_sequence(reproducible, created),
            expires=created + options.expires_in if options.expires_in else None,
        )
        image_entries = tuple(
            ImageEntry(
                img.ref,
                img.source_text,
                img.root.digest,
                img.root.media_type,
                img.root.size,
                img.platforms,
                img.source_digest,
            )
            for img in images
        )
        scan = None
        if options.check_images:
            files = sum(r.scanned[0] for r in repos)
            findings = [f for r in repos for f in r.scanned[1]]
            scan = summarize(files, findings, carried_images(images))
            if options.strict and scan.missing:
                shown = "; ".join(f"{m.ref} ({m.file}:{m.line})" for m in scan.missing[:20])
                more = f" and {len(scan.missing) - 20} more" if len(scan.missing) > 20 else ""
                raise SpecError(
                    f"{len(scan.missing)} image reference(s) in the carried repositories are "
                    f"not in the bundle: {shown}{more}",
                    hint="add them to the spec's images, or export without --strict",
                )
        draft = BundleManifest(
            info,
            tuple(members),
            image_entries,
            tuple(r.entry for r in repos),
            scan,
            tuple(base.sources),
        )
        capacity = prefix_upper_bound(
            len(draft.to_bytes()), RESERVED_SIGNATURES, RESERVED_SIGNATURE_BYTES
        )
        mtime = int(created.timestamp())
        with _output(out, options.split_size, HEADER_SIZE + capacity) as fh:
            writer = BundleWriter(
                fh,
                prefix_capacity=capacity,
                level=options.level,
                threads=options.threads,
                mtime=mtime,
                limits=limits,
            )
            written = [
                writer.add_bytes(f"{OCI_LAYOUT_DIR}/oci-layout", LAYOUT_FILE),
                writer.add_bytes(f"{OCI_LAYOUT_DIR}/index.json", index),
            ]
            for digest, data in documents.items():
                written.append(
                    writer.add_stream(blob_member_path(digest), len(data), [data], expected=digest)
                )
            todo = [(d, desc, img) for d, (desc, img) in blobs.items() if d not in documents]
            # Small blobs are fetched a few at a time ahead of the writer (round
            # trips, not bytes, are their cost); large ones stream in their turn.
            with contextlib.closing(ahead(_small_blob, todo)) as smalls:
                for (digest, desc, img), small in zip(todo, smalls, strict=True):
                    content = [small] if small is not None else img.source.open_blob(desc)
                    written.append(
                        writer.add_stream(
                            blob_member_path(digest),
                            desc.size,
                            _counting(content, progress),
                            expected=digest,
                            what=f"{img.source_text}: blob {digest}",
                        )
                    )
            for repo in repos:
                with repo.bundle.open("rb") as bfh:
                    pack = itertools.chain(
                        [repo.header] if repo.header else [],
                        iter(lambda bfh=bfh: bfh.read(limits.io_chunk_bytes), b""),  # type: ignore[misc]
                    )
                    written.append(
                        writer.add_stream(repo.entry.member, repo.size, _counting(pack, progress))
                    )
                repo.bundle.unlink()
            final_members = [MemberEntry(w.path, w.size, w.sha256) for w in written]
            info = replace(info, id=_bundle_id(spec.name, created, final_members))
            manifest = BundleManifest(
                info,
                tuple(final_members),
                image_entries,
                tuple(r.entry for r in repos),
                scan,
                tuple(base.sources),
            )
            manifest_bytes = manifest.to_bytes()
            signatures = [sshsig.sign(manifest_bytes, key) for key in options.keys]
            writer.finish(manifest_bytes, signatures)
            size = fh.tell()
            if isinstance(fh, VolumeWriter):
                index_path = write_index(out.parent, fh.commit(), options.keys)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return ExportResult(
        index_path or out,
        manifest,
        Digest.sha256_of(manifest_bytes),
        size,
        tuple(subset_warnings(images)),
    )


def _remove_leftovers(out: Path) -> None:
    """Temporary files of an earlier export of the same output that was killed."""
    for stale in out.parent.glob(f"{TEMP_MARK}{out.name}.*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


@contextlib.contextmanager
def _output(out: Path, split_size: int | None, unhashed: int) -> Iterator[BinaryIO]:
    """One bundle file written atomically, or a volume set (committed by the caller)."""
    try:
        if split_size is None:
            with atomic_output(out) as fh:
                yield fh
            return
        volumes = VolumeWriter(out.parent, out.name, split_size, unhashed=unhashed)
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
