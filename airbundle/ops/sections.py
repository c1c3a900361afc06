"""Every member of a bundle with a signed seek table, read in parallel.

The content is cut into contiguous sections of members (format.seektable.
plan_sections); a few threads each decode sections from their own offsets in
the bundle file or volume set (BundleAccess.section: frames, headers,
padding, end marker, all checked as the sequential reader checks them) and
hand every member's bytes to `work` through a hashing iterator that raises
MemberDigestError after the last chunk if they are not the signed ones. zstd
and sha256 release the GIL, so the threads keep both cores busy; a sink that
commits only after exhausting the iterator (an upload's final PUT) never
commits unverified bytes, as with the sequential reader (ops/verify.py).

The first failure stops the other sections at their next chunk (an upload
in flight is abandoned before it is finished) and is raised; when several
sections failed on their own, the one earliest in the bundle is.
"""

from __future__ import annotations

import contextlib
import hashlib
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime
from pathlib import Path

from airbundle.adapters.bundleaccess import BundleAccess, MemberInfo
from airbundle.adapters.media import Media, open_media
from airbundle.errors import IntegrityError, MemberDigestError
from airbundle.format.seektable import plan_sections
from airbundle.format.trust import TrustPolicy
from airbundle.limits import Limits
from airbundle.ops.access import open_signed
from airbundle.ops.sign import journal_hint_on_failure
from airbundle.ops.verify import Authenticated, Progress
from airbundle.ops.volumes import name_corrupt_volumes

MemberWork = Callable[[MemberInfo, Iterator[bytes]], None]


class _Stopped(Exception):  # noqa: N818 - control flow, never shown
    """Another section failed: this one stops at its next chunk."""


def _drain(_info: MemberInfo, chunks: Iterator[bytes]) -> None:
    for _ in chunks:
        pass


def locked_progress(progress: Progress | None) -> Progress | None:
    """A progress callback safe to call from several threads."""
    if progress is None:
        return None
    lock = threading.Lock()

    def report(n: int) -> None:
        with lock:
            progress(n)

    return report


def checked(
    chunks: Iterator[bytes],
    info: MemberInfo,
    source: str,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> Iterator[bytes]:
    """The member's bytes; raises MemberDigestError after the last chunk if
    they are not what the signed manifest lists."""
    h = hashlib.sha256()
    got = 0
    for chunk in chunks:
        if stop is not None and stop.is_set():
            raise _Stopped
        h.update(chunk)
        got += len(chunk)
        if progress:
            progress(len(chunk))
        yield chunk
    if got != info.size or h.hexdigest() != info.digest.hex:
        raise MemberDigestError(
            f"{source}: member {info.path!r} is corrupt or was tampered with: its content "
            f"has digest sha256:{h.hexdigest()}, the signed manifest says {info.digest}",
            member=info.path,
        )


def read_verified(access: BundleAccess, path: str) -> bytes:
    """A (small) member whole, its sha256 checked."""
    info = access.member(path)
    reader = access.open_member(path)
    return b"".join(checked(iter(lambda: reader.read(1 << 20), b""), info, access.source))


def read_sections(
    access: BundleAccess,
    work: MemberWork = _drain,
    *,
    workers: int,
    progress: Progress | None = None,
) -> None:
    """`work` on every member, in `workers` threads (see the module's doc).
    `work` gets a checked iterator of the member's bytes and must exhaust it
    before it trusts them; whatever it leaves unread is read and checked
    after it returns."""
    places = access.places
    if not places:
        # Nothing but the end marker: one section of no member cannot exist.
        return
    sections = plan_sections(places, max(1, workers) * 4)
    stop = threading.Event()
    report = locked_progress(progress)

    def run(section: tuple[int, int]) -> None:
        if stop.is_set():
            raise _Stopped
        try:
            for info, data in access.section(*section):
                chunks = checked(data, info, access.source, report, stop)
                work(info, chunks)
                for _ in chunks:
                    pass
        except BaseException:
            stop.set()
            raise

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="airbundle-read")
    try:
        futures = [(section, pool.submit(run, section)) for section in sections]
        wait([f for _, f in futures])
    except BaseException:  # an interrupt: the sections stop at their next chunk
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    failures = []
    for section, future in futures:
        exc = future.exception()
        if exc is not None and not isinstance(exc, _Stopped):
            failures.append((section[0], exc))
    if failures:
        raise min(failures, key=lambda f: f[0])[1]
    for _section, future in futures:
        future.result()  # only _Stopped could be left, and never without a failure


def media_size(media: Media) -> int | None:
    """Bytes of a bundle file or volume set; None for what is not a regular
    file (a pipe is read front to back)."""
    if media.index is not None:
        return sum(v.size for v in media.index.volumes)
    assert media.single is not None
    info = media.single.stat()
    return info.st_size if stat.S_ISREG(info.st_mode) else None


@contextlib.contextmanager
def in_place(
    media: Media, path: Path, policy: TrustPolicy, *, at: datetime | None, limits: Limits
) -> Iterator[tuple[BundleAccess | None, Authenticated]]:
    """open_signed, closed after; a failure inside a volume set names the
    damaged volumes, one beside an interrupted `sign` says so."""
    with journal_hint_on_failure(media.first):
        try:
            access, auth = open_signed(media, path, policy, at=at, limits=limits)
            try:
                yield access, auth
            finally:
                if access is not None:
                    access.close()
        except IntegrityError as exc:
            # (a set with parity checks each volume before using it, and
            # names the bad ones itself)
            if media.index is not None and media.index.parity is None:
                raise name_corrupt_volumes(media, exc) from exc
            raise


def verify_in_place(
    path: Path,
    policy: TrustPolicy,
    *,
    limits: Limits,
    progress: Progress | None = None,
    at: datetime | None = None,
) -> tuple[Authenticated, Media] | None:
    """verify's parallel path; None where it does not apply (small, not a
    regular file, no seek table) or where it found the bundle damaged: the
    front-to-back reader then reads it again and names the damage as it
    always has (the member whose bytes changed, before the frames that no
    longer match the table). Its verdict is kept only if it fails too.
    The media says what was rebuilt from parity (Media.rebuilt)."""
    media = open_media(path)
    size = media_size(media)
    if size is None or size < limits.parallel_read_min_bytes:
        return None
    try:
        with in_place(media, path, policy, at=at, limits=limits) as (access, auth):
            if access is None:
                return None
            read_sections(access, workers=limits.read_workers, progress=progress)
        return auth, media
    except IntegrityError as exc:
        raise DamagedInPlace(exc) from exc


class DamagedInPlace(Exception):  # noqa: N818 - carries the parallel reader's verdict
    """The parallel reader refused the bundle; `verdict` is its error, to be
    raised if the sequential reader does not refuse it too."""

    def __init__(self, verdict: IntegrityError) -> None:
        super().__init__(verdict.message)
        self.verdict = verdict


__all__ = [
    "DamagedInPlace",
    "MemberWork",
    "checked",
    "locked_progress",
    "read_sections",
    "read_verified",
    "verify_in_place",
]
