"""The seek table of a bundle's content region, and where each member lies.

The table is zstd's seekable format (facebook/zstd,
contrib/seekable_format/zstd_seekable_compression_format.md): a skippable
frame, magic 0x184D2A5E, holding one entry per frame (u32 compressed size,
u32 decompressed size, no checksums) and a 9-byte footer (u32 number of
frames, descriptor byte 0, u32 0x8F92EAB1). One difference from that
convention: the frames it lists are those of the content region, which
starts after the bundle's header and prefix region (at 40 + P), not at
offset 0 of the file; the signed manifest says where the table is, so a
reader never has to guess.

Member offsets need no table of their own: the content's tar stream is the
manifest's members in order, each a 512-byte header, its bytes and zero
padding to 512, then the 1,024-byte end-of-archive marker. So the signed
member list gives each member's offset in the decompressed stream, and the
table maps that to the frame to start decoding at.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from airbundle.errors import ArchiveError
from airbundle.format.manifest import MemberEntry
from airbundle.format.tarstream import BLOCK, padding
from airbundle.limits import Limits

SEEK_TABLE_MAGIC = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1
_HEADER = struct.Struct("<II")
_ENTRY = struct.Struct("<II")
_FOOTER = struct.Struct("<IBI")
_CHECKSUM_FLAG = 0x80
_RESERVED_BITS = 0x7C
MAX_ENTRY_VALUE = 0xFFFFFFFF
# The smallest zstd frame: magic, descriptor, one window or size byte, one
# block header. A table entry below it cannot describe a frame.
MIN_FRAME_SIZE = 9
END_OF_ARCHIVE = 2 * BLOCK


def seek_table_size(frames: int) -> int:
    return _HEADER.size + frames * _ENTRY.size + _FOOTER.size


def encode_seek_table(entries: Sequence[tuple[int, int]]) -> bytes:
    """The seek table frame for (compressed, decompressed) sizes, in frame order."""
    body = bytearray()
    for compressed, decompressed in entries:
        if not (0 < compressed <= MAX_ENTRY_VALUE and 0 <= decompressed <= MAX_ENTRY_VALUE):
            raise ValueError(f"frame sizes {compressed}, {decompressed} do not fit a seek table")
        body += _ENTRY.pack(compressed, decompressed)
    body += _FOOTER.pack(len(entries), 0, SEEKABLE_MAGIC)
    return _HEADER.pack(SEEK_TABLE_MAGIC, len(body)) + bytes(body)


def parse_seek_table(data: bytes, *, source: str, limits: Limits) -> list[tuple[int, int]]:
    """The (compressed, decompressed) entries of a seek table frame, strictly."""
    where = f"{source}: seek table"
    if len(data) > limits.max_seek_table_bytes:
        raise ArchiveError(f"{where} is {len(data)} bytes, more than the allowed")
    if len(data) < _HEADER.size + _FOOTER.size:
        raise ArchiveError(f"{where} is too short ({len(data)} bytes)")
    magic, length = _HEADER.unpack_from(data, 0)
    if magic != SEEK_TABLE_MAGIC or length != len(data) - _HEADER.size:
        raise ArchiveError(f"{where}: not a seek table frame (magic {magic:#010x})")
    count, descriptor, footer_magic = _FOOTER.unpack_from(data, len(data) - _FOOTER.size)
    if footer_magic != SEEKABLE_MAGIC:
        raise ArchiveError(f"{where}: footer magic {footer_magic:#010x} is not the seekable magic")
    if descriptor & _CHECKSUM_FLAG:
        raise ArchiveError(f"{where} carries checksums; bundles' seek tables have none")
    if descriptor & _RESERVED_BITS:
        raise ArchiveError(f"{where} sets reserved descriptor bits ({descriptor:#04x})")
    if seek_table_size(count) != len(data):
        raise ArchiveError(
            f"{where} declares {count} frames but holds {len(data)} bytes "
            f"(expected {seek_table_size(count)})"
        )
    entries = [_ENTRY.unpack_from(data, _HEADER.size + k * _ENTRY.size) for k in range(count)]
    for k, (compressed, _) in enumerate(entries):
        if compressed < MIN_FRAME_SIZE:
            raise ArchiveError(f"{where}: frame {k} has an impossible size of {compressed} bytes")
    return [(int(c), int(d)) for c, d in entries]


# --- where things are -----------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    offset: int  # of the frame in the bundle file
    size: int  # compressed bytes
    start: int  # of its output in the content's tar stream
    length: int  # decompressed bytes

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class FrameMap:
    """The frames of a content region, found by tar offset."""

    frames: tuple[Frame, ...]
    starts: tuple[int, ...]  # frames[k].start, for bisection

    @classmethod
    def build(cls, content_offset: int, entries: Sequence[tuple[int, int]]) -> FrameMap:
        frames = []
        offset, start = content_offset, 0
        for size, length in entries:
            frames.append(Frame(offset, size, start, length))
            offset += size
            start += length
        return cls(tuple(frames), tuple(f.start for f in frames))

    @property
    def compressed_end(self) -> int:
        return self.frames[-1].offset + self.frames[-1].size if self.frames else 0

    @property
    def length(self) -> int:
        return self.frames[-1].end if self.frames else 0

    def index_at(self, tar_offset: int) -> int:
        """The frame whose output holds the byte at `tar_offset`."""
        if not 0 <= tar_offset < self.length:
            raise ValueError(f"tar offset {tar_offset} outside the content")
        # The last frame starting at or before the offset; an empty frame
        # shares its start with the next, so this one has output.
        return bisect.bisect_right(self.starts, tar_offset) - 1

    def starts_frame(self, tar_offset: int) -> bool:
        k = bisect.bisect_left(self.starts, tar_offset)
        return k < len(self.starts) and self.starts[k] == tar_offset


@dataclass(frozen=True)
class MemberPlace:
    """A content member and its place in the content's tar stream."""

    entry: MemberEntry
    header: int  # tar offset of its 512-byte header

    @property
    def data(self) -> int:
        return self.header + BLOCK

    @property
    def end(self) -> int:
        return self.data + self.entry.size

    @property
    def next(self) -> int:
        return self.end + padding(self.entry.size)


