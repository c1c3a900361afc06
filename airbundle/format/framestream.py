"""The decompressed bytes of a bundle, frame by frame, with every byte accounted for.

zstd's own stream decoder skips skippable frames and does not say where one
frame ends and the next begins. A bundle needs both: nothing but the format's
own frames may sit in it (issue: bytes nobody checks), and the frames of the
content region must be exactly those its signed seek table lists. So the
frames are walked here (airbundle.format.zstdframes) and each is decoded on
its own:

* a frame whose header gives a content size of at most
  ``Limits.max_frame_buffer_bytes`` is gathered whole; if it holds only raw
  and RLE blocks and no checksum (the frames already-compressed members are
  stored in), its payload is passed on without a decoder, else zstd decodes
  it in one call;
* any other frame (an old bundle's long streaming frame) is fed to zstd one
  block at a time, so no single call can produce more than 128 KiB.

Where a region rule applies (prefix region: one zstd frame and a zero
padding frame; content region: zstd frames, then the declared seek table and
nothing after it), it is checked at each frame boundary.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from airbundle.errors import ArchiveError, TruncatedError
from airbundle.format.digest import Digest
from airbundle.format.seektable import SEEK_TABLE_MAGIC, parse_seek_table
from airbundle.format.zstdframes import (
    BLOCK_HEADER,
    CHECKSUM,
    COMPRESSED,
    MAX_FRAME_HEADER,
    RAW,
    SKIPPABLE_HEADER,
    BlockHeader,
    FrameHeader,
    SkippableHeader,
    header_size_needed,
    is_skippable,
    parse_block_header,
    parse_frame_header,
)
from airbundle.limits import Limits

PADDING_MAGIC = 0x184D2A50
# Compressed bytes per call when zstd decodes a checksummed frame: outputs
# stay near 1 MiB, which the reader hands on whole (measured: 64 KiB to
# 512 KiB within noise of each other, the whole frame at once slower).
_FEED = 128 * 1024


@dataclass(frozen=True)
class ExpectedTable:
    """Where the signed manifest says the seek table is, and its digest."""

    offset: int
    size: int
    digest: Digest


class FrameStream:
    """A read-only stream of the decompressed bytes of consecutive frames.

    `raw` is positioned at file offset `start`. With `prefix_end`, the region
    [start, prefix_end) is the bundle's prefix region and the rules above
    apply; without it every frame must be a zstd frame (a random-access
    cursor). `end` stops the stream there (a prefix read, or a cursor that
    must not run into the seek table). `expected` are (compressed,
    decompressed) sizes the frames read must have, in order (a cursor over
    frames a signed seek table lists).
    """

    def __init__(
        self,
        raw: BinaryIO,
        *,
        start: int,
        limits: Limits,
        source: str,
        prefix_end: int | None = None,
        end: int | None = None,
        expected: Sequence[tuple[int, int]] = (),
    ) -> None:
        self._raw = raw
        self._source = source
        self._limits = limits
        self._prefix_end = prefix_end
        self._end = end
        self._expected = expected
        self._buf = b""
        self._i = 0
        self._read_to = start  # file offset just past the last raw byte read
        self._pos = start  # file offset of the next frame boundary or block
        self._start = start
        self._out: deque[memoryview] = deque()
        self._decoder = zstandard.ZstdDecompressor(max_window_size=limits.max_zstd_window_bytes)
        self._streaming: _Streaming | None = None
        self._eof = False
        self._table: ExpectedTable | None = None
        self._table_seen = False
        # Until the manifest is authenticated nobody knows whether a skippable
        # frame after the content is the seek table: the stream stops there
        # (a bundle without members reaches it while its prefix is read) and
        # goes on once told.
        self._told = prefix_end is None
        self._held = False
        # (compressed, decompressed) per content frame, flat: 2 entries each.
        self.frames: array[int] = array("Q")
        self.prefix_output: int | None = None  # bytes the prefix frame decodes to
        self._frame_start = start
        # A file or a positional reader whose position is `start`: the input can
        # be read again from any offset already read (see _fill).
        self._rewind = _seekable_at(raw, start)

    # --- what the reader of the stream sees -----------------------------------------

    @property
    def position(self) -> int:
        """File offset of the next byte not yet consumed."""
        return self._pos

    def expect_seek_table(self, table: ExpectedTable | None) -> None:
        """Set once the manifest is authenticated: where the one skippable frame
        the content region may hold is, or None for a bundle without one."""
        self._table = table
        self._told = True
        if self._held:
            # The stream stopped at a skippable frame: the seek table, or refused.
            self._held = False
            self._advance()

    @property
    def table_seen(self) -> bool:
        return self._table_seen

    @property
    def held(self) -> bool:
        """Stopped at a skippable frame after the content, not yet told what may be there."""
        return self._held

    def read(self, n: int = -1) -> bytes:
        while not self._out:
            if self._eof or not self._advance():
                self._eof = True
                return b""
        first = self._out[0]
        if n < 0 or n >= len(first):
            self._out.popleft()
            whole = first.obj
            if isinstance(whole, bytes) and len(whole) == len(first):
                return whole  # a decoded frame handed on as it is, no copy
            return first.tobytes()
        self._out[0] = first[n:]
        return first[:n].tobytes()

    # --- raw input ------------------------------------------------------------------

    def _available(self) -> int:
        return len(self._buf) - self._i

    def _fill(self, n: int) -> int:
        """Try to have n raw bytes buffered from the current position; how many are."""
        have = self._available()
        if have >= n:
            return have
        want = max(n - have, self._limits.io_chunk_bytes)
        if self._end is not None:
            want = min(want, self._end - self._read_to)
        if have and self._rewind and want > 0:
            # What is left is at most a block: read it again with the next
            # chunk (from the page cache) rather than copy the chunk to join it.
            self._raw.seek(self._read_to - have)
            self._read_to -= have
            want += have
            have = 0
            self._buf, self._i = b"", 0
        # Else what is left is joined with the next read: its only copy.
        parts: list[bytes | memoryview] = [memoryview(self._buf)[self._i :]] if have else []
        while have < n and want > 0:
            chunk = self._raw.read(want)
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
            self._read_to += len(chunk)
            want -= len(chunk)
        only = parts[0] if len(parts) == 1 else None
        self._buf = only if isinstance(only, bytes) else b"".join(parts)
        self._i = 0
        return have

    def _need(self, n: int, what: str) -> memoryview:
        if self._fill(n) < n:
            raise TruncatedError(
                f"{self._source}: the bundle ends early: {what} at byte {self._pos} "
                f"stops after {self._available()} of {n} bytes"
            )
        return memoryview(self._buf)[self._i : self._i + n]

    def _consume(self, n: int) -> None:
        self._i += n
        self._pos += n

    # --- frames ---------------------------------------------------------------------

    def _error(self, message: str) -> ArchiveError:
        return ArchiveError(f"{self._source}: {message}")

    def _advance(self) -> bool:
        """Queue more output; False at the end of the stream."""
        if self._streaming is not None:
            self._stream_block()
            return True
        if self._end is not None and self._pos >= self._end:
            return False
        have = self._fill(SKIPPABLE_HEADER)
        if have == 0:
            return self._at_raw_end()
        magic = int.from_bytes(self._need(4, "a frame header"), "little")
        if is_skippable(magic):
            return self._skippable()
        self._check_zstd_frame_allowed()
        size = header_size_needed(self._need(5, "a zstd frame header"))
        head = self._need(size, "a zstd frame header")
        header = self._frame_header(head)
        self._frame_start = self._pos
        self._consume(size)
        if (
            header.content_size is not None
            and header.content_size <= self._limits.max_frame_buffer_bytes
        ):
            if header.checksum:
                self._checked(header, head)
            else:
                self._gathered(header, head)
        else:
            self._open_streaming(header, head)
        return True

    def _at_raw_end(self) -> bool:
        if self._prefix_end is not None and self._pos < self._prefix_end:
            raise TruncatedError(
                f"{self._source}: the bundle ends early inside its prefix region "
                f"(byte {self._pos} of {self._prefix_end})"
            )
        if self._table is not None and not self._table_seen:
            if self._pos <= self._table.offset:
                raise TruncatedError(
                    f"{self._source}: the bundle ends early at byte {self._pos}: its seek "
                    f"table at byte {self._table.offset} is missing"
                )
            raise self._error(
                f"no seek table at byte {self._table.offset}, where the signed manifest "
                f"declares it (the content frames run to byte {self._pos})"
            )
        if self._end is not None and self._pos < self._end:
            raise TruncatedError(
                f"{self._source}: the bundle ends early at byte {self._pos} (expected {self._end})"
            )
        return False

    def _check_zstd_frame_allowed(self) -> None:
        if self._prefix_end is None:
            return
        if self._pos < self._prefix_end and self.prefix_output is not None:  # after the first
            raise self._error(
                f"a second zstd frame at byte {self._pos} inside the prefix region: it holds "
                "one frame and its padding"
            )

    def _frame_header(self, view: memoryview) -> FrameHeader:
        try:
            header = parse_frame_header(
                view, where=self._pos, max_window=self._limits.max_zstd_window_bytes
            )
        except ArchiveError as exc:
            raise self._error(exc.message) from None
        assert isinstance(header, FrameHeader)  # the magic was checked
        return header

    def _block_header(self, view: memoryview, frame: FrameHeader, where: int) -> BlockHeader:
        try:
            return parse_block_header(view, frame, where=where)
        except ArchiveError as exc:
            raise self._error(exc.message) from None

    def _skippable(self) -> bool:
        view = self._need(SKIPPABLE_HEADER, "a skippable frame header")
        header = SkippableHeader(
            int.from_bytes(view[:4], "little"), int.from_bytes(view[4:8], "little")
        )
        if self._prefix_end is not None and self._pos < self._prefix_end:
            self._padding(header)
            return True
        if not self._told:
            self._held = True
            return False
        if self._table is not None and self._pos == self._table.offset:
            self._seek_table(header)
            return False
        declared = (
            f"at byte {self._table.offset}" if self._table is not None else "none in this bundle"
        )
        raise self._error(
            f"skippable frame (magic {header.magic:#010x}, {header.length} bytes) at byte "
            f"{self._pos} in the content region: nothing but zstd frames may sit there, "
            f"and after them the seek table the signed manifest declares ({declared})"
        )

    def _padding(self, header: SkippableHeader) -> None:
        assert self._prefix_end is not None
        if self.prefix_output is None:
            raise self._error(
                f"the prefix region at byte {self._pos} starts with a skippable frame, "
                "not the manifest's zstd frame"
            )
        if header.magic != PADDING_MAGIC or self._pos + header.size != self._prefix_end:
            raise self._error(
                f"the padding frame at byte {self._pos} does not fill the prefix region "
                f"exactly (magic {header.magic:#010x}, {header.size} bytes, "
                f"{self._prefix_end - self._pos} left)"
            )
        self._consume(SKIPPABLE_HEADER)
        left = header.length
        while left:
            step = min(left, self._limits.io_chunk_bytes)
            chunk = self._need(step, "the prefix padding")
            if chunk.tobytes().count(0) != step:
                raise self._error(
                    f"non-zero bytes in the prefix padding frame (bytes {self._pos} to "
                    f"{self._pos + step}); padding must be zeros"
                )
            self._consume(step)
            left -= step

    def _seek_table(self, header: SkippableHeader) -> None:
        table = self._table
        assert table is not None
        if header.magic != SEEK_TABLE_MAGIC or header.size != table.size:
            raise self._error(
                f"the frame at byte {self._pos} is not the seek table the manifest declares "
                f"(magic {header.magic:#010x}, {header.size} bytes; expected "
                f"{SEEK_TABLE_MAGIC:#010x}, {table.size} bytes)"
            )
        if table.size > self._limits.max_seek_table_bytes:
            raise self._error(
                f"the seek table is {table.size} bytes, more than the "
                f"{self._limits.max_seek_table_bytes} allowed"
            )
        data = self._need(table.size, "the seek table").tobytes()
        if Digest.sha256_of(data) != table.digest:
            raise self._error(
                f"the seek table at byte {self._pos} has digest {Digest.sha256_of(data)}, "
                f"the signed manifest says {table.digest}"
            )
        self._consume(table.size)
        entries = parse_seek_table(data, source=self._source, limits=self._limits)
        walked = self.frames
        if len(entries) * 2 != len(walked) or any(
            (c, d) != (walked[2 * k], walked[2 * k + 1]) for k, (c, d) in enumerate(entries)
        ):
            raise self._error(
                f"the content frames ({len(walked) // 2} walked) do not match the signed "
                f"seek table ({len(entries)} entries)"
            )
        self._table_seen = True
        if self._fill(1):
            raise self._error(
                f"unexpected bytes after the end of the bundle (after its seek table, "
                f"byte {self._pos})"
            )

    # --- decoding one frame ---------------------------------------------------------

    def _block(self, header: FrameHeader) -> tuple[BlockHeader, memoryview]:
        """The next block of the current frame (its header, payload and, after
        the last one, the frame checksum), consumed."""
        view = self._need(BLOCK_HEADER, "a zstd block header")
        block = self._block_header(view, header, self._pos)
        length = BLOCK_HEADER + block.payload
        if block.last and header.checksum:
            length += CHECKSUM
        data = self._need(length, "a zstd block")
        self._consume(length)
        return block, data

    def _gathered(self, header: FrameHeader, head: memoryview) -> None:
        """A frame of known, bounded content size: every block read, then the
        output made (raw and RLE blocks without a decoder, the rest through
        zstd a block at a time) and checked before any of it is handed on."""
        assert header.content_size is not None
        start = self._frame_start
        limit = 2 * header.content_size + MAX_FRAME_HEADER + BLOCK_HEADER + CHECKSUM + 1024
        blocks: list[tuple[BlockHeader, memoryview]] = []
        while not blocks or not blocks[-1][0].last:
            if self._pos - start > limit:
                raise self._error(
                    f"the zstd frame at byte {start} takes more bytes than its content needs"
                )
            blocks.append(self._block(header))
        parts: list[memoryview]
        if not header.checksum and all(b.kind != COMPRESSED for b, _ in blocks):
            parts = [
                data[BLOCK_HEADER : BLOCK_HEADER + block.size]
                if block.kind == RAW
                else memoryview(data[BLOCK_HEADER : BLOCK_HEADER + 1].tobytes() * block.size)
                for block, data in blocks
            ]
        else:
            # A block at a time: pieces of at most 128 KiB, which the reader
            # hands on without copying them again.
            obj = self._decoder.decompressobj()
            try:
                obj.decompress(head)
                parts = [memoryview(obj.decompress(data)) for _, data in blocks]
            except zstandard.ZstdError as exc:
                raise self._corrupt(exc, start) from exc
            if not obj.eof or obj.unused_data:  # pragma: no cover - the walk found the end
                raise self._error(f"the zstd frame at byte {start} does not end where it should")
        produced = sum(len(p) for p in parts)
        if produced != header.content_size:
            raise self._error(
                f"the zstd frame at byte {start} holds {produced} bytes, its header "
                f"says {header.content_size}"
            )
        self._out.extend(p for p in parts if len(p))
        self._frame_done(self._pos - start, produced)

    def _checked(self, header: FrameHeader, head: memoryview) -> None:
        """A frame of known, bounded content size with a checksum: zstd finds its
        end and checks it (no block can be passed on without it); its output
        is held until the checksum matched."""
        assert header.content_size is not None
        start = self._frame_start
        limit = 2 * header.content_size + MAX_FRAME_HEADER + BLOCK_HEADER + CHECKSUM + 1024
        obj = self._decoder.decompressobj()
        parts: list[memoryview] = []
        try:
            obj.decompress(head)
            while not obj.eof:
                if self._pos - start > limit:
                    raise self._error(
                        f"the zstd frame at byte {start} takes more bytes than its content needs"
                    )
                have = min(self._fill(1), _FEED)
                if not have:
                    raise TruncatedError(
                        f"{self._source}: the bundle ends early inside the zstd frame at "
                        f"byte {start}"
                    )
                out = obj.decompress(memoryview(self._buf)[self._i : self._i + have])
                self._consume(have - len(obj.unused_data) if obj.eof else have)
                if out:
                    parts.append(memoryview(out))
        except zstandard.ZstdError as exc:
            raise self._corrupt(exc, start) from exc
        produced = sum(len(p) for p in parts)
        if produced != header.content_size:  # pragma: no cover - zstd checks it
            raise self._error(
                f"the zstd frame at byte {start} holds {produced} bytes, its header "
                f"says {header.content_size}"
            )
        self._out.extend(parts)
        self._frame_done(self._pos - start, produced)

    def _corrupt(self, exc: zstandard.ZstdError, where: int) -> ArchiveError:
        text = str(exc)
        if "memory" in text or "window" in text.lower():
            text += " (a frame asks for a decompression window larger than allowed)"
        return self._error(f"compressed data is corrupt near byte {where}: {text}")

    def _open_streaming(self, header: FrameHeader, head: memoryview) -> None:
        obj = self._decoder.decompressobj()
        try:
            obj.decompress(head)
        except zstandard.ZstdError as exc:
            raise self._corrupt(exc, self._frame_start) from exc
        self._streaming = _Streaming(header, obj)

    def _stream_block(self) -> None:
        """One block of a frame too large (or of unknown size) to hold: its
        output goes on at once, at most 128 KiB."""
        state = self._streaming
        assert state is not None
        at = self._pos
        block, data = self._block(state.header)
        try:
            out = state.decoder.decompress(data)
        except zstandard.ZstdError as exc:
            raise self._corrupt(exc, at) from exc
        state.output += len(out)
        if out:
            self._out.append(memoryview(out))
        if state.decoder.eof != block.last or state.decoder.unused_data:
            raise self._error(f"the zstd frame ending near byte {self._pos} is malformed")
        if block.last:
            self._streaming = None
            self._frame_done(self._pos - self._frame_start, state.output)

    def _frame_done(self, size: int, output: int) -> None:
        if self._prefix_end is not None and self.prefix_output is None:
            if self._pos > self._prefix_end:
                raise self._error(
                    f"the prefix frame runs past the prefix region (to byte {self._pos}, "
                    f"the header says {self._prefix_end}): the header's prefix length is wrong"
                )
            self.prefix_output = output
            return
        k = len(self.frames) // 2
        if self._expected and (k >= len(self._expected) or self._expected[k] != (size, output)):
            raise self._error(
                f"the frame at byte {self._frame_start} ({size} bytes, {output} "
                "decompressed) is not the one the seek table lists there"
            )
        self.frames.append(size)
        self.frames.append(output)


def _seekable_at(raw: BinaryIO, start: int) -> bool:
    try:
        return bool(raw.seekable()) and raw.tell() == start
    except (AttributeError, OSError, ValueError):
        return False


@dataclass
class _Streaming:
    header: FrameHeader
    decoder: zstandard.ZstdDecompressionObj
    output: int = 0
