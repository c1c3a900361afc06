"""The pure zstd frame walker, the seek table codec and the frame-by-frame decoder."""

from __future__ import annotations

import io
import struct

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airbundle.errors import ArchiveError, IntegrityError, TruncatedError
from airbundle.format.archive import raw_frame_into, raw_frame_size
from airbundle.format.digest import Digest
from airbundle.format.framestream import FrameStream
from airbundle.format.manifest import MemberEntry
from airbundle.format.seektable import (
    FrameMap,
    check_layout,
    content_length,
    encode_seek_table,
    member_places,
    parse_seek_table,
    seek_table_size,
)
from airbundle.format.zstdframes import (
    COMPRESSED,
    RAW,
    RLE,
    FrameHeader,
    SkippableHeader,
    encode_block_header,
    raw_payload,
    skippable_frame,
    walk_frame,
    walk_frames,
)
from airbundle.limits import DEFAULT_LIMITS, Limits

WINDOW = DEFAULT_LIMITS.max_zstd_window_bytes
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Data zstd compresses in interesting ways: runs, text, noise.
payloads = st.one_of(
    st.binary(max_size=3000),
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=4), st.integers(0, 300_000)),
    st.builds(lambda n: b"text line %d\n" * n, st.integers(0, 30_000)),
)


def raw_frame(data: bytes) -> bytes:
    buf = bytearray(raw_frame_size(len(data)))
    return bytes(buf[: raw_frame_into(buf, data)])


def rle_frame(byte: int, size: int) -> bytes:
    """A frame of RLE blocks, as zstd writes for runs, built by hand."""
    out = bytearray(b"\x28\xb5\x2f\xfd" + struct.pack("<BI", 0xA0, size))
    left = size
    while True:
        n = min(left, 128 * 1024)
        left -= n
        out += encode_block_header(left == 0, RLE, n) + bytes([byte])
        if left == 0:
            return bytes(out)


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, bytes | None, str]:
    """One frame: (bytes, its output or None for a skippable frame, kind)."""
    kind = draw(st.sampled_from(["zstd", "zstd-stream", "raw", "rle", "skippable"]))
    if kind == "skippable":
        magic = draw(st.integers(0x184D2A50, 0x184D2A5F))
        return skippable_frame(magic, draw(st.binary(max_size=64))), None, kind
    if kind == "rle":
        size = draw(st.integers(0, 400_000))
        return rle_frame(7, size), bytes([7]) * size, kind
    data = draw(payloads)
    if kind == "raw":
        return raw_frame(data), data, kind
    level = draw(st.sampled_from([-5, 1, 3, 9]))
    checksum = draw(st.booleans())
    compressor = zstandard.ZstdCompressor(
        level=level, write_checksum=checksum, write_content_size=kind == "zstd"
    )
    if kind == "zstd":
        return compressor.compress(data), data, kind
    out = io.BytesIO()
    with compressor.stream_writer(out, closefd=False) as writer:  # no content size
        writer.write(data)
    return out.getvalue(), data, kind


# --- the walker -------------------------------------------------------------------------


@FUZZ
@given(st.lists(frames(), min_size=1, max_size=5))
def test_walker_finds_every_frame_zstd_writes(parts: list[tuple[bytes, bytes | None, str]]) -> None:
    stream = b"".join(f for f, _, _ in parts)
    walked = walk_frames(stream, max_window=WINDOW)
    assert [w.size for w in walked] == [len(f) for f, _, _ in parts]
    offset = 0
    for w, (frame, output, _kind) in zip(walked, parts, strict=True):
        assert w.offset == offset
        offset += w.size
        if output is None:
            assert w.skippable and isinstance(w.header, SkippableHeader)
            continue
        assert isinstance(w.header, FrameHeader)
        params = zstandard.get_frame_parameters(frame)
        assert w.header.checksum == bool(params.has_checksum)
        if params.content_size != zstandard.CONTENTSIZE_UNKNOWN:
            assert w.header.content_size == params.content_size
        if w.raw_only:
            assert w.known_output == len(output)
            if not w.header.checksum:
                assert raw_payload(stream, w) == output
        # The frame on its own decodes to its output: the boundaries are right.
        got = zstandard.ZstdDecompressor().decompressobj().decompress(stream[w.offset : offset])
        assert got == output