def member_places(members: Sequence[MemberEntry]) -> tuple[MemberPlace, ...]:
    places = []
    offset = 0
    for entry in members:
        place = MemberPlace(entry, offset)
        places.append(place)
        offset = place.next
    return tuple(places)


def content_length(members: Sequence[MemberEntry]) -> int:
    """Bytes of the content's tar stream: the members, then end-of-archive."""
    places = member_places(members)
    return (places[-1].next if places else 0) + END_OF_ARCHIVE


def check_layout(
    entries: Sequence[tuple[int, int]], members: Sequence[MemberEntry], *, source: str
) -> None:
    """A signed seek table must describe exactly the content its manifest lists,
    with each member's header at the start of a frame (so each decodes alone)."""
    expected = content_length(members)
    total = sum(d for _, d in entries)
    if total != expected:
        raise ArchiveError(
            f"{source}: the seek table's frames hold {total} bytes of tar stream, "
            f"the signed members need exactly {expected}"
        )
    frames = FrameMap.build(0, entries)
    for place in member_places(members):
        if not frames.starts_frame(place.header):
            raise ArchiveError(
                f"{source}: member {place.entry.path!r} does not start a zstd frame "
                f"(tar offset {place.header})"
            )


def plan_sections(places: Sequence[MemberPlace], parts: int) -> list[tuple[int, int]]:
    """Cut the members into contiguous sections of about 1/parts of the
    content each (a member larger than that alone), for readers that start at
    their own offsets; largest first, so that a pool of readers ends together
    (longest-processing-time order)."""
    if not places:
        return []
    total = places[-1].next
    target = max(1, total // max(1, parts))
    sections = []
    first = 0
    for i, place in enumerate(places):
        if i > first and place.next - places[first].header > target:
            sections.append((first, i))  # this member would overshoot: it starts the next
            first = i
        if place.next - places[first].header >= target:
            sections.append((first, i + 1))
            first = i + 1
    if first < len(places):
        sections.append((first, len(places)))
    return sorted(sections, key=lambda s: (places[s[0]].header - places[s[1] - 1].next, s[0]))
