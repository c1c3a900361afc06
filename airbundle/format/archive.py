"""The bundle container: a zstd-compressed tar stream whose first members are
the signed manifest and its signatures.

Byte layout of a bundle file (see docs/bundle-format.md)::

    [header]   zstd skippable frame: b"AIRBUNDLE\\0", format version, prefix length
    [prefix]   a region of exactly `prefix length` bytes holding
                 one zstd frame: tar members airbundle/manifest.json, airbundle/signatures/*
                 one zstd skippable frame of zero padding (room for more signatures)
    [content]  zstd frames: each member's header starts one (compressible members
               are cut every Limits.seek_frame_bytes, already-compressed ones go
               into raw frames), the end-of-archive marker is the last
    [table]    zstd skippable frame: the seek table (zstd seekable format) listing
               every content frame; its place, size and sha256 are in the manifest

Every reader of zstd skips skippable frames, so `zstd -d` and `tar --zstd -x`
see one plain tar stream whose first member is the manifest. The prefix is
reserved before the content is streamed and filled in afterwards, so export
passes over the content once; co-signing rewrites only the prefix region.
Reading walks the frames itself (format/framestream.py) so that every byte is
accounted for.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import struct
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, cast

import zstandard

from airbundle.errors import ArchiveError, SignatureError, SourceError, TruncatedError
from airbundle.format.digest import Digest
from airbundle.format.framestream import PADDING_MAGIC, ExpectedTable, FrameStream
from airbundle.format.manifest import MemberEntry, SeekTableRef
from airbundle.format.seektable import MAX_ENTRY_VALUE, check_layout, encode_seek_table
from airbundle.format.tarstream import BLOCK, REGULAR, TarMember, TarReader, encode_header, padding
from airbundle.limits import DEFAULT_LIMITS, Limits

FORMAT_VERSION = 1
# Version 2: a bundle that carries files (a member kind version 1 refuses);
# the header and the manifest's formatVersion always agree.
FORMAT_VERSIONS = (1, 2)
MANIFEST_PATH = "airbundle/manifest.json"
SIGNATURE_DIR = "airbundle/signatures/"

_HEADER_MAGIC = 0x184D2A5A
_PADDING_MAGIC = PADDING_MAGIC
_HEADER_ID = b"AIRBUNDLE\0"
_HEADER_STRUCT = struct.Struct("<II10sHIQQ")
HEADER_SIZE = _HEADER_STRUCT.size  # 40
_SKIPPABLE_MIN = 8


@dataclass(frozen=True)
class WrittenMember:
    path: str
    size: int
    sha256: Digest


def signature_path(index: int) -> str:
    return f"{SIGNATURE_DIR}{index:02d}.sig"


@dataclass(frozen=True)
class FileHeader:
    prefix_length: int
    # Length of the whole file. zstd readers return a clean end of stream
    # when the last frame is cut short, so this is what catches a bundle that
    # lost its last bytes (or gained some) in transit.
    total_length: int
    version: int = FORMAT_VERSION


def _encode_file_header(
    prefix_length: int, total_length: int, version: int = FORMAT_VERSION
) -> bytes:
    return _HEADER_STRUCT.pack(
        _HEADER_MAGIC, HEADER_SIZE - 8, _HEADER_ID, version, 0, prefix_length, total_length
    )


def parse_file_header(data: bytes, *, source: str) -> int:
    """Validate the file header; return the prefix length."""
    return read_file_header(data, source=source).prefix_length


def read_file_header(data: bytes, *, source: str) -> FileHeader:
    """Validate the 40-byte file header."""
    if len(data) < HEADER_SIZE:
        raise TruncatedError(f"{source}: too short to be an airbundle ({len(data)} bytes)")
    magic, length, ident, version, _flags, prefix_length, total = _HEADER_STRUCT.unpack(
        data[:HEADER_SIZE]
    )
    if magic != _HEADER_MAGIC or length != HEADER_SIZE - 8 or ident != _HEADER_ID:
        raise ArchiveError(f"{source}: not an airbundle file (no airbundle header)")
    if _flags != 0:
        raise ArchiveError(f"{source}: unknown header flags {_flags:#x}; upgrade airbundle")
    if version not in FORMAT_VERSIONS:
        raise ArchiveError(
            f"{source}: bundle format version {version} is not supported "
            f"(this airbundle reads versions {', '.join(map(str, FORMAT_VERSIONS))}); "
            "upgrade airbundle"
        )
    if total < HEADER_SIZE + prefix_length:
        raise ArchiveError(
            f"{source}: the header declares no complete bundle (the export that wrote it "
            "did not finish)"
        )
    return FileHeader(int(prefix_length), int(total), int(version))


def _prefix_tar(manifest: bytes, signatures: Sequence[bytes], mtime: int) -> bytes:
    parts = [encode_header(MANIFEST_PATH, len(manifest), mtime=mtime), manifest]
    parts.append(b"\0" * padding(len(manifest)))
    for i, sig in enumerate(signatures):
        parts += [encode_header(signature_path(i), len(sig), mtime=mtime), sig]
        parts.append(b"\0" * padding(len(sig)))
    return b"".join(parts)


def prefix_upper_bound(manifest_size: int, signature_count: int, signature_size: int) -> int:
    """Bytes the prefix frame can take at most, for reserving space up front.

    zstd never expands input by more than a block header per 128 KiB block
    plus a frame header and checksum (it falls back to raw blocks).
    """
    raw = BLOCK + manifest_size + BLOCK
    raw += signature_count * (2 * BLOCK + signature_size)
    return raw + 3 * (raw // (128 * 1024) + 1) + 32


def encode_prefix(
    manifest: bytes, signatures: Sequence[bytes], *, capacity: int, mtime: int
) -> bytes:
    """The prefix region: a zstd frame of the prefix members, padded to `capacity`.

    The padding is a skippable frame, at least 8 bytes long; when the frame
    would leave a gap of 1 to 7 bytes, another compression level is tried.
    Deterministic: the same inputs give the same bytes.
    """
    tar = _prefix_tar(manifest, signatures, mtime)
    smallest = None
    for level in (19, 18, 17, 16, 15, 12, 9, 6, 3, 1):
        for checksum in (True, False):
            frame = zstandard.ZstdCompressor(
                level=level, write_checksum=checksum, write_content_size=True
            ).compress(tar)
            smallest = len(frame) if smallest is None else min(smallest, len(frame))
            gap = capacity - len(frame)
            if gap == 0:
                return frame
            if gap >= _SKIPPABLE_MIN:
                skip = struct.pack("<II", _PADDING_MAGIC, gap - _SKIPPABLE_MIN)
                return frame + skip + b"\0" * (gap - _SKIPPABLE_MIN)
    raise SignatureError(
        f"no room left for the manifest and {len(signatures)} signature(s): they need "
        f"{smallest} bytes, the bundle reserved {capacity}"
    )


# Members whose bytes are already compressed (image layers, mostly) gain
# nothing from zstd: measured on gzip layers, ratio 1.0000 at every level from
# -7 to 3, and python-zstandard still spends ~0.6 s of CPU per GiB on them.
# From this size on, such a member goes into zstd frames of raw blocks instead:
# standard zstd that any decoder reads, at the cost of a copy. Its integrity
# rests on the member's sha256 in the signed manifest, as every member's does.
RAW_MEMBER_MIN = 1 << 20
_RAW_BLOCK = 128 * 1024  # zstd's largest block
_COMPRESSED_MAGIC = (
    b"\x1f\x8b",  # gzip
    b"\x28\xb5\x2f\xfd",  # zstd
    b"\xfd7zXZ\x00",  # xz
    b"BZh",  # bzip2
)


_MAGIC_BYTES = max(len(m) for m in _COMPRESSED_MAGIC)


def looks_compressed(head: bytes) -> bool:
    return head.startswith(_COMPRESSED_MAGIC)


def raw_frame_size(size: int) -> int:
    return 9 + 3 * max(1, -(-size // _RAW_BLOCK)) + size


def raw_frame_into(buf: bytearray, data: bytes | bytearray | memoryview) -> int:
    """Write one zstd frame holding `data` (at most 4 GiB) in raw blocks, no
    checksum, at the start of `buf` (raw_frame_size bytes); its length.

    Frame header: magic, a descriptor byte 0xA0 (single segment, 4-byte
    content size), the content size; then 3-byte block headers (bit 0: last
    block, bits 1-2: type 0 = raw, bits 3-23: size) each before its bytes.
    A buffer reused from frame to frame spares a fresh allocation (and its
    page faults) per megabyte.
    """
    view = memoryview(data)
    size = len(view)
    buf[0:9] = _ZSTD_MAGIC + struct.pack("<BI", 0xA0, size)
    pos = 9
    if size == 0:
        buf[pos : pos + 3] = (1).to_bytes(3, "little")  # one empty last raw block
        return pos + 3
    for start in range(0, size, _RAW_BLOCK):
        block = view[start : start + _RAW_BLOCK]
        last = start + _RAW_BLOCK >= size
        buf[pos : pos + 3] = ((len(block) << 3) | int(last)).to_bytes(3, "little")
        buf[pos + 3 : pos + 3 + len(block)] = block
        pos += 3 + len(block)
    return pos


class _Pending:
    """Tar bytes of the frame being assembled, kept as the chunks that came in."""

    def __init__(self) -> None:
        self._parts: list[bytes | memoryview] = []
        self.size = 0

    def add(self, data: bytes | memoryview) -> None:
        if data:
            self._parts.append(data)
            self.size += len(data)

    def take(self, n: int) -> bytes:
        """The first n bytes (all if n is larger), removed."""
        out: list[bytes | memoryview] = []
        got = 0
        while self._parts and got < n:
            part = self._parts[0]
            if got + len(part) <= n:
                out.append(self._parts.pop(0))
                got += len(part)
            else:
                cut = n - got
                out.append(memoryview(part)[:cut])
                self._parts[0] = memoryview(part)[cut:]
                got = n
        self.size -= got
        return b"".join(out)


class _FrameWriter:
    """Writes the content region's frames in order and remembers their sizes
    for the seek table. Compressed frames are independent of each other, so
    a pool compresses several at once; each is compressed whole, by one
    thread, so the bytes do not depend on the number of workers."""

    def __init__(self, out: BinaryIO, *, level: int, workers: int) -> None:
        self._out = out
        self._level = level
        self._local = threading.local()
        self._pool = None
        if workers > 1:
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="airbundle-zstd")
        # Frames handed to the pool and not yet written, oldest first.
        self._queue: deque[tuple[Future[bytes], int]] = deque()
        self._window = 2 * workers
        self.entries: list[tuple[int, int]] = []

    def _compress(self, data: bytes) -> bytes:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(
                level=self._level, write_checksum=True, write_content_size=True
            )
            self._local.compressor = compressor
        return cast(bytes, compressor.compress(data))

    def compressed(self, data: bytes) -> None:
        if self._pool is None:
            self._write(self._compress(data), len(data))
            return
        self._queue.append((self._pool.submit(self._compress, data), len(data)))
        while len(self._queue) > self._window:
            self._write_oldest()

    def raw(self, frame: memoryview, length: int) -> None:
        """A frame built by the caller (raw blocks), written at once."""
        self.drain()
        self._write(frame, length)

    def _write_oldest(self) -> None:
        future, length = self._queue.popleft()
        self._write(future.result(), length)

    def _write(self, frame: bytes | memoryview, length: int) -> None:
        self._out.write(frame)
        self.entries.append((len(frame), length))

    def drain(self) -> None:
        while self._queue:
            self._write_oldest()

    def close(self) -> None:
        if self._pool is not None:
            for future, _ in self._queue:
                future.cancel()
            self._pool.shutdown()
            self._pool = None


class BundleWriter:
    """Streams members into a new bundle; the prefix is filled in at the end.

    `out` must be seekable (a regular file): the prefix region is reserved at
    the start and written by :meth:`finish` once the manifest is known.
    Call :meth:`end_content` after the last member: it writes the end of the
    archive and the seek table, whose place and digest go into the manifest.
    """

    def __init__(
        self,
        out: BinaryIO,
        *,
        prefix_capacity: int,
        level: int = 3,
        threads: int = -1,
        mtime: int = 0,
        limits: Limits = DEFAULT_LIMITS,
        format_version: int = FORMAT_VERSION,
    ) -> None:
        if not 0 < limits.seek_frame_bytes <= MAX_ENTRY_VALUE - 2 * BLOCK:
            raise ValueError(f"seek_frame_bytes {limits.seek_frame_bytes} out of range")
        self._out = out
        self._start = out.tell()
        self._capacity = prefix_capacity
        self._mtime = mtime
        self._limits = limits
        self._version = format_version
        out.write(_encode_file_header(prefix_capacity, 0, format_version))
        out.write(b"\0" * prefix_capacity)
        workers = threads if threads > 0 else (os.cpu_count() or 1)
        self._frames = _FrameWriter(out, level=level, workers=workers)
        self._table: SeekTableRef | None = None
        self._closed = False
        self._hash_pool: ThreadPoolExecutor | None = None
        self._frame = bytearray(raw_frame_size(RAW_MEMBER_MIN))
        self._raw_pending = bytearray()

    def _hasher(self) -> ThreadPoolExecutor:
        if self._hash_pool is None:
            self._hash_pool = ThreadPoolExecutor(1, thread_name_prefix="airbundle-hash")
        return self._hash_pool

    def add_stream(
        self,
        path: str,
        size: int,
        chunks: Iterable[bytes],
        *,
        expected: Digest | None = None,
        what: str | None = None,
    ) -> WrittenMember:
        """Copy one member of declared `size`; hash it on the same buffers.

        If the source yields a different number of bytes, or bytes that do
        not match `expected`, the bundle being written is unusable and a
        SourceError says which source lied.

        The member's header starts a new frame. A compressible member's tar
        bytes (header, data, padding) are cut into frames of
        `Limits.seek_frame_bytes`; an already-compressed one of 1 MiB or more
        gets a frame for its header, then raw frames of its bytes (the
        padding at the end of the last).
        """
        if self._table is not None:
            raise RuntimeError("the content is already ended")
        label = what or path
        pending = _Pending()
        pending.add(encode_header(path, size, mtime=self._mtime))
        cut = self._limits.seek_frame_bytes
        h = hashlib.sha256()
        # A large member is hashed in a second thread (hashlib lets go of the
        # GIL) while this one reads and writes; a few chunks ahead at most.
        hashing: deque[Future[None]] | None = deque() if size >= RAW_MEMBER_MIN else None
        count = 0
        # Undecided until the first bytes are in, however the source cuts them:
        # the output must not depend on its chunk sizes.
        raw: bool | None = None if size >= RAW_MEMBER_MIN else False
        head = b""
        for chunk in chunks:
            count += len(chunk)
            if count > size:
                raise SourceError(f"{label}: source sent more than the declared {size} bytes")
            if hashing is None:
                h.update(chunk)
            else:
                hashing.append(self._hasher().submit(h.update, chunk))
                if len(hashing) > 4:
                    hashing.popleft().result()
            if raw is None:
                head += chunk
                if len(head) < _MAGIC_BYTES and count < size:
                    continue
                raw = looks_compressed(head)
                if raw:
                    # The header alone in a compressed frame; the member's
                    # bytes follow as raw frames.
                    self._frames.compressed(pending.take(pending.size))
                chunk, head = head, b""
            if raw:
                self._raw_write(chunk)
                continue
            pending.add(chunk)
            while pending.size >= cut:
                self._frames.compressed(pending.take(cut))
        if raw:
            self._raw_write(b"\0" * padding(size))
            self._raw_flush()
        else:
            pending.add(head)
            pending.add(b"\0" * padding(size))
            if pending.size:
                self._frames.compressed(pending.take(pending.size))
        for pending_hash in hashing or ():
            pending_hash.result()
        if count != size:
            raise SourceError(f"{label}: source sent {count} bytes, expected {size}")
        digest = Digest("sha256", h.hexdigest())
        if expected is not None and digest != expected:
            raise SourceError(f"{label}: content has digest {digest}, expected {expected}")
        return WrittenMember(path, size, digest)

    def _raw_write(self, data: bytes) -> None:
        """A raw member's bytes into frames of exactly RAW_MEMBER_MIN (the last
        one shorter), cut at fixed offsets of the member, so the same member
        gives the same frames from any source."""
        view = memoryview(data)
        while view:
            if not self._raw_pending and len(view) >= RAW_MEMBER_MIN:
                n = raw_frame_into(self._frame, view[:RAW_MEMBER_MIN])
                self._frames.raw(memoryview(self._frame)[:n], RAW_MEMBER_MIN)
                view = view[RAW_MEMBER_MIN:]
                continue
            room = RAW_MEMBER_MIN - len(self._raw_pending)
            self._raw_pending += view[:room]
            view = view[room:]
            if len(self._raw_pending) == RAW_MEMBER_MIN:
                self._raw_flush()

    def _raw_flush(self) -> None:
        if self._raw_pending:
            n = raw_frame_into(self._frame, self._raw_pending)
            self._frames.raw(memoryview(self._frame)[:n], len(self._raw_pending))
            del self._raw_pending[:]

    def add_bytes(self, path: str, data: bytes) -> WrittenMember:
        return self.add_stream(path, len(data), [data])

    def end_content(self) -> SeekTableRef:
        """Write the end-of-archive marker (its own frame) and the seek table
        listing every frame of the content region; return where the table is,
        for the manifest."""
        if self._table is not None:
            raise RuntimeError("the content is already ended")
        self._frames.compressed(b"\0" * (2 * BLOCK))
        self._frames.drain()
        self._frames.close()
        if self._hash_pool is not None:
            self._hash_pool.shutdown()
            self._hash_pool = None
        table = encode_seek_table(self._frames.entries)
        # From the start of the content region: the prefix region before it
        # is the header's business (and could be re-encoded at another size).
        offset = self._out.tell() - self._start - HEADER_SIZE - self._capacity
        self._table = SeekTableRef(offset, len(table), Digest.sha256_of(table))
        self._out.write(table)
        return self._table

    def finish(self, manifest: bytes, signatures: Sequence[bytes]) -> None:
        """Write the signed prefix into its place (after :meth:`end_content`)."""
        if self._closed:
            raise RuntimeError("bundle already finished")
        if self._table is None:
            raise RuntimeError("end_content() first")
        self._closed = True
        end = self._out.tell()
        prefix = encode_prefix(manifest, signatures, capacity=self._capacity, mtime=self._mtime)
        self._out.seek(self._start)
        self._out.write(_encode_file_header(self._capacity, end - self._start, self._version))
        self._out.write(prefix)
        self._out.seek(end)


@dataclass(frozen=True)
class Prefix:
    """What precedes the content: the manifest bytes and the signatures, unparsed."""

    manifest: bytes
    signatures: tuple[tuple[str, bytes], ...]
    prefix_length: int
    # The header's format version, which the manifest's formatVersion must equal.
    format_version: int = FORMAT_VERSION


class BundleReader:
    """Reads a bundle front to back in one pass.

    First :meth:`read_prefix` returns the manifest and signature bytes without
    interpreting them, so the caller can authenticate before reading any
    content; then :meth:`next_member` and :meth:`read` walk the content.
    """

    def __init__(
        self,
        raw: BinaryIO,
        *,
        source: str,
        limits: Limits = DEFAULT_LIMITS,
        whole_file: bool = True,
        prefix_only: bool = False,
    ) -> None:
        self.source = source
        self._limits = limits
        header = read_file_header(raw.read(HEADER_SIZE), source=source)
        self.prefix_length = header.prefix_length
        self.format_version = header.version
        self.total_length = header.total_length
        actual = None  # a pipe or a volume set: checked at the end of the stream
        if whole_file:
            with contextlib.suppress(AttributeError, OSError, io.UnsupportedOperation):
                actual = os.fstat(raw.fileno()).st_size
        if actual is not None and actual != header.total_length:
            self._length_error(actual)
        prefix_end = HEADER_SIZE + header.prefix_length
        # For the prefix alone, decompress the prefix region and stop: its
        # frame ends where the signatures end, and nothing past it (another
        # volume) is needed.
        self._frames = FrameStream(
            raw,
            start=HEADER_SIZE,
            limits=limits,
            source=source,
            prefix_end=prefix_end,
            end=prefix_end if prefix_only else None,
        )
        self._tar = TarReader(
            self._frames,  # type: ignore[arg-type]
            max_path_length=limits.max_path_length,
            source=source,
            stop_at_eof=prefix_only,
        )
        self._pending: TarMember | None = None
        self._prefix_read = False
        self._members: tuple[MemberEntry, ...] | None = None
        self._returned = 0  # content members handed out

    def _read_member_bytes(self, member: TarMember, limit: int, what: str) -> bytes:
        if member.size > limit:
            raise ArchiveError(
                f"{self.source}: {what} {member.path!r} declares {member.size} bytes, "
                f"more than the {limit} allowed"
            )
        return b"".join(self._tar.iter_data(self._limits.io_chunk_bytes))

    def read_prefix(self) -> Prefix:
        first = self._tar.next()
        if first is None:
            raise ArchiveError(f"{self.source}: the bundle is empty")
        if first.path != MANIFEST_PATH or first.kind != REGULAR:
            raise ArchiveError(
                f"{self.source}: the first member is {first.path!r}, not {MANIFEST_PATH!r}; "
                "a bundle must start with its manifest"
            )
        manifest = self._read_member_bytes(first, self._limits.max_manifest_bytes, "manifest")
        signatures: list[tuple[str, bytes]] = []
        while True:
            member = self._next_header()
            if member is None or not member.path.startswith(SIGNATURE_DIR):
                self._pending = member
                break
            if member.kind != REGULAR:
                raise ArchiveError(f"{self.source}: {member.path!r} is not a regular file")
            if len(signatures) >= self._limits.max_signatures:
                raise ArchiveError(
                    f"{self.source}: more than {self._limits.max_signatures} signatures"
                )
            if any(name == member.path for name, _ in signatures):
                raise ArchiveError(f"{self.source}: duplicate member {member.path!r}")
            sig = self._read_member_bytes(member, self._limits.max_signature_bytes, "signature")
            signatures.append((member.path, sig))
        # The prefix frame holds the manifest and signatures and nothing else:
        # the content's tar stream starts with the first content frame.
        content_start = self._pending.offset if self._pending is not None else self._tar.end_offset
        if content_start != self._frames.prefix_output:
            raise ArchiveError(
                f"{self.source}: the prefix frame holds {self._frames.prefix_output} bytes of "
                f"tar stream, but the manifest and signatures end at {content_start}"
            )
        self._prefix_read = True
        return Prefix(manifest, tuple(signatures), self.prefix_length, self.format_version)

    def _next_header(self) -> TarMember | None:
        try:
            return self._tar.next()
        except TruncatedError:
            if self._frames.held:
                raise ArchiveError(
                    f"{self.source}: skippable frame at byte {self._frames.position} in the "
                    "content region, before the end of the archive: nothing but zstd frames "
                    "may sit there"
                ) from None
            raise

    def expect_content(self, members: Sequence[MemberEntry], table: SeekTableRef | None) -> None:
        """What the authenticated manifest says the content is: with a seek
        table, the frames must be exactly those it lists, the members exactly
        these in this order (checked at the end), and nothing may follow it."""
        expected = None
        if table is not None:
            # Where it is, is checked when the stream gets there: a member
            # whose bytes were changed is named by its digest first.
            at = HEADER_SIZE + self.prefix_length + table.offset
            self._members = tuple(members)
            expected = ExpectedTable(at, table.size, table.digest)
        self._frames.expect_seek_table(expected)

    def next_member(self) -> TarMember | None:
        """The next content member, or None at the verified end of the archive."""
        if not self._prefix_read:
            raise RuntimeError("read_prefix() first")
        member: TarMember | None
        if self._pending is not None:
            member, self._pending = self._pending, None
        else:
            try:
                member = self._next_header()
            except ArchiveError as exc:
                # Each member's header starts its frame: name the member the
                # signed list puts there.
                members = self._members or ()
                if self._returned >= len(members):
                    raise
                where = members[self._returned].path
                raise ArchiveError(f"{exc.message} (in the frames of member {where!r})") from exc
        self._returned += member is not None
        if member is not None and member.path.startswith("airbundle/"):
            raise ArchiveError(
                f"{self.source}: member {member.path!r} is out of place: "
                "manifest and signatures must come first"
            )
        if member is None and self._frames.held:
            raise ArchiveError(
                f"{self.source}: a skippable frame follows the archive at byte "
                f"{self._frames.position} and no manifest was given to say what it is"
            )
        if member is None and self._frames.position != self.total_length:
            self._length_error(self._frames.position)
        return member

    @property
    def content_frames(self) -> list[tuple[int, int]]:
        """(compressed, decompressed) size of each content frame read so far."""
        frames = self._frames.frames
        return [(frames[k], frames[k + 1]) for k in range(0, len(frames), 2)]

    @property
    def content_start(self) -> int:
        """Offset of the content's tar stream in the whole one (after the prefix members)."""
        assert self._frames.prefix_output is not None, "read_prefix() first"
        return self._frames.prefix_output

    def check_layout(self) -> None:
        """After the last member: with a seek table, the frames must hold exactly
        the listed members, each starting a frame (see expect_content)."""
        if self._members is not None:
            check_layout(self.content_frames, self._members, source=self.source)

    def _length_error(self, actual: int) -> None:
        if actual < self.total_length:
            raise TruncatedError(
                f"{self.source}: the bundle is truncated: {actual} bytes, "
                f"its header says {self.total_length}"
            )
        raise ArchiveError(
            f"{self.source}: {actual - self.total_length} unexpected bytes after the end of "
            f"the bundle (its header says {self.total_length} bytes)"
        )

    def read(self, n: int) -> bytes:
        """Up to n bytes of the current member; b'' at its end."""
        return self._tar.read_data(n)

    def iter_data(self) -> Iterable[bytes]:
        return self._tar.iter_data(self._limits.io_chunk_bytes)