def test_a_raw_frame_walks_as_raw_blocks_of_at_most_128_kib() -> None:
    data = bytes(range(256)) * 1500  # 384,000 bytes: three blocks
    frame = raw_frame(data)
    walked = walk_frame(frame, 0, max_window=WINDOW)
    assert walked.size == len(frame)
    assert [b.header.kind for b in walked.blocks] == [RAW, RAW, RAW]
    assert [b.header.size for b in walked.blocks] == [131072, 131072, 384000 - 262144]
    assert [b.header.last for b in walked.blocks] == [False, False, True]
    assert walked.raw_only and walked.known_output == len(data)


def test_a_compressed_frame_has_compressed_blocks_and_unknown_output_until_decoded() -> None:
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(b"abc" * 100_000)
    walked = walk_frame(frame, 0, max_window=WINDOW)
    assert COMPRESSED in [b.header.kind for b in walked.blocks]
    assert not walked.raw_only and walked.known_output is None


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"\x28\xb5\x2f", r"cut short"),
        (b"\x28\xb5\x2f\xfd", r"header at byte 0 is cut short"),
        (b"GIF89a\0\0\0\0", r"no zstd frame at byte 0 \(magic 0x38464947\)"),
        (b"\x28\xb5\x2f\xfd\x08\x00\x00\x00\x00", r"reserved header bit"),
        (b"\x28\xb5\x2f\xfd\x01\x00\x07\x00\x00\x00", r"needs a dictionary"),
        (b"\x28\xb5\x2f\xfd\x00\xa8\x01\x00\x00", r"window of 2147483648 bytes"),
        (b"\x28\xb5\x2f\xfd\x20\x04" + encode_block_header(True, RAW, 5) + b"abcde", r"more than"),
        (b"\x28\xb5\x2f\xfd\x20\x04" + bytes([0x07, 0, 0]), r"reserved block type"),
        (b"\x28\xb5\x2f\xfd\x20\x04" + encode_block_header(True, RAW, 4) + b"ab", r"cut short"),
        (b"\x28\xb5\x2f\xfd\x24\x04" + encode_block_header(True, RAW, 4) + b"abcd", r"cut short"),
        (b"\x28\xb5\x2f\xfd\x20\x04" + encode_block_header(True, RAW, 3) + b"abc", r"holds 3 "),
        (struct.pack("<II", 0x184D2A50, 10) + b"abc", r"skippable frame at byte 0 is cut short"),
    ],
    ids=[
        "no-magic",
        "no-descriptor",
        "not-zstd",
        "reserved-bit",
        "dictionary",
        "huge-window",
        "block-over-content",
        "reserved-block",
        "cut-block",
        "cut-checksum",
        "short-content",
        "cut-skippable",
    ],
)
def test_walker_refuses_malformed_frames(frame: bytes, message: str) -> None:
    with pytest.raises(ArchiveError, match=message):
        walk_frames(frame, max_window=1 << 27)


def test_a_block_larger_than_the_window_is_refused() -> None:
    # Window 1 KiB (exponent 0): a 2 KiB raw block cannot be in such a frame.
    frame = b"\x28\xb5\x2f\xfd\x00\x00" + encode_block_header(True, RAW, 2048) + b"x" * 2048
    with pytest.raises(ArchiveError, match=r"declares 2048 bytes, more than its frame allows"):
        walk_frames(frame, max_window=WINDOW)


@FUZZ
@given(st.binary(max_size=400))
def test_walker_raises_only_archive_errors_on_garbage(data: bytes) -> None:
    try:
        walked = walk_frames(data, max_window=WINDOW)
    except ArchiveError as exc:
        assert exc.message
        return
    assert sum(w.size for w in walked) == len(data)


@FUZZ
@given(st.lists(frames(), min_size=1, max_size=3), st.data())
def test_walker_on_mutated_frames_raises_only_archive_errors(
    parts: list[tuple[bytes, bytes | None, str]], data: st.DataObject
) -> None:
    stream = bytearray(b"".join(f for f, _, _ in parts))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(stream) - 1))
        stream[pos] = data.draw(st.integers(0, 255))
    try:
        walked = walk_frames(bytes(stream), max_window=WINDOW)
    except ArchiveError:
        return
    assert sum(w.size for w in walked) == len(stream)


