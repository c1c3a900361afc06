"""Open a bundle for random access to its members, on authenticated terms.

For `serve --bundle` and for readers that take members at their own offsets
(parallel verify and import). The order of trust is the one `verify` keeps:

1. a volume set's signed index and every volume's presence and size;
2. the header, then the prefix region, whose manifest signatures must meet
   the trust policy before the manifest is parsed;
3. the frames: from the seek table the manifest declares (read at its place,
   its sha256 equal to the signed one, its frames exactly the listed
   members' tar stream); or, for a bundle written before the seek table,
   from a frame index in the cache folder, made by one sequential pass that
   verifies the whole bundle on the way.

What comes back reads members from the media in place; each member's bytes
still have to be hashed once (BundleAccess.verify_member) before they are
trusted, unless the indexing pass just did (BundleAccess.verified).
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from airbundle.adapters.bundleaccess import (
    BundleAccess,
    VolumeReader,
    index_path,
    read_frame_index,
    write_frame_index,
)
from airbundle.adapters.media import Media, open_media
from airbundle.errors import ArchiveError, IntegrityError, TruncatedError, UsageError
from airbundle.format.archive import HEADER_SIZE, BundleReader, read_file_header, read_prefix_region
from airbundle.format.digest import Digest
from airbundle.format.frameindex import FrameIndex
from airbundle.format.manifest import BundleManifest, MemberEntry
from airbundle.format.seektable import FrameMap, check_layout, member_places, parse_seek_table
from airbundle.format.tarstream import TarMember
from airbundle.format.trust import TrustPolicy
from airbundle.limits import DEFAULT_LIMITS, Limits
from airbundle.ops.verify import Authenticated, Progress, authenticate, stream_members
from airbundle.ops.volumes import authenticate_index, opened_bundle


def open_bundle_access(
    path: Path,
    policy: TrustPolicy,
    *,
    at: datetime | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> BundleAccess:
    """A bundle file, a volume set (its index, a volume or its folder), ready
    for open_member / payload_spans / verify_member.

    A bundle without a seek table is indexed first: one sequential pass over
    all of it (reported to `progress` in member bytes) that also verifies
    every member; with `cache_dir`, the index is kept there and later opens
    skip the pass. Raises like `verify` on anything that is not authentic.
    """
    return open_authenticated(
        open_media(path),
        path,
        policy,
        at=at,
        cache_dir=cache_dir,
        progress=progress,
        limits=limits,
    )[0]


def open_authenticated(
    media: Media,
    path: Path,
    policy: TrustPolicy,
    *,
    at: datetime | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[BundleAccess, Authenticated]:
    """open_bundle_access on media already found, with the authenticated
    manifest (signers and signature reports, for verify's report)."""
    access, auth = _open(media, path, policy, at, cache_dir, progress, limits, signed_only=False)
    assert access is not None
    return access, auth


def open_signed(
    media: Media,
    path: Path,
    policy: TrustPolicy,
    *,
    at: datetime | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[BundleAccess | None, Authenticated]:
    """Random access for verify and import when the bundle declares a signed
    seek table; None with the authenticated manifest when it does not (read it
    front to back instead: an old bundle may hold folder entries)."""
    return _open(media, path, policy, at, None, None, limits, signed_only=True)


def _open(
    media: Media,
    path: Path,
    policy: TrustPolicy,
    at: datetime | None,
    cache_dir: Path | None,
    progress: Progress | None,
    limits: Limits,
    *,
    signed_only: bool,
) -> tuple[BundleAccess | None, Authenticated]:
    authenticate_index(media, policy, at=at)
    media.check_present()
    volumes = VolumeReader(_parts(media), source=media.description, repair=media.repairing)
    try:
        source = media.description
        header = read_file_header(volumes.pread(0, min(HEADER_SIZE, volumes.size)), source=source)
        if header.total_length != volumes.size:
            raise _length_error(source, volumes.size, header.total_length)
        content_offset = HEADER_SIZE + header.prefix_length
        prefix = read_prefix_region(
            volumes.stream(0, content_offset),  # type: ignore[arg-type]
            source=source,
            limits=limits,
        )
        auth = authenticate(prefix, policy, source=source, at=at, limits=limits)
        manifest = auth.manifest
        verified: frozenset[str] = frozenset()
        if manifest.seek_table is None and signed_only:
            volumes.close()
            return None, auth
        if manifest.seek_table is not None:
            frames = _signed_frames(volumes, manifest, content_offset, limits)
        else:
            frames, verified = _indexed_frames(
                path, policy, auth, volumes, content_offset, cache_dir, progress, at, limits
            )
        access = BundleAccess(
            volumes,
            manifest=manifest,
            manifest_digest=auth.manifest_digest,
            frames=frames,
            frames_signed=manifest.seek_table is not None,
            verified=verified,
            signers=auth.signers,
            limits=limits,
        )
        return access, auth
    except BaseException:
        volumes.close()
        raise


def _parts(media: Media) -> list[tuple[Path, int]]:
    if media.index is None:
        assert media.single is not None
        info = media.single.stat()
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{media.single}: random access needs a regular file")
        return [(media.single, info.st_size)]
    return [(p, v.size) for p, v in zip(media.volume_paths(), media.index.volumes, strict=True)]


def _length_error(source: str, actual: int, declared: int) -> IntegrityError:
    if actual < declared:
        return TruncatedError(
            f"{source}: the bundle is truncated: {actual} bytes, its header says {declared}"
        )
    return ArchiveError(
        f"{source}: {actual - declared} unexpected bytes after the end of the bundle "
        f"(its header says {declared} bytes)"
    )


def _signed_frames(
    volumes: VolumeReader, manifest: BundleManifest, content_offset: int, limits: Limits
) -> FrameMap:
    table = manifest.seek_table
    assert table is not None
    source = volumes.source
    at = content_offset + table.offset
    if at + table.size != volumes.size:
        raise ArchiveError(
            f"{source}: the signed seek table (bytes {at} to {at + table.size}) is not at "
            f"the end of the bundle ({volumes.size} bytes)"
        )
    if table.size > limits.max_seek_table_bytes:
        raise ArchiveError(
            f"{source}: the seek table is {table.size} bytes, more than the "
            f"{limits.max_seek_table_bytes} allowed"
        )
    data = volumes.pread(at, table.size)
    if Digest.sha256_of(data) != table.digest:
        raise ArchiveError(
            f"{source}: the seek table at byte {at} has digest {Digest.sha256_of(data)}, "
            f"the signed manifest says {table.digest}"
        )
    entries = parse_seek_table(data, source=source, limits=limits)
    if sum(c for c, _ in entries) != table.offset:
        raise ArchiveError(f"{source}: the seek table's frames do not end where it starts")
    check_layout(entries, manifest.members, source=source)
    return FrameMap.build(content_offset, entries)


def _indexed_frames(
    path: Path,
    policy: TrustPolicy,
    auth: Authenticated,
    volumes: VolumeReader,
    content_offset: int,
    cache_dir: Path | None,
    progress: Progress | None,
    at: datetime | None,
    limits: Limits,
) -> tuple[FrameMap, frozenset[str]]:
    members = auth.manifest.members
    cached = index_path(cache_dir, auth.manifest_digest) if cache_dir is not None else None
    index = read_frame_index(cached, limits=limits) if cached is not None else None
    if index is not None:
        try:
            index.check(
                manifest_digest=auth.manifest_digest,
                total_length=volumes.size,
                content_offset=content_offset,
                members=members,
                source=str(cached),
            )
            return FrameMap.build(content_offset, index.frames), frozenset()
        except ArchiveError:
            pass  # another bundle with the same manifest (other framing): index again
    entries = index_bundle(path, policy, auth, at=at, progress=progress, limits=limits)
    index = FrameIndex(auth.manifest_digest, volumes.size, content_offset, tuple(entries))
    index.check(
        manifest_digest=auth.manifest_digest,
        total_length=volumes.size,
        content_offset=content_offset,
        members=members,
        source=volumes.source,
    )
    if cached is not None:
        write_frame_index(cached, index)
    return FrameMap.build(content_offset, entries), frozenset(m.path for m in members)


def index_bundle(
    path: Path,
    policy: TrustPolicy,
    auth: Authenticated,
    *,
    at: datetime | None = None,
    progress: Progress | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> list[tuple[int, int]]:
    """One sequential pass over a bundle without a seek table: every member
    verified as `verify` does, and the (compressed, decompressed) size of
    every content frame recorded. Members must be the listed ones in order,
    with no folder entries, for their offsets to follow from the list."""
    offsets: list[int] = []

    def sink(member: TarMember, _entry: MemberEntry, chunks: Iterator[bytes]) -> None:
        offsets.append(member.offset)
        for _ in chunks:
            pass

    with opened_bundle(path, policy, at=at) as (media, fh):
        reader = BundleReader(fh, source=media.description, limits=limits)
        if Digest.sha256_of(reader.read_prefix().manifest) != auth.manifest_digest:
            raise ArchiveError(f"{media.description}: the bundle changed while it was read")
        stream_members(reader, auth.manifest, sink, progress=progress)
        frames = reader.content_frames
        start = reader.content_start
    expected = [p.header for p in member_places(auth.manifest.members)]
    if [o - start for o in offsets] != expected:
        raise ArchiveError(
            f"{media.description}: its tar stream is not exactly the listed members in order "
            "(folder entries or another order), so members cannot be found from the list",
            hint="import it instead of reading it in place",
        )
    return frames
