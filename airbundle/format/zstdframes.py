"""A pure walker over zstd frames: frame headers and block headers, no decoding.

RFC 8878 (the zstd format) lets a reader find where every frame and block
ends without decompressing anything: a frame header says whether a checksum
follows the last block, and every block header says its type and how many
bytes follow it. That is enough to hold every byte of a bundle to account
(which frames there are, where skippable frames sit, whether a frame is only
raw blocks whose payload can be sent as is) and to compare the frames with a
seek table while the stream passes.

The walker is strict in the way a careful decoder is: reserved bits set, a
dictionary id (bundles use none), a window above the limit, a block larger
than the frame allows, more raw bytes than the declared content size: each is
an ArchiveError before anything is allocated.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from airbundle.errors import ArchiveError

ZSTD_MAGIC = 0xFD2FB528
ZSTD_MAGIC_BYTES = struct.pack("<I", ZSTD_MAGIC)
SKIPPABLE_MAGIC_MIN = 0x184D2A50
SKIPPABLE_MAGIC_MAX = 0x184D2A5F
SKIPPABLE_HEADER = 8  # magic + frame size
MAX_FRAME_HEADER = 18  # magic 4, descriptor 1, window 1, dictionary id 4, content size 8
BLOCK_HEADER = 3
CHECKSUM = 4
MAX_BLOCK = 128 * 1024  # zstd's Block_Maximum_Size

RAW = 0
RLE = 1
COMPRESSED = 2
_BLOCK_NAMES = {RAW: "raw", RLE: "RLE", COMPRESSED: "compressed"}

_FCS_SIZES = (0, 2, 4, 8)
_DID_SIZES = (0, 1, 2, 4)


@dataclass(frozen=True)
class FrameHeader:
    """A zstd data frame's header."""

    size: int  # bytes of the header, magic included
    window: int  # Window_Size in bytes
    content_size: int | None  # Frame_Content_Size, when the header carries it
    checksum: bool  # a 4-byte checksum follows the last block
    single_segment: bool

    @property
    def block_limit(self) -> int:
        """Block_Maximum_Size: no block may hold or produce more bytes than this."""
        return min(self.window, MAX_BLOCK)


@dataclass(frozen=True)
class SkippableHeader:
    magic: int
    length: int  # bytes after the 8-byte header

    @property
    def size(self) -> int:
        return SKIPPABLE_HEADER + self.length


@dataclass(frozen=True)
class BlockHeader:
    last: bool
    kind: int  # RAW, RLE or COMPRESSED
    size: int  # Block_Size: bytes produced (raw, RLE) or compressed bytes (compressed)

    @property
    def payload(self) -> int:
        """Bytes that follow the 3-byte block header in the stream."""
        return 1 if self.kind == RLE else self.size

    @property
    def output(self) -> int | None:
        """Bytes the block produces; None for a compressed block (only decoding says)."""
        return None if self.kind == COMPRESSED else self.size


def read_magic(data: bytes | bytearray | memoryview, where: int) -> int:
    if len(data) < 4:
        raise ArchiveError(f"a frame at byte {where} is cut short ({len(data)} bytes)")
    return int(struct.unpack_from("<I", data, 0)[0])


def is_skippable(magic: int) -> bool:
    return SKIPPABLE_MAGIC_MIN <= magic <= SKIPPABLE_MAGIC_MAX


def header_size_needed(data: bytes | bytearray | memoryview) -> int:
    """How many bytes the header starting `data` takes (needs at least 5 bytes
    for a data frame, 8 for a skippable one)."""
    magic = struct.unpack_from("<I", data, 0)[0]
    if is_skippable(magic):
        return SKIPPABLE_HEADER
    descriptor = data[4]
    fcs_flag, single = descriptor >> 6, (descriptor >> 5) & 1
    fcs = _FCS_SIZES[fcs_flag] or (1 if single else 0)
    return 5 + (0 if single else 1) + _DID_SIZES[descriptor & 3] + fcs


def parse_frame_header(
    data: bytes | bytearray | memoryview, *, where: int, max_window: int
) -> FrameHeader | SkippableHeader:
    """The header of the frame starting `data` (which holds at least the whole
    header: see header_size_needed). `where` is its offset, for messages."""
    magic = read_magic(data, where)
    if is_skippable(magic):
        if len(data) < SKIPPABLE_HEADER:
            raise ArchiveError(f"the skippable frame at byte {where} is cut short")
        return SkippableHeader(magic, int(struct.unpack_from("<I", data, 4)[0]))
    if magic != ZSTD_MAGIC:
        raise ArchiveError(f"no zstd frame at byte {where} (magic {magic:#010x})")
    if len(data) < 5:
        raise ArchiveError(f"the zstd frame header at byte {where} is cut short")
    size = header_size_needed(data)
    if len(data) < size:
        raise ArchiveError(f"the zstd frame header at byte {where} is cut short")
    descriptor = data[4]
    fcs_flag = descriptor >> 6
    single = bool(descriptor & 0x20)
    if descriptor & 0x08:
        raise ArchiveError(f"the zstd frame at byte {where} sets a reserved header bit")
    did_size = _DID_SIZES[descriptor & 3]
    pos = 5
    window = 0
    if not single:
        wd = data[5]
        log = 10 + (wd >> 3)
        window = (1 << log) + ((1 << log) >> 3) * (wd & 7)
        pos = 6
    if did_size and int.from_bytes(data[pos : pos + did_size], "little"):
        raise ArchiveError(f"the zstd frame at byte {where} needs a dictionary; bundles use none")
    pos += did_size
    fcs_size = _FCS_SIZES[fcs_flag] or (1 if single else 0)
    content: int | None = None
    if fcs_size:
        content = int.from_bytes(data[pos : pos + fcs_size], "little")
        if fcs_size == 2:
            content += 256
    if single:
        assert content is not None
        window = content
    if window > max_window:
        raise ArchiveError(
            f"the zstd frame at byte {where} asks for a decompression window of "
            f"{window} bytes, more than the {max_window} allowed"
        )
    return FrameHeader(size, window, content, bool(descriptor & 0x04), single)