# --- the seek table ------------------------------------------------------------------------

entries_lists = st.lists(
    st.tuples(st.integers(9, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF)), max_size=50
)


@FUZZ
@given(entries_lists)
def test_seek_table_round_trip(entries: list[tuple[int, int]]) -> None:
    table = encode_seek_table(entries)
    assert len(table) == seek_table_size(len(entries))
    assert table[:4] == struct.pack("<I", 0x184D2A5E)
    assert table[-4:] == struct.pack("<I", 0x8F92EAB1)
    assert parse_seek_table(table, source="t", limits=DEFAULT_LIMITS) == entries
    # It is a skippable frame: zstd skips it and sees no data.
    assert walk_frames(table, max_window=WINDOW)[0].skippable
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(table)).read() == b""


def test_seek_table_layout_matches_the_zstd_seekable_format() -> None:
    table = encode_seek_table([(100, 4096), (20, 0)])
    assert table == (
        struct.pack("<II", 0x184D2A5E, 2 * 8 + 9)
        + struct.pack("<II", 100, 4096)
        + struct.pack("<II", 20, 0)
        + struct.pack("<IBI", 2, 0, 0x8F92EAB1)
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t[:4] + b"\0" * 4 + t[8:], r"not a seek table frame"),
        (lambda t: struct.pack("<I", 0x184D2A50) + t[4:], r"not a seek table frame"),
        (lambda t: t[:-4] + b"\0\0\0\0", r"not the seekable magic"),
        (lambda t: t[:-5] + b"\x80" + t[-4:], r"carries checksums"),
        (lambda t: t[:-5] + b"\x04" + t[-4:], r"reserved descriptor bits"),
        (lambda t: t[:-9] + struct.pack("<I", 3) + t[-5:], r"declares 3 frames but holds"),
        (lambda t: t[:8] + struct.pack("<I", 8) + t[12:], r"impossible size of 8 bytes"),
        (lambda t: t[:10], r"too short"),
    ],
    ids=[
        "size",
        "magic",
        "footer-magic",
        "checksums",
        "reserved",
        "count",
        "tiny-frame",
        "short",
    ],
)
def test_seek_table_parser_refuses(change: object, message: str) -> None:
    table = encode_seek_table([(100, 4096), (20, 0)])
    with pytest.raises(ArchiveError, match=message):
        parse_seek_table(change(table), source="t", limits=DEFAULT_LIMITS)  # type: ignore[operator]


def test_seek_table_size_limit_comes_from_limits() -> None:
    table = encode_seek_table([(100, 4096)] * 10)
    with pytest.raises(ArchiveError, match=r"more than the allowed"):
        parse_seek_table(table, source="t", limits=Limits(max_seek_table_bytes=50))


@FUZZ
@given(st.binary(max_size=200))
def test_seek_table_parser_raises_only_archive_errors(data: bytes) -> None:
    try:
        entries = parse_seek_table(data, source="t", limits=DEFAULT_LIMITS)
    except ArchiveError as exc:
        assert exc.message
        return
    # Only the descriptor's unused bits (0 and 1) may differ from what we write.
    assert encode_seek_table(entries) == data[:-5] + b"\0" + data[-4:]


# --- where members lie ---------------------------------------------------------------------


def entry(path: str, size: int) -> MemberEntry:
    return MemberEntry(path, size, Digest("sha256", "0" * 64))


def test_member_places_follow_the_tar_stream() -> None:
    members = [entry("a", 0), entry("b", 1), entry("c", 512), entry("d", 513)]
    places = member_places(members)
    assert [p.header for p in places] == [0, 512, 1536, 2560]
    assert [p.data for p in places] == [512, 1024, 2048, 3072]
    assert places[-1].next == 3072 + 1024
    assert content_length(members) == 4096 + 1024
    assert content_length([]) == 1024


