"""A ContentStore over a bundle read in place: `serve --bundle`.

Nothing is extracted and no image is copied. The images are the ones the
signed manifest lists, mapped to repository names as `import` maps them;
their manifests are read from the bundle's members once, hashed against the
signed manifest and held in memory. A blob is a member read where it lies
(adapters/bundleaccess.py): sent by sendfile(2) from the media when its bytes
are stored raw (compressed layers), else decoded from its frames.

Every member is hashed in full against the signed manifest before the first
of its bytes is sent (`vouch`), once per process; concurrent first requests
wait for the one hash. The verdict lives in memory only: a verdict kept on
disk would have to trust file metadata (inode, times) that a crafted file
system can fake, and hashing again costs about a second per GiB on the first
request after a restart. A member that fails is never served: every request
for it fails, naming it. Before any blob goes out, the parts of the bundle
are checked (fstat of the descriptors the bytes are sent from) against what
they were when serve opened them: media changed in place stops serving blobs.

A bundle written before the seek table keeps its compressible members in
frames shared with others (`MemberInfo.shared`); those are extracted once
into the cache (`members/sha256/<hex>`, hashed while written and again when
found there on a later start) and sent from there. Git repositories are
indexed into the cache on first use (adapters/bundle_git.py).

The cache folder:

    frames/<manifest>.frames.json   frame index of a bundle without a seek table
    members/sha256/<hex>            extracted shared members (old bundles)
    git/<manifest>/<name>.git       repositories indexed from their git bundles
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airbundle.adapters.bundle_git import build_repo, matches
from airbundle.adapters.bundleaccess import BundleAccess, MemberInfo
from airbundle.adapters.content import FileSpan, ImageSummary, Manifest, RepoSummary
from airbundle.adapters.fsutil import atomic_output, file_lock
from airbundle.adapters.git_serve import summary
from airbundle.adapters.image_view import ImageView, ImageWalker
from airbundle.errors import (
    IntegrityError,
    MemberDigestError,
    TargetError,
)
from airbundle.format.digest import Digest
from airbundle.format.manifest import ImageEntry, RepoEntry, blob_member_path, format_time
from airbundle.format.oci import SPARSE_INDEX, Descriptor
from airbundle.limits import DEFAULT_LIMITS, Limits

log = logging.getLogger("airbundle.serve")
Progress = Callable[[int], None]


def frames_dir(cache: Path) -> Path:
    """Where open_bundle_access keeps frame indexes, inside serve's cache."""
    return cache / "frames"


