"""Random access to the members of a bundle on media: a file or a volume set.

Nothing is extracted and the volumes are never joined: `VolumeReader` reads
any byte range with `os.pread` from whichever volumes hold it (read-only
media included), and `BundleAccess` finds a member through the content
region's frames (the seek table, or the frame index of a bundle written
before it), decodes from the frame that holds the wanted offset, and checks
every frame it decodes against that table. What it hands out is the media's
bytes, not yet proved right: `verify_member` hashes a member in full against
the signed manifest, and a caller (a server) sends a member only after that
succeeded once (and may keep the verdict while the media stays read-only).

Opening with trust (signatures, the table's digest, the indexing pass) is
`airbundle.ops.access.open_bundle_access`; this module does the I/O.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import itertools
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from airbundle.adapters.content import FileSpan
from airbundle.adapters.fsutil import write_atomic
from airbundle.errors import ArchiveError, MemberDigestError, TruncatedError
from airbundle.format.archive import RAW_MEMBER_MIN
from airbundle.format.digest import Digest
from airbundle.format.frameindex import FrameIndex
from airbundle.format.framestream import FrameStream
from airbundle.format.manifest import BundleManifest
from airbundle.format.seektable import FrameMap, MemberPlace, member_places
from airbundle.format.tarstream import BLOCK, REGULAR, TarReader, decode_header
from airbundle.format.trust import TrustedKey
from airbundle.format.zstdframes import (
    BLOCK_HEADER,
    MAX_FRAME_HEADER,
    RAW,
    FrameHeader,
    header_size_needed,
    parse_block_header,
    parse_frame_header,
)
from airbundle.limits import DEFAULT_LIMITS, Limits

if TYPE_CHECKING:
    from airbundle.adapters.parity import RepairingVolumes


class VolumeReader:
    """Positional reads across the parts of a bundle (one file, or its volumes
    in order), each opened read-only on first use. Safe to share between
    threads: every read names its offset.

    With `repair` (a set with parity volumes), every read goes through it: a
    volume is checked before its first byte is used, and one missing or
    damaged is rebuilt from parity."""

    def __init__(
        self,
        parts: Sequence[tuple[Path, int]],
        *,
        source: str,
        repair: RepairingVolumes | None = None,
    ) -> None:
        self.source = source
        self._repair = repair
        self._paths = [p for p, _ in parts]
        self._sizes = [s for _, s in parts]
        self._starts = [0]
        for size in self._sizes:
            self._starts.append(self._starts[-1] + size)
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._starts[-1]

    @property
    def paths(self) -> tuple[Path, ...]:
        """The parts found on the media, in order (not those a set's parity rebuilds)."""
        if self._repair is None:
            return tuple(self._paths)
        repair = self._repair
        return tuple(p for k, p in enumerate(self._paths) if repair.present(k))

    def on_media(self, path: Path) -> bool:
        """The part's bytes are its file's (sendfile may read them): not rebuilt."""
        return self._repair is None or self._repair.on_media(self._paths.index(path))

    def _fd(self, k: int) -> int:
        with self._lock:
            fd = self._fds.get(k)
            if fd is None:
                fd = os.open(self._paths[k], os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                self._fds[k] = fd
            return fd

    def fileno(self, path: Path) -> int:
        """The open descriptor of one part (for os.sendfile)."""
        return self._fd(self._paths.index(path))

    def spans(self, offset: int, length: int) -> list[FileSpan]:
        """Where the bundle's bytes [offset, offset + length) lie on the media."""
        if offset < 0 or offset + length > self.size:
            raise TruncatedError(
                f"{self.source}: bytes {offset} to {offset + length} are past its end ({self.size})"
            )
        out = []
        k = bisect.bisect_right(self._starts, offset) - 1
        while length > 0:
            inside = offset - self._starts[k]
            n = min(length, self._sizes[k] - inside)
            if n > 0:
                out.append(FileSpan(self._paths[k], inside, n))
            offset += n
            length -= n
            k += 1
        return out

    def pread(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes from `offset`, across volume boundaries."""
        parts = []
        for span in self.spans(offset, length):
            if self._repair is not None:
                k = self._paths.index(span.path)
                parts.append(self._repair.pread(k, span.offset, span.length))
                continue
            fd = self._fd(self._paths.index(span.path))
            got = 0
            while got < span.length:
                chunk = os.pread(fd, span.length - got, span.offset + got)
                if not chunk:
                    raise TruncatedError(
                        f"{self.source}: {span.path.name} ends at byte {span.offset + got}, "
                        f"before the {span.offset + span.length} its index declares"
                    )
                parts.append(chunk)
                got += len(chunk)
        return b"".join(parts)

    def stream(self, offset: int, end: int) -> _PositionalStream:
        """A read()-only stream of [offset, end), for sequential decoding."""
        return _PositionalStream(self, offset, end)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
        if self._repair is not None:
            self._repair.close()


class _PositionalStream:
    def __init__(self, volumes: VolumeReader, offset: int, end: int) -> None:
        self._volumes = volumes
        self._start = offset
        self._pos = offset
        self._end = end

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int) -> int:
        """Back to an offset already read (FrameStream reads a block's start again)."""
        if not self._start <= offset <= self._end:
            raise ValueError(f"offset {offset} outside [{self._start}, {self._end}]")
        self._pos = offset
        return offset

    def read(self, n: int = -1) -> bytes:
        left = self._end - self._pos
        n = left if n < 0 else min(n, left)
        if n <= 0:
            return b""
        data = self._volumes.pread(self._pos, n)
        self._pos += n
        return data


@dataclass(frozen=True)
class MemberInfo:
    """A content member and where its bytes are."""

    place: MemberPlace
    first_frame: int  # the frame holding its first data byte (or its header, if empty)
    # Its first frame starts before its header: the bytes of other members
    # must be decoded to reach it (a bundle written before the seek table).
    # A server would extract such a member to a cache once.
    shared: bool

    @property
    def path(self) -> str:
        return self.place.entry.path

    @property
    def size(self) -> int:
        return self.place.entry.size

    @property
    def digest(self) -> Digest:
        return self.place.entry.digest


class BundleAccess:
    """A bundle's members, each readable at any offset, on authenticated terms.

    Built by ops.access.open_bundle_access once the prefix is authenticated
    and the frames are known (from the signed seek table, or from an index);
    `frames_signed` says which.
    """

    def __init__(
        self,
        volumes: VolumeReader,
        *,
        manifest: BundleManifest,
        manifest_digest: Digest,
        frames: FrameMap,
        frames_signed: bool,
        verified: frozenset[str] = frozenset(),
        signers: tuple[TrustedKey, ...] = (),
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.volumes = volumes
        self.source = volumes.source
        self.manifest = manifest
        self.manifest_digest = manifest_digest
        self.frames = frames
        self.frames_signed = frames_signed
        # Members whose every byte was checked while this object was made
        # (the indexing pass of a bundle without a seek table reads them all).
        self.verified = verified
        # The trusted keys whose signatures met the policy when it was opened.
        self.signers = signers
        self._limits = limits
        # A reader of members decodes compressed frames one block at a time
        # (no frame held whole: memory per reader stays near 2 MiB however many
        # read at once); only raw frames, up to 1 MiB, are gathered, to pass
        # their payload on without a decoder. The member's sha256, not the
        # frame checksum, is what its bytes are trusted on.
        self._cursor_limits = dataclasses.replace(
            limits,
            max_frame_buffer_bytes=min(limits.max_frame_buffer_bytes, RAW_MEMBER_MIN + BLOCK),
        )
        self._entries = [(f.size, f.length) for f in frames.frames]
        self._content_end = frames.compressed_end
        self.members: dict[str, MemberInfo] = {}
        self.places = member_places(manifest.members)
        for place in self.places:
            at = place.data if place.entry.size else place.header
            k = frames.index_at(at)
            self.members[place.entry.path] = MemberInfo(
                place, k, frames.frames[k].start < place.header
            )
        # Per raw member: its spans and where each starts in the member.
        self._spans: dict[str, tuple[tuple[FileSpan, ...], list[int]] | None] = {}

    def member(self, path: str) -> MemberInfo:
        try:
            return self.members[path]
        except KeyError:
            raise KeyError(f"{self.source}: no member {path!r} in the bundle") from None

    def open_member(self, path: str) -> MemberReader:
        """A reader of exactly the member's bytes, from any offset (seek, then read)."""
        return MemberReader(self, self.member(path))

    def tar_stream(self, start: int, end: int) -> Iterator[bytes]:
        """The content's tar stream [start, end) (tar offsets), decoded from the
        frame holding `start`: several members of one shared frame (a bundle
        written before the seek table) in one pass. Unchecked bytes, as
        open_member's: hash each member before trusting it."""
        if start >= end:
            return iter(())
        return self._decode(start, end)

    def _decode(self, start: int, end: int, place: MemberPlace | None = None) -> Iterator[bytes]:
        """The content's tar stream [start, end), decoded from the frame holding
        `start`. With `place`, when the member's header starts the frame holding
        `start` or the one before (a raw member's header frame), decoding starts
        there and the header must name the member with its size."""
        k = self.frames.index_at(start)
        header_at: int | None = None
        if place is not None:
            kh = self.frames.index_at(place.header)
            if self.frames.frames[kh].start == place.header and k - kh <= 1:
                k, header_at = kh, place.header
        frame = self.frames.frames[k]
        stream = FrameStream(
            self.volumes.stream(frame.offset, self._content_end),  # type: ignore[arg-type]
            start=frame.offset,
            limits=self._cursor_limits,
            source=self.source,
            end=self._content_end,
            expected=_Tail(self._entries, k),
        )
        pos = frame.start  # tar offset of the next byte the stream gives
        header = b""
        while pos < end:
            chunk = stream.read(self._limits.io_chunk_bytes)
            if not chunk:
                raise TruncatedError(f"{self.source}: the content ends at tar offset {pos}")
            if header_at is not None and place is not None:
                header += chunk[: BLOCK - len(header)]
                if len(header) == BLOCK:
                    self._check_header(header, place)
                    header_at = None
            lo, hi = max(start - pos, 0), min(len(chunk), end - pos)
            pos += len(chunk)
            if lo < hi:
                yield chunk if (lo, hi) == (0, len(chunk)) else chunk[lo:hi]

    def _check_header(self, block: bytes, place: MemberPlace) -> None:
        member = decode_header(block, place.header, max_path_length=self._limits.max_path_length)
        entry = place.entry
        if (member.path, member.size) != (entry.path, entry.size):
            raise ArchiveError(
                f"{self.source}: the tar header at offset {place.header} is "
                f"{member.path!r} ({member.size} bytes), not {entry.path!r} ({entry.size} "
                "bytes) as the signed manifest lists it"
            )

    def payload_spans(
        self, path: str, start: int = 0, end: int | None = None
    ) -> tuple[FileSpan, ...] | None:
        """Bytes [start, end) of the member as they lie on the media, when all of
        its bytes are raw blocks (already-compressed members of 1 MiB or more):
        a server can sendfile() these spans, in order. None when any of its
        bytes are compressed (then read them through open_member)."""
        info = self.member(path)
        end = info.size if end is None else end
        if not 0 <= start <= end <= info.size:
            raise ValueError(f"range {start}-{end} outside member of {info.size} bytes")
        if path not in self._spans:
            spans = self._find_spans(info)
            self._spans[path] = (
                None
                if spans is None
                else (spans, list(itertools.accumulate((s.length for s in spans), initial=0)))
            )
        found = self._spans[path]
        if found is None:
            return None
        spans, starts = found
        out = []
        k = max(0, bisect.bisect_right(starts, start) - 1)
        while k < len(spans) and starts[k] < end:
            lo, hi = max(start, starts[k]), min(end, starts[k] + spans[k].length)
            if lo < hi:
                span = spans[k]
                out.append(FileSpan(span.path, span.offset + lo - starts[k], hi - lo))
            k += 1
        return tuple(out)

    def _find_spans(self, info: MemberInfo) -> tuple[FileSpan, ...] | None:
        start, end = info.place.data, info.place.end
        out: list[FileSpan] = []
        k = info.first_frame
        while start < end:
            frame = self.frames.frames[k]
            blocks = self._raw_blocks(frame.offset, frame.size, frame.length)
            if blocks is None:
                return None
            pos = frame.start
            for file_offset, length in blocks:
                lo, hi = max(pos, start), min(pos + length, end)
                if lo < hi:
                    out += self.volumes.spans(file_offset + (lo - pos), hi - lo)
                pos += length
            start = min(frame.end, end)
            k += 1
        if not all(self.volumes.on_media(span.path) for span in out):
            return None  # rebuilt from parity: read (and decode) through open_member
        return tuple(out)

    def _raw_blocks(self, offset: int, size: int, length: int) -> list[tuple[int, int]] | None:
        """(file offset, length) of each raw block of the frame, or None if it
        has any other kind. Only the headers are read, not the payload."""
        head = self.volumes.pread(offset, min(size, MAX_FRAME_HEADER))
        where = f"{self.source}: "
        try:
            header = parse_frame_header(
                head[: header_size_needed(head)],
                where=offset,
                max_window=self._limits.max_zstd_window_bytes,
            )
        except ArchiveError as exc:
            raise ArchiveError(where + exc.message) from None
        if not isinstance(header, FrameHeader):
            raise ArchiveError(f"{where}no zstd frame at byte {offset}, where the table has one")
        pos = offset + header.size
        blocks = []
        produced = 0
        while True:
            try:
                block = parse_block_header(self.volumes.pread(pos, BLOCK_HEADER), header, where=pos)
            except ArchiveError as exc:
                raise ArchiveError(where + exc.message) from None
            if block.kind != RAW:
                return None
            blocks.append((pos + BLOCK_HEADER, block.size))
            produced += block.size
            pos += BLOCK_HEADER + block.size
            if block.last:
                break
            if pos >= offset + size:
                raise ArchiveError(f"{where}the frame at byte {offset} runs past its table entry")
        end = pos + (4 if header.checksum else 0)
        if end != offset + size or produced != length:
            raise ArchiveError(
                f"{where}the raw frame at byte {offset} is not the one the table lists "
                f"({end - offset} bytes holding {produced}; the table says {size} holding {length})"
            )
        return blocks

    def section(self, first: int, stop: int) -> Iterator[tuple[MemberInfo, Iterator[bytes]]]:
        """Members [first, stop) of the signed list, in order, read as the
        sequential reader reads the whole content: their frames decoded in
        full and checked against the table (sizes, zstd checksums), each tar
        header naming the listed member with its size, zero padding; the last
        section also reads the end-of-archive marker. Sections that together
        cover every member cover every byte of the content region, so they can
        be read in parallel (each from its own offset) with nothing left
        unread. Only for a signed seek table (each member starts a frame).

        Yields each member with an iterator of its data, which the caller must
        exhaust (or stop using the section) before the next is yielded; the
        bytes are not yet checked against the member's sha256."""
        if not self.frames_signed:
            raise ValueError("sections need a signed seek table")
        if not 0 <= first < stop <= len(self.places):
            raise ValueError(f"section [{first}, {stop}) outside {len(self.places)} members")
        frames = self.frames.frames
        # From the first frame starting at the first header (an empty frame
        # there too) to the first starting at the next section's.
        k0 = 0 if first == 0 else bisect.bisect_left(self.frames.starts, self.places[first].header)
        last = stop == len(self.places)
        if last:
            k1, end = len(frames), self._content_end
        else:
            k1 = bisect.bisect_left(self.frames.starts, self.places[stop].header)
            end = frames[k1].offset
        stream = FrameStream(
            self.volumes.stream(frames[k0].offset, end),  # type: ignore[arg-type]
            start=frames[k0].offset,
            limits=self._limits,
            source=self.source,
            end=end,
            expected=self._entries[k0:k1],
        )
        tar = TarReader(
            stream,  # type: ignore[arg-type]
            max_path_length=self._limits.max_path_length,
            source=self.source,
            stop_at_eof=not last,
        )
        for place in self.places[first:stop]:
            member = tar.next()
            entry = place.entry
            if (
                member is None
                or (member.path, member.size, member.kind) != (entry.path, entry.size, REGULAR)
                or member.offset != place.header - self.places[first].header
            ):
                found = "the end" if member is None else f"{member.path!r} ({member.size} bytes)"
                raise ArchiveError(
                    f"{self.source}: at tar offset {place.header} the content holds {found}, "
                    f"not {entry.path!r} ({entry.size} bytes) as the signed manifest lists it",
                    member=entry.path,
                )
            yield self.members[entry.path], tar.iter_data(self._limits.io_chunk_bytes)
            tar.skip_data()
        if tar.next() is not None or len(stream.frames) != 2 * (k1 - k0):
            raise ArchiveError(
                f"{self.source}: the frames of members {first} to {stop - 1} hold more than "
                "those members"
            )

    def verify_member(self, path: str) -> None:
        """Hash the member in full against the signed manifest; raises
        MemberDigestError (or the error that stopped the reading) if it is not
        what was signed. Nothing is returned: no verdict to forget to check."""
        info = self.member(path)
        h = hashlib.sha256()
        reader = self.open_member(path)
        while chunk := reader.read(self._limits.io_chunk_bytes):
            h.update(chunk)
        if h.hexdigest() != info.digest.hex:
            raise MemberDigestError(
                f"{self.source}: member {path!r} is corrupt or was tampered with: its content "
                f"has digest sha256:{h.hexdigest()}, the signed manifest says {info.digest}",
                member=path,
            )

    def close(self) -> None:
        self.volumes.close()

    def __enter__(self) -> BundleAccess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Tail(Sequence[tuple[int, int]]):
    """entries[k:] without copying a long table per read."""

    def __init__(self, entries: list[tuple[int, int]], k: int) -> None:
        self._entries = entries
        self._k = k

    def __len__(self) -> int:
        return len(self._entries) - self._k

    def __getitem__(self, i: int) -> tuple[int, int]:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._entries[self._k + i]


class MemberReader:
    """Exactly one member's bytes: read() from the current position, seek()
    anywhere in [0, size]. Sequential reads continue in the open frame;
    a seek elsewhere starts at the frame that holds the new position."""

    def __init__(self, bundle: BundleAccess, info: MemberInfo) -> None:
        self._bundle = bundle
        self.info = info
        self.size = info.size
        self._pos = 0
        self._chunks: Iterator[bytes] | None = None
        self._chunks_at = -1
        self._left = b""

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        target = base + offset
        if not 0 <= target <= self.size:
            raise ValueError(f"offset {target} outside member of {self.size} bytes")
        self._pos = target
        return target

    def read(self, n: int = -1) -> bytes:
        """Exactly min(n, bytes left) bytes (all that is left for n < 0)."""
        left = self.size - self._pos
        n = left if n < 0 else min(n, left)
        parts = []
        while n > 0:
            part = self._read_some(n)
            parts.append(part)
            n -= len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_some(self, n: int) -> bytes:
        if self._chunks is None or self._chunks_at != self._pos:
            place = self.info.place
            self._chunks = self._bundle._decode(place.data + self._pos, place.end, place)
            self._left = b""
        if not self._left:
            self._left = next(self._chunks)
        out, self._left = self._left[:n], self._left[n:]
        self._pos += len(out)
        self._chunks_at = self._pos
        return out

    def iter_range(self, start: int, end: int, chunk: int = 1 << 20) -> Iterator[bytes]:
        """The bytes [start, end) of the member (an HTTP Range), in chunks."""
        self.seek(start)
        while self._pos < end:
            data = self.read(min(chunk, end - self._pos))
            if not data:
                return
            yield data

    def close(self) -> None:
        self._chunks = None
        self._left = b""


# --- the frame index of a bundle without a seek table, in a cache folder -----------------


def index_path(cache_dir: Path, manifest_digest: Digest) -> Path:
    return cache_dir / f"{manifest_digest.hex}.frames.json"


def read_frame_index(path: Path, *, limits: Limits) -> FrameIndex | None:
    """The cached index, or None if there is none. A file that is not a
    regular file, is too large, or does not parse is an ArchiveError."""
    try:
        # No following a link, no waiting on a FIFO put in its place.
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ArchiveError(f"frame index {path}: cannot open it: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ArchiveError(f"frame index {path} is not a regular file")
        if info.st_size > limits.max_frame_index_bytes:
            raise ArchiveError(
                f"frame index {path} is {info.st_size} bytes, more than the "
                f"{limits.max_frame_index_bytes} allowed"
            )
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(limits.max_frame_index_bytes + 1)
    finally:
        os.close(fd)
    return FrameIndex.from_bytes(data, source=str(path), limits=limits)


def write_frame_index(path: Path, index: FrameIndex) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, index.to_bytes())