def test_frame_map_finds_the_frame_of_any_offset() -> None:
    frames = FrameMap.build(1000, [(10, 512), (20, 0), (30, 1024), (5, 1)])
    assert [f.offset for f in frames.frames] == [1000, 1010, 1030, 1060]
    assert [frames.index_at(t) for t in (0, 511, 512, 1535, 1536)] == [0, 0, 2, 2, 3]
    assert frames.starts_frame(512) and not frames.starts_frame(100)
    with pytest.raises(ValueError, match="outside"):
        frames.index_at(1537)


def test_check_layout_wants_each_member_at_a_frame_start() -> None:
    members = [entry("a", 10), entry("b", 600)]
    check_layout([(50, 1024), (60, 512 + 1024), (12, 1024)], members, source="s")
    with pytest.raises(ArchiveError, match=r"member 'b' does not start a zstd frame"):
        check_layout([(50, 1536), (60, 1024), (12, 1024)], members, source="s")
    with pytest.raises(ArchiveError, match=r"hold 3072 bytes of tar stream, the signed members"):
        check_layout([(50, 1024), (60, 1024), (12, 1024)], members, source="s")


# --- decoding frame by frame ------------------------------------------------------------


def decode_all(stream: bytes, **kwargs: object) -> tuple[bytes, list[int]]:
    frames_read = FrameStream(
        io.BytesIO(stream),
        start=0,
        limits=DEFAULT_LIMITS,
        source="s",
        **kwargs,  # type: ignore[arg-type]
    )
    out = []
    while chunk := frames_read.read(100_000):
        out.append(chunk)
    return b"".join(out), list(frames_read.frames)


@FUZZ
@given(st.lists(frames().filter(lambda f: f[1] is not None), min_size=1, max_size=4))
def test_frame_stream_gives_what_zstd_gives_and_each_frame_size(
    parts: list[tuple[bytes, bytes | None, str]],
) -> None:
    stream = b"".join(f for f, _, _ in parts)
    out, sizes = decode_all(stream)
    assert out == b"".join(o for _, o, _ in parts if o is not None)
    assert sizes == [n for f, o, _ in parts for n in (len(f), len(o or b""))]


@pytest.mark.parametrize("buffer", [0, 1 << 20])
def test_both_decoding_paths_agree(buffer: int) -> None:
    data = b"abc" * 400_000 + bytes(range(256)) * 100
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(data)
    small = Limits(max_frame_buffer_bytes=buffer)
    stream = FrameStream(io.BytesIO(frame), start=0, limits=small, source="s")
    got = b"".join(iter(lambda: stream.read(65536), b""))
    assert got == data


def test_frame_stream_refuses_a_skippable_frame_where_none_is_declared() -> None:
    stream = raw_frame(b"abc") + skippable_frame(0x184D2A5E, b"\0" * 9) + raw_frame(b"d")
    with pytest.raises(ArchiveError, match=r"s: skippable frame .* at byte 15 in the content"):
        decode_all(stream)


def test_frame_stream_refuses_a_frame_cut_short() -> None:
    frame = zstandard.ZstdCompressor().compress(b"x" * 5000)
    with pytest.raises(TruncatedError, match=r"^s: the bundle ends early"):
        decode_all(frame[:-2])


def test_frame_stream_checks_frames_against_the_expected_table() -> None:
    a, b = raw_frame(b"abc"), raw_frame(b"defg")
    assert decode_all(a + b, expected=[(len(a), 3), (len(b), 4)])[0] == b"abcdefg"
    with pytest.raises(ArchiveError, match=r"is not the one the seek table lists there"):
        decode_all(a + b, expected=[(len(a), 3), (len(b), 5)])


@FUZZ
@given(st.lists(frames(), min_size=1, max_size=3), st.data())
def test_frame_stream_raises_only_integrity_errors(
    parts: list[tuple[bytes, bytes | None, str]], data: st.DataObject
) -> None:
    stream = bytearray(b"".join(f for f, _, _ in parts))
    for _ in range(data.draw(st.integers(0, 3))):
        pos = data.draw(st.integers(0, len(stream) - 1))
        stream[pos] = data.draw(st.integers(0, 255))
    try:
        decode_all(bytes(stream))
    except IntegrityError as exc:
        assert exc.message.startswith("s: ")