@dataclass(frozen=True)
class _Stat:
    """What identifies a part's content without reading it."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> _Stat:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class BytesBlob:
    """A manifest asked for as a blob: bytes already held and hashed."""

    digest: Digest
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def check(self) -> None:
        """Hashed when the images were read."""

    def spans(self, start: int, end: int) -> Sequence[FileSpan] | None:
        return None

    def chunks(self, start: int, end: int) -> Iterator[bytes]:
        yield self.data[start:end]


@dataclass(frozen=True)
class MemberBlob:
    """A config or layer: a member of the bundle."""

    store: BundleStore
    info: MemberInfo

    @property
    def digest(self) -> Digest:
        return self.info.digest

    @property
    def size(self) -> int:
        return self.info.size

    def check(self) -> None:
        self.store.vouch(self.info.path)

    def spans(self, start: int, end: int) -> Sequence[FileSpan] | None:
        return self.store.spans(self.info.path, start, end)

    def chunks(self, start: int, end: int) -> Iterator[bytes]:
        return self.store.chunks(self.info.path, start, end)


class BundleStore:
    def __init__(
        self,
        access: BundleAccess,
        cache: Path,
        *,
        keep_source_host: bool = False,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.access = access
        self.bundle = access.manifest
        self.cache = cache
        self.limits = limits
        # What each part was when opened; fstat of its descriptor must match
        # before any of it is sent.
        self._parts = {p: _Stat.of(p.stat()) for p in access.volumes.paths}
        self._changed: IntegrityError | None = None
        self._lock = threading.Lock()
        self._ok: set[str] = set(access.verified)
        self._failed: dict[str, IntegrityError] = {}
        self._busy: dict[str, threading.Event] = {}
        # Old bundles: members extracted from shared frames, sent from the cache.
        self._copies: dict[str, Path] = {}
        self._walker = ImageWalker(
            self._read_doc,
            present=lambda d: blob_member_path(d.digest) in access.members,
            keep_source_host=keep_source_host,
            limits=limits,
        )
        self._view = ImageView(revision=("never read",))
        self._read = False
        self._repos = {r.name: r for r in self.bundle.repos}
        self._git_locks = {name: threading.Lock() for name in self._repos}
        self._git_ready: dict[str, Path] = {}

    def describe(self) -> str:
        return f"bundle {self.access.source}"

    def close(self) -> None:
        self.access.close()

    # --- images -----------------------------------------------------------------------

    def revision(self) -> Hashable:
        # A bundle never changes under its signature; media changed in place is
        # caught before sending (vouch), not by reading the images again.
        return self.access.manifest_digest

    def refresh(self) -> list[str]:
        if self._read:
            return []
        roots = [(str(i.ref), _root(i)) for i in self.bundle.images]
        view, warnings = self._walker.view(
            roots, where=self.access.source, revision=self.access.manifest_digest
        )
        self._view = view
        self._read = True
        return warnings

    def _read_doc(self, desc: Descriptor) -> bytes:
        path = blob_member_path(desc.digest)
        info = self.access.members.get(path)
        if info is None:
            raise TargetError(f"manifest {desc.digest} is not in the bundle")
        if info.size > self.limits.max_oci_manifest_bytes:
            raise TargetError(f"manifest {desc.digest} is too large ({info.size} bytes)")
        copy = self._copies.get(path)
        if copy is not None:
            data = copy.read_bytes()
        else:
            with closing(self.access.open_member(path)) as reader:
                data = reader.read()
        found = Digest.sha256_of(data)
        if found != info.digest:
            error = MemberDigestError(
                f"{self.access.source}: member {path!r} is corrupt or was tampered with: its "
                f"content has digest {found}, the signed manifest says {info.digest}"
            )
            with self._lock:
                self._failed[path] = error
            raise error
        with self._lock:
            self._ok.add(path)
        return data

    def repositories(self) -> list[str]:
        return self._view.repositories()

    def tags(self, repository: str) -> list[str] | None:
        return self._view.tags(repository)

    def manifest(self, repository: str, reference: str) -> Manifest | None:
        return self._view.manifest(repository, reference)

    def blob(self, repository: str, digest: Digest) -> BytesBlob | MemberBlob | None:
        if not self._view.has_blob(repository, digest):
            return None
        doc = self._view.docs.get(digest)
        if doc is not None:
            return BytesBlob(digest, doc.manifest.data)
        info = self.access.members.get(blob_member_path(digest))
        return MemberBlob(self, info) if info is not None else None

    def referrers(self, repository: str, subject: Digest) -> list[dict[str, Any]]:
        return self._view.referrers(repository, subject)

    def images(self) -> list[ImageSummary]:
        return self._view.images()

    # --- vouching for members ----------------------------------------------------------

    def vouch(self, path: str) -> None:
        """Return once the member was hashed in full and found as signed (hashing
        it now if no one did yet); raise IntegrityError if it was not, or if the
        media changed since serve opened the bundle."""
        self._check_media()
        while True:
            with self._lock:
                if path in self._ok:
                    return
                failed = self._failed.get(path)
                if failed is not None:
                    raise failed
                waiting = self._busy.get(path)
                if waiting is None:
                    done = self._busy[path] = threading.Event()
            if waiting is None:
                break
            waiting.wait()
        try:
            self._verify(path)
        except IntegrityError as exc:
            failed = self._failure(path, exc)
            with self._lock:
                self._failed[path] = failed
            raise failed from None
        else:
            with self._lock:
                self._ok.add(path)
        finally:
            with self._lock:
                del self._busy[path]
            done.set()

    def _failure(self, path: str, exc: IntegrityError) -> MemberDigestError:
        """The error every request for the member gets from now on: naming it."""
        if isinstance(exc, MemberDigestError):
            return exc
        return MemberDigestError(
            f"{self.access.source}: member {path!r} cannot be read as it was signed: "
            f"{exc.message}"
        )

    def _verify(self, path: str) -> None:
        copy = self._copies.get(path)
        if copy is not None:
            _check_copy(copy, self.access.member(path), self.limits)
            return
        self.access.verify_member(path)
        # Raw members: find their spans now, in this worker thread, not on
        # the event loop when the first answer goes out.
        self.access.payload_spans(path)

    def _check_media(self) -> None:
        if self._changed is not None:
            raise self._changed
        for path, then in self._parts.items():
            now = _Stat.of(os.fstat(self.access.volumes.fileno(path)))
            if now != then:
                self._changed = IntegrityError(
                    f"{self.access.source}: {path} changed on its media since serve opened "
                    "it: no more blobs are sent from it",
                    hint="restart serve to read the bundle again",
                )
                with self._lock:
                    self._ok.clear()
                raise self._changed

    def _vouched(self, path: str) -> None:
        with self._lock:
            if path not in self._ok:
                raise IntegrityError(f"{self.access.source}: member {path!r} is not verified yet")

    def spans(self, path: str, start: int, end: int) -> Sequence[FileSpan] | None:
        self._vouched(path)
        copy = self._copies.get(path)
        if copy is not None:
            return [FileSpan(copy, start, end - start)]
        spans = self.access.payload_spans(path, start, end)
        if spans is None:
            return None
        volumes = self.access.volumes
        return [FileSpan(s.path, s.offset, s.length, volumes.fileno(s.path)) for s in spans]

    def chunks(self, path: str, start: int, end: int) -> Iterator[bytes]:
        self._vouched(path)
        copy = self._copies.get(path)
        if copy is not None:
            yield from _file_chunks(copy, start, end, self.limits.io_chunk_bytes)
            return
        with closing(self.access.open_member(path)) as reader:
            yield from reader.iter_range(start, end, self.limits.io_chunk_bytes)

    def verified_count(self) -> int:
        with self._lock:
            return len(self._ok)

    # --- old bundles: shared members to the cache ---------------------------------------

    def extract_shared(self, progress: Progress | None = None) -> None:
        """Members of frames shared with others (a bundle written before the seek
        table): found in the cache and hashed again, or extracted there in one
        pass per run of adjacent members, hashed on the way."""
        folder = self.cache / "members" / "sha256"
        todo: list[MemberInfo] = []
        for info in self.access.members.values():
            if not info.shared:
                continue
            copy = folder / info.digest.hex
            try:
                _check_copy(copy, info, self.limits)
            except (OSError, IntegrityError):
                todo.append(info)
                continue
            self._copies[info.path] = copy
            self._ok.add(info.path)
        for run in _runs(todo):
            try:
                self._extract_run(run, folder, progress)
            except IntegrityError as exc:
                # A damaged frame: every member of the run not extracted yet fails.
                for info in run:
                    if info.path not in self._copies and info.path not in self._failed:
                        self._failed[info.path] = self._failure(info.path, exc)
                        log.error("%s", self._failed[info.path].message)

    def _extract_run(self, run: list[MemberInfo], folder: Path, progress: Progress | None) -> None:
        stream = _Cursor(self.access.tar_stream(run[0].place.data, run[-1].place.end))
        pos = run[0].place.data
        for info in run:
            stream.skip(info.place.data - pos)
            copy = folder / info.digest.hex
            h = hashlib.sha256()
            try:
                with atomic_output(copy, fsync=False, mode=0o644) as out:
                    for chunk in stream.take(info.size):
                        h.update(chunk)
                        out.write(chunk)
                        if progress is not None:
                            progress(len(chunk))
                    if h.hexdigest() != info.digest.hex:
                        raise MemberDigestError(
                            f"{self.access.source}: member {info.path!r} is corrupt or was "
                            f"tampered with: its content has digest sha256:{h.hexdigest()}, "
                            f"the signed manifest says {info.digest}"
                        )
            except MemberDigestError as exc:
                self._failed[info.path] = exc
                log.error("%s", exc.message)
            else:
                self._copies[info.path] = copy
                self._ok.add(info.path)
            pos = info.place.end

    # --- git ------------------------------------------------------------------------------

    def git_repos(self) -> list[str]:
        return sorted(self._repos)

    def git_dir(self, name: str) -> Path | None:
        entry = self._repos.get(name)
        if entry is None:
            return None
        with self._git_locks[name]:
            ready = self._git_ready.get(name)
            if ready is not None:
                return ready
            self.vouch(entry.member)
            path = self._git_root() / f"{name}.git"
            with file_lock(path.with_name(f"{name}.lock")):
                if not matches(path, entry):
                    self._build_repo(entry, path)
            self._git_ready[name] = path
            return path

    def _git_root(self) -> Path:
        return self.cache / "git" / self.access.manifest_digest.hex

    def _build_repo(self, entry: RepoEntry, path: Path) -> None:
        if path.exists():
            shutil.rmtree(path)
        log.info("indexing %s from %s into %s", entry.name, entry.member, path)
        info = self.access.member(entry.member)
        build_repo(
            self.chunks(entry.member, 0, info.size),
            path,
            entry,
            what=f"{self.access.source}: {entry.member}",
            limits=self.limits,
        )

    def repo_summary(self, name: str) -> RepoSummary | None:
        entry = self._repos.get(name)
        if entry is None:
            return None
        ready = self._git_ready.get(name)
        if ready is not None:
            return summary(name, ready, max_refs=self.limits.max_page_refs)
        refs = tuple((r.name, r.target) for r in entry.refs[: self.limits.max_page_refs])
        return RepoSummary(name, entry.head, refs)

    # --- the page ------------------------------------------------------------------------

    def details(self) -> dict[str, Any]:
        info = self.bundle.bundle
        with self._lock:
            failed = sorted(self._failed)
            verified = len(self._ok)
        return {
            "bundle": {
                "path": self.access.source,
                "name": info.name,
                "id": info.id,
                "created": format_time(info.created),
                "expires": format_time(info.expires) if info.expires else None,
                "channel": info.channel,
                "sequence": info.sequence,
                "manifestDigest": str(self.access.manifest_digest),
                "signers": [
                    {
                        "fingerprint": k.public_key.fingerprint,
                        "comment": k.public_key.comment,
                        "trustedBy": k.source,
                    }
                    for k in self.access.signers
                ],
                "frames": "seek table" if self.access.frames_signed else "indexed",
                "members": len(self.access.members),
                "verified": verified,
                "failed": failed,
            }
        }


def _root(image: ImageEntry) -> Descriptor:
    """What the tag names, as import into an OCI layout tags it: the upstream
    index when the bundle carries it beside a platform subset (sparse: only the
    chosen platforms' manifests travel), else the image's own root."""
    digest, media_type, size = image.source_digest, image.source_media_type, image.source_size
    if digest is not None and media_type is not None and size is not None:
        return Descriptor(media_type, digest, size, annotations={SPARSE_INDEX: "true"})
    return Descriptor(image.media_type, image.digest, image.size)


def _runs(members: list[MemberInfo]) -> list[list[MemberInfo]]:
    """Members next to each other in the tar stream, in runs."""
    runs: list[list[MemberInfo]] = []
    for info in sorted(members, key=lambda m: m.place.header):
        if runs and runs[-1][-1].place.next == info.place.header:
            runs[-1].append(info)
        else:
            runs.append([info])
    return runs


class _Cursor:
    """Consume a stream of chunks by byte counts."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._left = b""

    def take(self, n: int) -> Iterator[bytes]:
        while n > 0:
            if not self._left:
                self._left = next(self._chunks, b"")
                if not self._left:
                    raise TargetError("the bundle's content ended early")
            part, self._left = self._left[:n], self._left[n:]
            n -= len(part)
            yield part

    def skip(self, n: int) -> None:
        for _ in self.take(n):
            pass


def _check_copy(copy: Path, info: MemberInfo, limits: Limits) -> None:
    """A member extracted into the cache is a regular file with exactly its bytes."""
    fd = os.open(copy, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size != info.size:
            raise IntegrityError(f"{copy} is not {info.path} as extracted")
        h = hashlib.sha256()
        while chunk := fh.read(limits.io_chunk_bytes):
            h.update(chunk)
    if h.hexdigest() != info.digest.hex:
        raise MemberDigestError(
            f"{copy}: the copy of member {info.path!r} in the cache has digest "
            f"sha256:{h.hexdigest()}, the signed manifest says {info.digest}"
        )


def _file_chunks(path: Path, start: int, end: int, size: int) -> Iterator[bytes]:
    with path.open("rb") as fh:
        fh.seek(start)
        left = end - start
        while left > 0:
            chunk = fh.read(min(left, size))
            if not chunk:
                raise TargetError(f"{path}: ends before byte {end}")
            left -= len(chunk)
            yield chunk
