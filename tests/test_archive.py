"""The pure archive code: the strict tar codec and the zstd bundle container."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from airbundle.errors import (
    AirbundleError,
    ArchiveError,
    IntegrityError,
    MemberDigestError,
    SignatureError,
    SourceError,
    TruncatedError,
)
from airbundle.format import sshsig
from airbundle.format.archive import (
    HEADER_SIZE,
    MANIFEST_PATH,
    RAW_MEMBER_MIN,
    BundleReader,
    BundleWriter,
    Prefix,
    encode_prefix,
    parse_file_header,
    prefix_upper_bound,
    raw_frame_into,
    raw_frame_size,
    rewrite_prefix,
    signature_path,
)
from airbundle.format.digest import Digest
from airbundle.format.manifest import SEEK_TABLE_DRAFT, MemberEntry, SeekTableRef
from airbundle.format.tarstream import (
    BLOCK,
    DIRECTORY,
    MAX_TRAILING_ZEROS,
    REGULAR,
    TarReader,
    decode_header,
    encode_header,
    padding,
)
from airbundle.format.trust import TrustPolicy, parse_trust_file
from airbundle.format.zstdframes import walk_frames
from airbundle.limits import DEFAULT_LIMITS, Limits
from airbundle.ops.verify import authenticate, stream_members, verify_bundle
from support.crafting import (
    END_OF_ARCHIVE,
    EPOCH,
    NOW,
    World,
    blob,
    content_start,
    make_manifest,
    prefix_tar,
    raw_bundle,
    raw_header,
    read_prefix,
    sign,
    signed_bundle,
    small_members,
    stream_all,
    tar_bytes,
    with_checksum,
    world,
)
from support.env import require_tool

MAX_PATH = DEFAULT_LIMITS.max_path_length
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> World:
    return world(tmp_path_factory)


def decode(block: bytes) -> object:
    return decode_header(block, 0, max_path_length=MAX_PATH)


def read_everything(stream: bytes, chunk: int = 300) -> list[tuple[str, str, bytes]]:
    reader = TarReader(io.BytesIO(stream))
    out = []
    while (member := reader.next()) is not None:
        out.append((member.path, member.kind, b"".join(reader.iter_data(chunk))))
    return out


# --- tarstream: encoding ---------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "size", "kind"),
    [
        ("a", 0, REGULAR),
        ("images/blobs/sha256/" + "ab" * 32, 511, REGULAR),
        ("repos/x.bundle", 512, REGULAR),
        ("dir/with.dots_and-dashes", 513, REGULAR),
        ("ünïcode/名前.txt", 7, REGULAR),
        ("images", 0, DIRECTORY),
        ("images/blobs/", 0, DIRECTORY),
    ],
)
def test_header_round_trip(path: str, size: int, kind: str) -> None:
    header = encode_header(path, size, kind=kind, mtime=EPOCH)
    assert len(header) == BLOCK
    assert header == encode_header(path, size, kind=kind, mtime=EPOCH)  # deterministic
    member = decode_header(header, 4096, max_path_length=MAX_PATH)
    assert member.path == path.rstrip("/")
    assert member.size == size
    assert member.kind == kind
    assert member.offset == 4096
    # An independent reader sees the same member.
    info = tarfile.TarInfo.frombuf(header, "utf-8", "strict")
    assert info.name == path.rstrip("/")
    assert info.size == size
    assert info.isdir() == (kind == DIRECTORY)
    assert info.mtime == EPOCH


@pytest.mark.parametrize("size", [8 << 30, (8 << 30) + 1, 1 << 40, (1 << 63) - 1])
def test_sizes_beyond_octal_use_base_256(size: int) -> None:
    header = encode_header("images/huge", size)
    assert header[124] == 0x80  # the base-256 marker, not an octal digit
    assert decode(header).size == size  # type: ignore[attr-defined]
    assert tarfile.TarInfo.frombuf(header, "utf-8", "strict").size == size


def test_largest_octal_size_stays_octal() -> None:
    size = 0o77777777777  # 8 GiB - 1
    header = encode_header("images/big", size)
    assert header[124:136] == b"77777777777\0"
    assert decode(header).size == size  # type: ignore[attr-defined]


def test_negative_base_256_size_is_refused() -> None:
    header = bytearray(encode_header("images/neg", 0))
    header[124:136] = b"\xff" * 12  # base-256 with the sign bit: -1
    with pytest.raises(ArchiveError, match=r"'images/neg'.*negative or malformed base-256 size"):
        decode(with_checksum(header))


def test_long_names_are_split_into_the_ustar_prefix() -> None:
    folder = "/".join(["d" * 40] * 3)  # 122 bytes
    path = f"{folder}/{'n' * 90}"  # 213 bytes: more than the 100 of the name field
    header = encode_header(path, 10)
    assert header[0:100].rstrip(b"\0") == b"n" * 90
    assert header[345:500].rstrip(b"\0") == folder.encode()
    assert decode(header).path == path  # type: ignore[attr-defined]
    assert tarfile.TarInfo.frombuf(header, "utf-8", "strict").name == path


def test_name_that_cannot_be_split_is_refused_by_the_writer() -> None:
    with pytest.raises(ValueError, match="too long for ustar"):
        encode_header("x" * 101, 1)  # no slash to split at
    with pytest.raises(ValueError, match="too long for ustar"):
        encode_header("p" * 156 + "/" + "n" * 10, 1)  # prefix longer than 155


def test_negative_size_is_refused_by_the_writer() -> None:
    with pytest.raises(ValueError, match="negative member size"):
        encode_header("a", -1)


# --- tarstream: what the reader refuses ---------------------------------------------


def _tampered_checksum() -> bytes:
    header = bytearray(encode_header("images/blob", 5))
    header[0] = ord("I")  # the stored checksum no longer matches
    return bytes(header)


def _folder_with_size() -> bytes:
    header = bytearray(encode_header("images/dir", 0, kind=DIRECTORY))
    header[124:136] = b"00000000005\0"
    return with_checksum(header)


def _size_not_octal() -> bytes:
    header = bytearray(raw_header(b"oct"))
    header[124:136] = b"0000000009\0\0"
    return with_checksum(header)


def _folder_without_slash() -> bytes:
    return raw_header(b"images/dir", 0, b"5")


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (raw_header(b"link", typeflag=b"2"), r"'link' at offset 0 is a symbolic link"),
        (raw_header(b"hard", typeflag=b"1"), r"'hard' at offset 0 is a hard link"),
        (raw_header(b"tty", typeflag=b"3"), r"'tty' at offset 0 is a character device"),
        (raw_header(b"sda", typeflag=b"4"), r"'sda' at offset 0 is a block device"),
        (raw_header(b"pipe", typeflag=b"6"), r"'pipe' at offset 0 is a FIFO"),
        (raw_header(b"pax", typeflag=b"x"), r"'pax' at offset 0 is a PAX extended header"),
        (raw_header(b"glob", typeflag=b"g"), r"'glob' at offset 0 is a PAX global header"),
        (raw_header(b"long", typeflag=b"L"), r"'long' at offset 0 is a GNU long name header"),
        (raw_header(b"lnk", typeflag=b"K"), r"'lnk' at offset 0 is a GNU long link header"),
        (raw_header(b"odd", typeflag=b"Z"), r"'odd' at offset 0 is an unknown member type b'Z'"),
        (_tampered_checksum(), r"'Images/blob' at offset 0: header checksum mismatch"),
        (
            raw_header(b"gnu", magic=b"ustar  \0"),
            r"'gnu' at offset 0: not a POSIX ustar header \(magic b'ustar  \\x00'\)",
        ),
        (raw_header(b"v7", magic=b"\0" * 8), r"'v7' at offset 0: not a POSIX ustar header"),
        (raw_header(b"../x"), r"unsafe member path '\.\./x': it has an empty, '\.' or '\.\.'"),
        (raw_header(b"/abs"), r"unsafe member path '/abs': it is absolute"),
        (raw_header(b"a/../../x"), r"unsafe member path 'a/\.\./\.\./x': it has an empty"),
        (raw_header(b"a/./b"), r"unsafe member path 'a/\./b': it has an empty"),
        (raw_header(b"a//b"), r"unsafe member path 'a//b': it has an empty"),
        (raw_header(b"..", prefix=b"a"), r"unsafe member path 'a/\.\.': it has an empty"),
        (raw_header(b"a\\b"), r"unsafe member path 'a\\\\b': it contains a backslash"),
        (raw_header(b"a\x01b"), r"unsafe member path 'a\\x01b': it contains control characters"),
        (raw_header(b"a\nb"), r"unsafe member path 'a\\nb': it contains control characters"),
        (raw_header(b"a\x7fb"), r"unsafe member path 'a\\x7fb': it contains control"),
        (raw_header(b"\xff\xfename"), r"'\\\\xff\\\\xfename' at offset 0: name is not valid UTF-8"),
        (raw_header(b""), r"unsafe member path '': it is empty"),
        (_folder_with_size(), r"'images/dir/' at offset 0: folder with non-zero size 5"),
        (_folder_without_slash(), r"'images/dir' at offset 0: folder name must end with '/'"),
        (_size_not_octal(), r"'oct' at offset 0: size field is not octal"),
    ],
    ids=lambda value: value.split(":")[-1][:40] if isinstance(value, str) else "block",
)
def test_decode_rejects(block: bytes, message: str) -> None:
    """Each refusal names the member (as stored) and says what is wrong with it."""
    assert len(block) == BLOCK
    with pytest.raises(ArchiveError, match=message):
        decode(block)


def test_path_longer_than_the_limit_is_refused() -> None:
    path = "/".join(["d" * 50] * 3) + "/" + "n" * 100  # 253 bytes: near the ustar maximum
    header = encode_header(path, 1)
    with pytest.raises(
        ArchiveError, match=r"unsafe member path 'd{50}/.*n{100}': it is longer than 200 char"
    ):
        decode_header(header, 0, max_path_length=200)
    assert decode_header(header, 0, max_path_length=253).path == path


# --- TarReader ------------------------------------------------------------------


MEMBERS = [("a", b"x" * 700), ("b/c", b""), ("b/d", b"y" * 512), ("e", b"z")]


def test_reader_walks_members_and_data() -> None:
    stream = tar_bytes(MEMBERS)
    assert read_everything(stream) == [(p, REGULAR, d) for p, d in MEMBERS]
    # Skipping data without reading it works as well.
    reader = TarReader(io.BytesIO(stream))
    names = []
    while (member := reader.next()) is not None:
        names.append(member.path)
    assert names == [p for p, _ in MEMBERS]
    assert reader.offset == len(stream)
    assert reader.next() is None  # stays ended


def test_reader_reads_folders() -> None:
    stream = encode_header("images", 0, kind=DIRECTORY) + tar_bytes([("images/x", b"1")])
    assert read_everything(stream) == [("images", DIRECTORY, b""), ("images/x", REGULAR, b"1")]


def test_read_data_never_returns_more_than_declared() -> None:
    reader = TarReader(io.BytesIO(tar_bytes([("a", b"12345")])))
    assert reader.next() is not None
    assert reader.read_data(1 << 20) == b"12345"
    assert reader.read_data(1 << 20) == b""


@pytest.mark.parametrize("keep", [512 + 1, 512 + 699, 1024 + 700])
def test_truncated_member_data_raises_truncated_error(keep: int) -> None:
    stream = tar_bytes(MEMBERS)[:keep]
    with pytest.raises(TruncatedError, match=r"bundle ends early"):
        read_everything(stream)


def test_truncated_inside_member_names_the_member() -> None:
    stream = tar_bytes(MEMBERS)[: 512 + 100]
    reader = TarReader(io.BytesIO(stream))
    assert reader.next() is not None
    with pytest.raises(TruncatedError, match=r"inside member 'a' \(600 bytes missing"):
        b"".join(reader.iter_data(1000))


def test_truncated_padding_names_the_member() -> None:
    stream = tar_bytes(MEMBERS)[: 512 + 700 + 10]
    reader = TarReader(io.BytesIO(stream))
    assert reader.next() is not None
    with pytest.raises(TruncatedError, match=r"the padding of member 'a' stops after 10 of 324"):
        b"".join(reader.iter_data(1000))


def test_truncated_header_raises_truncated_error() -> None:
    stream = tar_bytes([("a", b"1")])[: BLOCK + BLOCK + 100]
    with pytest.raises(TruncatedError, match=r"a tar header stops after 100 of 512 bytes"):
        read_everything(stream)


def test_missing_end_of_archive_raises_truncated_error() -> None:
    stream = tar_bytes([("a", b"1")], end=False)
    with pytest.raises(TruncatedError, match=r"a tar header stops after 0 of 512 bytes"):
        read_everything(stream)


def test_half_end_of_archive_raises_truncated_error() -> None:
    stream = tar_bytes([("a", b"1")], end=False) + b"\0" * BLOCK
    with pytest.raises(TruncatedError, match=r"end-of-archive marker stops after 0 of 512"):
        read_everything(stream)


def test_nonzero_padding_is_refused() -> None:
    stream = bytearray(tar_bytes([("a", b"12345"), ("b", b"")]))
    stream[BLOCK + 5 + 3] = 1  # inside the padding after a's 5 bytes
    with pytest.raises(ArchiveError, match=r"member 'a': non-zero padding after its data"):
        read_everything(bytes(stream))


def test_nonzero_padding_is_refused_when_data_is_skipped() -> None:
    stream = bytearray(tar_bytes([("a", b"12345"), ("b", b"")]))
    stream[2 * BLOCK - 1] = 0x20
    reader = TarReader(io.BytesIO(bytes(stream)))
    assert reader.next() is not None
    with pytest.raises(ArchiveError, match=r"member 'a': non-zero padding"):
        reader.next()


def test_malformed_end_of_archive_is_refused() -> None:
    stream = tar_bytes([("a", b"1")], end=False) + b"\0" * BLOCK + b"\1" + b"\0" * (BLOCK - 1)
    with pytest.raises(ArchiveError, match=r"malformed end-of-archive marker at offset 1024"):
        read_everything(stream)


@pytest.mark.parametrize("extra", [b"\x01", b"\0" * 600 + b"junk", encode_header("late", 0)])
def test_data_after_end_of_archive_is_refused(extra: bytes) -> None:
    stream = tar_bytes([("a", b"1")]) + extra
    with pytest.raises(ArchiveError, match=r"unexpected data after the tar end-of-archive marker"):
        read_everything(stream)


@pytest.mark.parametrize("zeros", [1, 511, 10240 - 3 * BLOCK, MAX_TRAILING_ZEROS])
def test_trailing_zero_padding_is_accepted(zeros: int) -> None:
    stream = tar_bytes([("a", b"1")]) + b"\0" * zeros
    assert read_everything(stream) == [("a", REGULAR, b"1")]


def test_more_than_a_mebibyte_of_trailing_zeros_is_refused() -> None:
    stream = tar_bytes([("a", b"1")]) + b"\0" * (MAX_TRAILING_ZEROS + (1 << 16))
    with pytest.raises(ArchiveError, match=r"more than 1 MiB of padding after the end"):
        read_everything(stream)


def test_python_tarfile_output_with_record_padding_is_accepted() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in MEMBERS:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    assert len(buf.getvalue()) % 10240 == 0
    assert read_everything(buf.getvalue()) == [(p, REGULAR, d) for p, d in MEMBERS]


# --- hypothesis: the tar reader fails only with our errors ------------------------

TYPEFLAGS = [b"0", b"\0", b"5", b"1", b"2", b"3", b"4", b"6", b"7", b"x", b"g", b"L", b"K", b"Z"]
NAMES = [b"a", b"dir/", b"../x", b"/abs", b"a\\b", b"a\x00b", b"\xff", b"", b"a" * 100]


@st.composite
def tar_streams(draw: st.DrawFn) -> bytes:
    """Tar streams close to valid: real headers with a few fields or bytes wrong."""
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.one_of(st.sampled_from(NAMES), st.binary(min_size=1, max_size=100)))
        size = draw(st.integers(0, 1500))
        header = bytearray(
            raw_header(
                name, size, draw(st.sampled_from(TYPEFLAGS)), prefix=draw(st.binary(max_size=3))
            )
        )
        for _ in range(draw(st.integers(0, 2))):
            header[draw(st.integers(0, BLOCK - 1))] = draw(st.integers(0, 255))
        if draw(st.booleans()):
            header = bytearray(with_checksum(header))
        if draw(st.booleans()):
            header[124] = 0x80  # a base-256 size
        parts.append(bytes(header))
        length = draw(st.sampled_from([size + padding(size), size, size // 2, size + 512]))
        filler = draw(st.sampled_from([b"\0", b"\1", b"d"]))
        parts.append(filler * length)
    if draw(st.booleans()):
        parts.append(END_OF_ARCHIVE)
    parts.append(draw(st.sampled_from([b"", b"\0" * 512, b"\1"])))
    return b"".join(parts)


@FUZZ
@given(st.one_of(st.binary(max_size=3000), tar_streams()))
@example(tar_bytes(MEMBERS))
@example(b"\0" * 1024)
def test_tar_reader_raises_only_integrity_errors(stream: bytes) -> None:
    try:
        members = read_everything(stream, chunk=97)
    except (ArchiveError, TruncatedError) as exc:
        assert isinstance(exc, IntegrityError)
        assert exc.message
        return
    # When it ends cleanly, everything it handed out was well-formed.
    for path, kind, data in members:
        assert kind in (REGULAR, DIRECTORY)
        assert path and not path.startswith("/") and ".." not in path.split("/")
        assert kind == REGULAR or data == b""


# --- archive: writer and reader -------------------------------------------------------


# What each bundle write_in_memory made holds, for reading it back without a
# manifest to parse (the manifests here are opaque bytes).
TABLES: dict[bytes, tuple[SeekTableRef, tuple[MemberEntry, ...]]] = {}


def write_in_memory(
    members: list[tuple[str, bytes]], manifest: bytes, signatures: list[bytes], **kwargs: object
) -> tuple[bytes, list[tuple[str, int, Digest]]]:
    out = io.BytesIO()
    capacity = prefix_upper_bound(len(manifest), max(len(signatures), 1), 1024)
    writer = BundleWriter(out, prefix_capacity=capacity, mtime=EPOCH, **kwargs)  # type: ignore[arg-type]
    written = [writer.add_bytes(path, data) for path, data in members]
    table = writer.end_content()
    writer.finish(manifest, signatures)
    raw = out.getvalue()
    TABLES[raw] = (table, tuple(MemberEntry(w.path, w.size, w.sha256) for w in written))
    return raw, [(w.path, w.size, w.sha256) for w in written]


def reader_for(raw: bytes, source: str = "mem") -> BundleReader:
    """A reader of a bundle written here, told what its content is once the
    prefix is read (as stream_members does after authentication)."""
    return _Told(io.BytesIO(raw), source=source, told=TABLES.get(raw))


class _Told(BundleReader):
    def __init__(
        self,
        raw: io.BytesIO,
        *,
        source: str,
        told: tuple[SeekTableRef, tuple[MemberEntry, ...]] | None,
    ) -> None:
        super().__init__(raw, source=source)
        self._told = told

    def read_prefix(self) -> Prefix:
        prefix = super().read_prefix()
        if self._told is not None:
            self.expect_content(self._told[1], self._told[0])
        return prefix


def test_bundle_round_trip_in_memory() -> None:
    members = [*small_members(), ("repos/r.bundle", b"# v2 git bundle\n" + b"\x00\xff" * 3000)]
    manifest, sigs = b'{"not": "parsed by the archive layer"}\n', [b"sig one\n", b"sig two\n"]
    raw, written = write_in_memory(members, manifest, sigs)
    assert written == [(p, len(d), Digest.sha256_of(d)) for p, d in members]
    capacity = parse_file_header(raw, source="mem")
    assert raw[content_start(raw) : content_start(raw) + 4] == b"\x28\xb5\x2f\xfd"

    reader = reader_for(raw)
    assert reader.prefix_length == capacity
    prefix = reader.read_prefix()
    assert prefix.manifest == manifest
    assert prefix.signatures == ((signature_path(0), sigs[0]), (signature_path(1), sigs[1]))
    got = []
    while (member := reader.next_member()) is not None:
        assert member.kind == REGULAR
        got.append((member.path, b"".join(reader.iter_data())))
    assert got == members
    assert reader.next_member() is None


def test_bundle_writer_output_is_deterministic() -> None:
    members = small_members()
    first, _ = write_in_memory(members, b"m", [b"s"], threads=1)
    again, _ = write_in_memory(members, b"m", [b"s"], threads=1)
    threaded, _ = write_in_memory(members, b"m", [b"s"], threads=4)
    assert first == again == threaded


@pytest.mark.parametrize("frame_bytes", [4096, 65536, 1 << 20])
def test_multi_frame_members_give_the_same_bytes_with_any_thread_count(frame_bytes: int) -> None:
    text = b"".join(b"line %d of a compressible member\n" % i for i in range(60_000))
    members = [*small_members(), blob(text), blob(gzip_like(RAW_MEMBER_MIN + 3)), blob(text[:999])]
    limits = Limits(seek_frame_bytes=frame_bytes)
    outputs = {
        threads: write_in_memory(members, b"m", [b"s"], threads=threads, limits=limits)[0]
        for threads in (1, 2, 4)
    }
    assert outputs[1] == outputs[2] == outputs[4]
    # The member was cut into frames of frame_bytes of tar stream, each on its own.
    raw = outputs[1]
    table, _ = TABLES[raw]
    start = content_start(raw)
    frames = walk_frames(raw[start : start + table.offset], max_window=1 << 27)
    assert len(frames) >= len(text) // frame_bytes
    reader = reader_for(raw)
    reader.read_prefix()
    got = []
    while (member := reader.next_member()) is not None:
        got.append((member.path, b"".join(reader.iter_data())))
    reader.check_layout()
    assert got == members


def test_a_member_cut_differently_by_its_source_gives_the_same_frames() -> None:
    text = b"".join(b"row %d\n" % i for i in range(100_000))
    path = blob(text)[0]

    def written(chunks: list[bytes]) -> bytes:
        out = io.BytesIO()
        writer = BundleWriter(
            out, prefix_capacity=4096, mtime=EPOCH, limits=Limits(seek_frame_bytes=10_000)
        )
        writer.add_stream(path, len(text), chunks)
        writer.end_content()
        writer.finish(b"{}", [])
        return out.getvalue()

    assert written([text]) == written([text[i : i + 777] for i in range(0, len(text), 777)])


def test_read_members_before_prefix_is_a_programming_error() -> None:
    raw, _ = write_in_memory(small_members(), b"m", [b"s"])
    reader = reader_for(raw)
    with pytest.raises(RuntimeError, match=r"read_prefix\(\) first"):
        reader.next_member()


def test_writer_refuses_a_source_that_lies_about_its_size() -> None:
    out = io.BytesIO()
    writer = BundleWriter(out, prefix_capacity=4096)
    with pytest.raises(SourceError, match=r"layer X: source sent 3 bytes, expected 4"):
        writer.add_stream("images/x", 4, [b"abc"], what="layer X")
    writer = BundleWriter(io.BytesIO(), prefix_capacity=4096)
    with pytest.raises(SourceError, match=r"images/x: source sent more than the declared 2"):
        writer.add_stream("images/x", 2, [b"ab", b"c"])
    writer = BundleWriter(io.BytesIO(), prefix_capacity=4096)
    wrong = Digest.sha256_of(b"other")
    with pytest.raises(SourceError, match=rf"images/x: content has digest .*, expected {wrong}"):
        writer.add_stream("images/x", 3, [b"abc"], expected=wrong)


def test_finish_twice_is_a_programming_error() -> None:
    out = io.BytesIO()
    writer = BundleWriter(out, prefix_capacity=4096)
    with pytest.raises(RuntimeError, match=r"end_content\(\) first"):
        writer.finish(b"m", [b"s"])
    writer.end_content()
    with pytest.raises(RuntimeError, match="content is already ended"):
        writer.end_content()
    with pytest.raises(RuntimeError, match="content is already ended"):
        writer.add_bytes("images/x", b"late")
    writer.finish(b"m", [b"s"])
    with pytest.raises(RuntimeError, match="already finished"):
        writer.finish(b"m", [b"s"])


def test_zstd_cli_and_tar_read_a_written_bundle(tmp_path: Path) -> None:
    zstd = require_tool("zstd")
    members = [*small_members(), ("repos/r.bundle", b"git bundle bytes")]
    raw, _ = write_in_memory(members, b"MANIFEST", [b"SIG0", b"SIG1"])
    bundle = tmp_path / "b.airbundle"
    bundle.write_bytes(raw)
    out = subprocess.run(
        [zstd, "-d", "-c", "-q", str(bundle)], capture_output=True, check=True, timeout=30
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(out), mode="r:") as tf:
        infos = tf.getmembers()
        names = [i.name for i in infos]
        assert names == [MANIFEST_PATH, signature_path(0), signature_path(1)] + [
            p for p, _ in members
        ]
        assert all(i.isreg() and i.mtime == EPOCH for i in infos)
        data = {i.name: tf.extractfile(i).read() for i in infos}  # type: ignore[union-attr]
    assert data[MANIFEST_PATH] == b"MANIFEST"
    assert data[signature_path(1)] == b"SIG1"
    assert all(data[p] == d for p, d in members)
    # GNU tar, through zstd, sees the same archive.
    listing = subprocess.run(
        [require_tool("tar"), "--zstd", "-tf", str(bundle)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.splitlines()
    assert listing == names


def test_zstd_cli_reads_the_exported_bundle(env: World) -> None:
    zstd = require_tool("zstd")
    out = subprocess.run(
        [zstd, "-d", "-c", "-q", str(env.bundle)], capture_output=True, check=True, timeout=30
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(out), mode="r:") as tf:
        names = tf.getnames()
    assert names[:2] == [MANIFEST_PATH, signature_path(0)]
    assert names[2:] == [m.path for m in env.export.manifest.members]


# --- encode_prefix -----------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    manifest=st.one_of(
        st.binary(max_size=20000),
        st.builds(lambda n, b: b * n, st.integers(0, 20000), st.sampled_from([b"a", b"{}\n"])),
        st.text(max_size=5000).map(str.encode),
    ),
    signatures=st.lists(st.binary(min_size=1, max_size=1024), max_size=3),
    reserved=st.integers(0, 4),
)
def test_encode_prefix_fills_exactly_the_capacity(
    manifest: bytes, signatures: list[bytes], reserved: int
) -> None:
    capacity = prefix_upper_bound(len(manifest), len(signatures) + reserved, 1024)
    region = encode_prefix(manifest, signatures, capacity=capacity, mtime=EPOCH)
    assert len(region) == capacity
    assert region == encode_prefix(manifest, signatures, capacity=capacity, mtime=EPOCH)
    # The region is a frame and padding any zstd reader skips; inside, the prefix members.
    tar = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(region), read_across_frames=True)
    assert tar.read() == prefix_tar(manifest, signatures)


def test_encode_prefix_gap_of_one_to_seven_bytes() -> None:
    manifest = bytes(range(256)) * 20
    full = encode_prefix(manifest, [b"s"], capacity=1 << 16, mtime=0)
    frame = zstandard.ZstdCompressor(level=19, write_checksum=True, write_content_size=True)
    smallest = len(frame.compress(prefix_tar(manifest, [b"s"])))
    assert len(full) == 1 << 16
    for capacity in range(smallest - 2, smallest + 10):
        try:
            region = encode_prefix(manifest, [b"s"], capacity=capacity, mtime=0)
        except SignatureError as exc:
            assert "no room left for the manifest and 1 signature(s)" in exc.message
            continue
        assert len(region) == capacity


@pytest.mark.parametrize("capacity", [0, 8, 100])
def test_encode_prefix_too_small_raises_signature_error(capacity: int) -> None:
    manifest = bytes(range(256)) * 4
    with pytest.raises(
        SignatureError,
        match=rf"no room left for the manifest and 2 signature\(s\): they need \d+ bytes, "
        rf"the bundle reserved {capacity}$",
    ):
        encode_prefix(manifest, [b"a", b"b"], capacity=capacity, mtime=0)


# --- zstd window limit ------------------------------------------------------------


def frame_with_window(data: bytes, window_log: int) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=window_log)
    out = io.BytesIO()
    with zstandard.ZstdCompressor(compression_params=params).stream_writer(
        out, closefd=False
    ) as writer:
        writer.write(data)
    frame = out.getvalue()
    assert zstandard.get_frame_parameters(frame).window_size == 1 << window_log
    return frame


def test_frame_with_too_large_window_is_refused(tmp_path: Path) -> None:
    # The frame header asks for a 256 MiB window; the data is tiny.
    content = frame_with_window(tar_bytes(small_members()), 28)
    assert Limits().max_zstd_window_bytes < 1 << 28
    raw = raw_bundle(tmp_path / "w.airbundle", prefix_tar(b"m", [b"s"]), content, compress=False)
    # The reader looks at the first content header while reading the prefix.
    reader = BundleReader(io.BytesIO(raw.read_bytes()), source="w.airbundle")
    with pytest.raises(
        ArchiveError,
        match=r"^w\.airbundle: the zstd frame at byte \d+ asks for a decompression window of "
        r"268435456 bytes, more than the 134217728 allowed$",
    ):
        reader.read_prefix()


def test_frame_at_the_window_limit_is_accepted(tmp_path: Path) -> None:
    content = frame_with_window(tar_bytes(small_members()), 27)
    raw = raw_bundle(tmp_path / "w.airbundle", prefix_tar(b"m", [b"s"]), content, compress=False)
    stream_all(raw.read_bytes())


def test_window_limit_comes_from_limits(tmp_path: Path) -> None:
    content = frame_with_window(tar_bytes(small_members()), 21)
    raw = raw_bundle(tmp_path / "w.airbundle", prefix_tar(b"m", [b"s"]), content, compress=False)
    small = Limits(max_zstd_window_bytes=1 << 20)
    reader = BundleReader(io.BytesIO(raw.read_bytes()), source="mem", limits=small)
    with pytest.raises(ArchiveError, match=r"mem: .*window of 2097152 bytes, more than the 1048"):
        reader.read_prefix()
    # The prefix frame alone is small and single-segment: inspect can still read it.
    prefix_only = raw.read_bytes()[: content_start(raw.read_bytes())]
    with pytest.raises(TruncatedError, match="a tar header stops after 0 of 512"):
        BundleReader(io.BytesIO(prefix_only), source="mem", limits=small).read_prefix()


# --- rewrite_prefix (co-signing) -----------------------------------------------------


def test_rewrite_prefix_adds_a_signature_without_touching_content(
    env: World, tmp_path: Path
) -> None:
    bundle = env.copy_bundle(tmp_path)
    before = bundle.read_bytes()
    prefix = read_prefix(bundle)
    start = HEADER_SIZE + prefix.prefix_length
    second = sign(prefix.manifest, env.other_key)
    with bundle.open("r+b") as fh:
        rewrite_prefix(
            fh,
            prefix.manifest,
            [prefix.signatures[0][1], second],
            mtime=EPOCH,
            source=str(bundle),
        )
    after = bundle.read_bytes()
    assert len(after) == len(before)
    assert after[:HEADER_SIZE] == before[:HEADER_SIZE]
    assert after[start:] == before[start:]
    assert after[HEADER_SIZE:start] != before[HEADER_SIZE:start]
    reread = read_prefix(bundle)
    assert reread.manifest == prefix.manifest
    assert [name for name, _ in reread.signatures] == [signature_path(0), signature_path(1)]
    both = TrustPolicy((*env.policy().keys, *env.policy(other=True).keys), threshold=2)
    result = verify_bundle(bundle, both, at=NOW)
    assert len(result.authenticated.signers) == 2


def test_rewrite_prefix_without_room_changes_nothing(env: World, tmp_path: Path) -> None:
    bundle = env.copy_bundle(tmp_path)
    before = bundle.read_bytes()
    prefix = read_prefix(bundle)
    # Incompressible "signatures": the archive layer does not parse them.
    too_many = [hashlib.shake_256(bytes([i])).digest(1024) for i in range(40)]
    with bundle.open("r+b") as fh, pytest.raises(SignatureError, match=r"no room left .* 40 sig"):
        rewrite_prefix(fh, prefix.manifest, too_many, mtime=EPOCH, source=str(bundle))
    assert bundle.read_bytes() == before


def test_rewrite_prefix_refuses_a_file_that_is_not_a_bundle(tmp_path: Path) -> None:
    path = tmp_path / "not.airbundle"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 100)
    with path.open("r+b") as fh, pytest.raises(ArchiveError, match="not an airbundle file"):
        rewrite_prefix(fh, b"m", [b"s"], mtime=0, source=str(path))
    assert path.read_bytes() == b"\x28\xb5\x2f\xfd" + b"\0" * 100


# --- file header ---------------------------------------------------------------------


def test_file_header_checks() -> None:
    raw, _ = write_in_memory(small_members(), b"m", [b"s"])
    with pytest.raises(TruncatedError, match=r"x: too short to be an airbundle \(10 bytes\)"):
        parse_file_header(raw[:10], source="x")
    with pytest.raises(ArchiveError, match=r"x: not an airbundle file"):
        parse_file_header(b"\0" * HEADER_SIZE, source="x")
    future = bytearray(raw[:HEADER_SIZE])
    future[18:20] = (2).to_bytes(2, "little")  # format version 2: a bundle with files
    assert parse_file_header(bytes(future), source="x") == parse_file_header(raw, source="x")
    future[18:20] = (3).to_bytes(2, "little")
    with pytest.raises(ArchiveError, match=r"x: bundle format version 3 is not supported"):
        parse_file_header(bytes(future), source="x")


# --- hypothesis: the bundle reader fails only with our errors --------------------------

FUZZ_KEY = Ed25519PrivateKey.generate()
FUZZ_POLICY = TrustPolicy(
    tuple(parse_trust_file(sshsig.public_key_of(FUZZ_KEY).openssh_line(), source="fuzz"))
)
FUZZ_MEMBERS = [*small_members(), blob(b"\x00" * 3000)]


def signed_in_memory(
    members: list[tuple[str, bytes]], key: Ed25519PrivateKey
) -> tuple[bytes, bytes]:
    """A bundle whose manifest lists `members` and their seek table; (bundle, manifest)."""
    draft = dataclasses.replace(make_manifest(members), seek_table=SEEK_TABLE_DRAFT).to_bytes()
    out = io.BytesIO()
    writer = BundleWriter(
        out, prefix_capacity=prefix_upper_bound(len(draft), 1, 1024), mtime=EPOCH, threads=1
    )
    for path, data in members:
        writer.add_bytes(path, data)
    manifest = dataclasses.replace(make_manifest(members), seek_table=writer.end_content())
    data = manifest.to_bytes()
    writer.finish(data, [sign(data, key)])
    return out.getvalue(), data


FUZZ_BUNDLE, FUZZ_MANIFEST = signed_in_memory(FUZZ_MEMBERS, FUZZ_KEY)
HEADER = FUZZ_BUNDLE[:HEADER_SIZE]


def verify_in_memory(raw: bytes) -> list[tuple[str, bytes]]:
    reader = BundleReader(io.BytesIO(raw), source="fuzz")
    auth = authenticate(reader.read_prefix(), FUZZ_POLICY, source="fuzz", at=NOW)
    seen: list[tuple[str, bytes]] = []

    def sink(member: object, entry: object, chunks: object) -> None:
        seen.append((member.path, b"".join(chunks)))  # type: ignore[attr-defined,arg-type]

    stream_members(reader, auth.manifest, sink)
    assert auth.manifest_bytes == FUZZ_MANIFEST
    return seen


def test_fuzz_bundle_verifies() -> None:
    assert verify_in_memory(FUZZ_BUNDLE) == FUZZ_MEMBERS


@st.composite
def mutated_bundles(draw: st.DrawFn) -> bytes:
    data = bytearray(FUZZ_BUNDLE)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, len(data) - 1))
        if action == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            data[pos] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[pos:]
        elif action == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[pos : pos + draw(st.integers(1, 64))]
        if not data:
            break
    return bytes(data)


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=2000),
        st.binary(max_size=2000).map(lambda b: HEADER + b),
        tar_streams().map(lambda t: HEADER + zstandard.ZstdCompressor().compress(t)),
        st.tuples(tar_streams(), tar_streams()).map(lambda ts: raw_bundle_bytes(ts[0], ts[1])),
    )
)
def test_bundle_reader_raises_only_airbundle_errors(raw: bytes) -> None:
    try:
        stream_all(raw)
    except AirbundleError as exc:
        assert isinstance(exc, IntegrityError), exc
        assert exc.message


def raw_bundle_bytes(prefix: bytes, content: bytes) -> bytes:
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(prefix)
    body = zstandard.ZstdCompressor(write_checksum=True).compress(content)
    return HEADER[:24] + len(frame).to_bytes(8, "little") + frame + body


@FUZZ
@given(mutated_bundles())
def test_mutated_bundle_fails_with_airbundle_error_or_is_unchanged(raw: bytes) -> None:
    try:
        members = verify_in_memory(raw)
    except AirbundleError as exc:
        assert isinstance(exc, IntegrityError), exc
        assert exc.message
        return
    # A change that verification lets through changed nothing that is imported.
    assert members == FUZZ_MEMBERS


# --- already-compressed members: zstd frames of raw blocks -----------------------


@given(st.binary(max_size=300_000))
@settings(max_examples=40)
def test_a_raw_frame_is_standard_zstd(data: bytes) -> None:
    buf = bytearray(raw_frame_size(len(data)))
    frame = bytes(buf[: raw_frame_into(buf, data)])
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(frame)).read() == data
    zstd = require_tool("zstd")
    decoded = subprocess.run([zstd, "-dcq"], input=frame, capture_output=True, check=True)
    assert decoded.stdout == data


def gzip_like(size: int) -> bytes:
    """Incompressible bytes that start as a gzip stream does."""
    return b"\x1f\x8b" + hashlib.shake_256(b"layer").digest(size - 2)


def test_a_large_compressed_member_is_stored_in_raw_frames_and_reads_back(
    tmp_path: Path, env: World
) -> None:
    layer = blob(gzip_like(3 * RAW_MEMBER_MIN + 12345))
    small = blob(b"\x1f\x8b" + b"small gzip-looking member" * 10)
    plain = blob(b"compressible text\n" * 100_000)  # 1.8 MiB, no magic: compressed
    members = [*small_members(), layer, small, plain]
    path = signed_bundle(tmp_path / "raw.airbundle", env.key, members)

    data = path.read_bytes()
    content = data[content_start(data) :]
    # The layer's bytes sit in the file as they are (raw blocks copy them).
    assert layer[1][1000:5000] in content
    assert len(content) < len(layer[1]) + 100_000  # the text member did compress
    # The zstd tool reads the whole file as one tar stream.
    out = subprocess.run(
        [require_tool("zstd"), "-dcq", str(path)], capture_output=True, check=True
    ).stdout
    unpacked = [(p, d) for p, _, d in read_everything(out) if not p.startswith("airbundle/")]
    assert unpacked == members
    result = verify_bundle(path, env.policy(), at=NOW)
    assert result.members == len(members)


def test_a_flipped_byte_in_a_raw_frame_names_the_member(tmp_path: Path, env: World) -> None:
    layer = blob(gzip_like(2 * RAW_MEMBER_MIN))
    path = signed_bundle(tmp_path / "raw.airbundle", env.key, [*small_members(), layer])
    data = bytearray(path.read_bytes())
    at = data.index(layer[1][RAW_MEMBER_MIN : RAW_MEMBER_MIN + 64]) + 10
    data[at] ^= 0x40
    path.write_bytes(bytes(data))

    with pytest.raises(MemberDigestError, match=layer[0].rsplit("/", 1)[1]):
        verify_bundle(path, env.policy(), at=NOW)


@given(cuts=st.lists(st.integers(1, 3 * RAW_MEMBER_MIN), max_size=6))
@settings(max_examples=15)
def test_a_raw_member_gives_the_same_bytes_however_the_source_cuts_it(cuts: list[int]) -> None:
    data = gzip_like(3 * RAW_MEMBER_MIN + 777)
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]

    def written(chunks: list[bytes]) -> bytes:
        out = io.BytesIO()
        writer = BundleWriter(out, prefix_capacity=4096, mtime=EPOCH)
        writer.add_stream("images/blobs/sha256/x", len(data), chunks)
        writer.end_content()
        writer.finish(b"{}", [])
        return out.getvalue()

    assert written(pieces) == written([data])