def parse_block_header(
    data: bytes | bytearray | memoryview, frame: FrameHeader, *, where: int
) -> BlockHeader:
    """The 3-byte block header at the start of `data`, checked against its frame."""
    value = int.from_bytes(data[:BLOCK_HEADER], "little")
    kind = (value >> 1) & 3
    size = value >> 3
    if kind == 3:
        raise ArchiveError(f"the zstd block at byte {where} has the reserved block type")
    if size > frame.block_limit:
        raise ArchiveError(
            f"the {_BLOCK_NAMES[kind]} zstd block at byte {where} declares {size} bytes, "
            f"more than its frame allows ({frame.block_limit})"
        )
    return BlockHeader(bool(value & 1), kind, size)


def encode_block_header(last: bool, kind: int, size: int) -> bytes:
    return ((size << 3) | (kind << 1) | int(last)).to_bytes(BLOCK_HEADER, "little")


def skippable_frame(magic: int, payload: bytes) -> bytes:
    return struct.pack("<II", magic, len(payload)) + payload


@dataclass(frozen=True)
class Block:
    offset: int  # of the block header, from the start of the walked buffer
    header: BlockHeader

    @property
    def payload_offset(self) -> int:
        return self.offset + BLOCK_HEADER


@dataclass(frozen=True)
class WalkedFrame:
    """One frame found by walk_frames: where it is and what its headers say."""

    offset: int
    size: int  # compressed bytes, headers and checksum included
    header: FrameHeader | SkippableHeader
    blocks: tuple[Block, ...] = ()

    @property
    def skippable(self) -> bool:
        return isinstance(self.header, SkippableHeader)

    @property
    def raw_only(self) -> bool:
        """Only raw and RLE blocks: the output is known without decoding."""
        return not self.skippable and all(b.header.kind != COMPRESSED for b in self.blocks)

    @property
    def known_output(self) -> int | None:
        """Decompressed bytes, when the headers alone say (raw and RLE blocks)."""
        if self.skippable:
            return 0
        if not self.raw_only:
            assert isinstance(self.header, FrameHeader)
            return self.header.content_size
        return sum(b.header.size for b in self.blocks)


def walk_frame(
    data: bytes | bytearray | memoryview, offset: int, *, max_window: int
) -> WalkedFrame:
    """The frame starting at `offset` of `data`, which must hold all of it."""
    view = memoryview(data)
    if len(view) - offset < 4:
        raise ArchiveError(f"a frame at byte {offset} is cut short")
    magic = read_magic(view[offset:], offset)
    if is_skippable(magic):
        header: FrameHeader | SkippableHeader = parse_frame_header(
            view[offset : offset + SKIPPABLE_HEADER], where=offset, max_window=max_window
        )
        end = offset + header.size
        if end > len(view):
            raise ArchiveError(f"the skippable frame at byte {offset} is cut short")
        return WalkedFrame(offset, header.size, header)
    header = parse_frame_header(
        view[offset : offset + MAX_FRAME_HEADER], where=offset, max_window=max_window
    )
    assert isinstance(header, FrameHeader)
    pos = offset + header.size
    blocks: list[Block] = []
    produced = 0
    while True:
        if len(view) - pos < BLOCK_HEADER:
            raise ArchiveError(f"the zstd frame at byte {offset} is cut short")
        block = parse_block_header(view[pos : pos + BLOCK_HEADER], header, where=pos)
        blocks.append(Block(pos, block))
        if block.output is not None:
            produced += block.output
            if header.content_size is not None and produced > header.content_size:
                raise ArchiveError(
                    f"the zstd frame at byte {offset} holds more than its declared "
                    f"{header.content_size} bytes"
                )
        pos += BLOCK_HEADER + block.payload
        if pos > len(view):
            raise ArchiveError(f"the zstd frame at byte {offset} is cut short")
        if block.last:
            break
    if header.checksum:
        pos += CHECKSUM
        if pos > len(view):
            raise ArchiveError(f"the zstd frame at byte {offset} is cut short")
    frame = WalkedFrame(offset, pos - offset, header, tuple(blocks))
    if frame.raw_only and header.content_size is not None and produced != header.content_size:
        raise ArchiveError(
            f"the zstd frame at byte {offset} holds {produced} bytes, "
            f"its header says {header.content_size}"
        )
    return frame


def walk_frames(data: bytes | bytearray | memoryview, *, max_window: int) -> list[WalkedFrame]:
    """Every frame of a buffer that holds whole frames, in order."""
    frames = []
    pos = 0
    while pos < len(data):
        frame = walk_frame(data, pos, max_window=max_window)
        frames.append(frame)
        pos += frame.size
    return frames


def raw_payload(data: bytes | bytearray | memoryview, frame: WalkedFrame) -> bytes:
    """The output of a frame of raw and RLE blocks, without a decoder."""
    if not frame.raw_only or frame.skippable:
        raise ValueError("only frames of raw and RLE blocks")
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    for block in frame.blocks:
        start = block.payload_offset
        if block.header.kind == RAW:
            parts.append(view[start : start + block.header.size])
        else:
            parts.append(bytes(view[start : start + 1]) * block.header.size)
    return b"".join(parts)