def read_prefix_region(raw: BinaryIO, *, source: str, limits: Limits = DEFAULT_LIMITS) -> Prefix:
    """Read only the header and prefix of a bundle (for inspect and co-signing)."""
    # The file may be the first volume of a set: its length says nothing.
    reader = BundleReader(raw, source=source, limits=limits, whole_file=False, prefix_only=True)
    return reader.read_prefix()


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def check_prefix_region(region: bytes, following: bytes, *, source: str) -> None:
    """The prefix region must be exactly one zstd frame plus padding, and the
    content must start right after it. The header's prefix length is not
    signed: before rewriting the region in place, make sure it is the truth."""
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    try:
        decompressor.decompress(region)
    except zstandard.ZstdError as exc:
        raise ArchiveError(f"{source}: the signed prefix is damaged: {exc}") from None
    if not decompressor.eof:
        raise ArchiveError(f"{source}: the header's prefix length cuts the prefix frame short")
    rest = decompressor.unused_data
    if rest:
        magic, size = struct.unpack("<II", rest[:8]) if len(rest) >= 8 else (0, -1)
        if magic != _PADDING_MAGIC or size != len(rest) - _SKIPPABLE_MIN:
            raise ArchiveError(
                f"{source}: the header's prefix length does not match the "
                "prefix region (padding frame malformed)"
            )
        if rest.count(0, _SKIPPABLE_MIN) != len(rest) - _SKIPPABLE_MIN:
            raise ArchiveError(f"{source}: non-zero bytes in the prefix padding frame")
    if not following.startswith(_ZSTD_MAGIC):
        raise ArchiveError(
            f"{source}: no compressed content right after the prefix region; "
            "the header's prefix length is wrong"
        )


def rewrite_prefix(
    fh: BinaryIO, manifest: bytes, signatures: Sequence[bytes], *, mtime: int, source: str
) -> None:
    """Replace the prefix region in place (co-signing); content bytes are untouched."""
    fh.seek(0)
    capacity = read_file_header(fh.read(HEADER_SIZE), source=source).prefix_length
    check_prefix_region(fh.read(capacity), fh.read(4), source=source)
    region = encode_prefix(manifest, signatures, capacity=capacity, mtime=mtime)
    fh.seek(HEADER_SIZE)
    fh.write(region)
