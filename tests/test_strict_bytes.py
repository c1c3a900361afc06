"""Every byte of a bundle is signed content, a frame structure the format defines,
or zero padding that is checked (issue 11, item 2); every tar entry is one the
signed manifest declares (item 3). Hostile bundles for each rule, and their near
variants, crafted from a real one."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import struct
import subprocess
from pathlib import Path

import pytest
import zstandard

from airbundle.errors import ArchiveError, TruncatedError
from airbundle.format import archive
from airbundle.format.archive import HEADER_SIZE, BundleReader, read_prefix_region
from airbundle.format.digest import Digest
from airbundle.format.manifest import SEEK_TABLE_DRAFT, BundleManifest, SeekTableRef
from airbundle.format.seektable import encode_seek_table
from airbundle.format.tarstream import BLOCK, DIRECTORY, encode_header
from airbundle.format.zstdframes import walk_frames
from airbundle.ops.verify import authenticate, stream_members, verify_bundle
from support.crafting import (
    EPOCH,
    NOW,
    World,
    make_manifest,
    prefix_tar,
    raw_bundle,
    sign,
    small_members,
    tar_bytes,
    world,
    write_bundle,
)
from support.env import AIRBUNDLE

SKIPPABLE = 0x184D2A5E


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> World:
    return world(tmp_path_factory)


@dataclasses.dataclass(frozen=True)
class Layout:
    """A bundle cut into its regions, to put back together with one change."""

    header: bytes
    prefix_frame: bytes
    padding: bytes  # the whole padding frame
    frames: list[bytes]  # content frames, the end-of-archive frame last
    table: bytes

    def join(
        self,
        *,
        frames: list[bytes] | None = None,
        padding: bytes | None = None,
        prefix_frame: bytes | None = None,
        table: bytes | None = None,
        tail: bytes = b"",
        fix_length: bool = True,
    ) -> bytes:
        prefix = (prefix_frame or self.prefix_frame) + (
            self.padding if padding is None else padding
        )
        body = b"".join(self.frames if frames is None else frames)
        rest = prefix + body + (self.table if table is None else table) + tail
        header = bytearray(self.header)
        header[24:32] = len(prefix).to_bytes(8, "little")
        if fix_length:
            header[32:40] = (HEADER_SIZE + len(rest)).to_bytes(8, "little")
        return bytes(header) + rest


def layout_of(data: bytes) -> Layout:
    header = data[:HEADER_SIZE]
    p = archive.parse_file_header(header, source="t")
    region = data[HEADER_SIZE : HEADER_SIZE + p]
    prefix_frames = walk_frames(region, max_window=1 << 27)
    first = prefix_frames[0]
    content = walk_frames(data[HEADER_SIZE + p :], max_window=1 << 27)
    body = data[HEADER_SIZE + p :]
    frames = [body[f.offset : f.offset + f.size] for f in content if not f.skippable]
    assert content[-1].skippable  # the seek table
    return Layout(
        header,
        region[: first.size],
        region[first.size :],
        frames,
        body[content[-1].offset :],
    )


def verify_bytes(env: World, path: Path, data: bytes) -> None:
    path.write_bytes(data)
    verify_bundle(path, env.policy(), at=NOW)


def skippable(payload: bytes, magic: int = SKIPPABLE) -> bytes:
    return struct.pack("<II", magic, len(payload)) + payload


@pytest.fixture(scope="module")
def layout(env: World) -> Layout:
    return layout_of(env.bundle.read_bytes())


def test_the_layout_puts_the_pristine_bundle_back_together(
    env: World, layout: Layout, tmp_path: Path
) -> None:
    assert layout.join() == env.bundle.read_bytes()
    verify_bytes(env, tmp_path / "same.airbundle", layout.join())


# --- after the archive ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [skippable(b"\0" * 16), skippable(b"smuggled"), skippable(b"", 0x184D2A50), b"\0" * 8],
    ids=["zeros", "text", "empty-padding-magic", "zero-bytes"],
)
@pytest.mark.parametrize("fix_length", [True, False], ids=["length-adjusted", "length-kept"])
def test_nothing_may_follow_the_seek_table(
    env: World, layout: Layout, tmp_path: Path, tail: bytes, fix_length: bool
) -> None:
    data = layout.join(tail=tail, fix_length=fix_length)
    with pytest.raises(ArchiveError, match=r"unexpected bytes after the end of the bundle"):
        verify_bytes(env, tmp_path / "tail.airbundle", data)


def test_nothing_may_follow_the_seek_table_of_a_stream(env: World, layout: Layout) -> None:
    """From a pipe there is no file size to compare: the reader looks past the table."""
    data = layout.join(tail=skippable(b"\0" * 16))
    reader = BundleReader(io.BytesIO(data), source="pipe")
    auth = authenticate(reader.read_prefix(), env.policy(), source="pipe", at=NOW)
    with pytest.raises(ArchiveError, match=r"^pipe: unexpected bytes after the end of the bundle"):
        stream_members(reader, auth.manifest)


# --- between content frames ----------------------------------------------------------------


@pytest.mark.parametrize("where", [0, 1, 5, -1], ids=["first", "second", "middle", "before-eoa"])
@pytest.mark.parametrize("magic", [SKIPPABLE, 0x184D2A50, 0x184D2A5F])
def test_no_skippable_frame_between_content_frames(
    env: World, layout: Layout, tmp_path: Path, where: int, magic: int
) -> None:
    frames = list(layout.frames)
    frames.insert(where if where >= 0 else len(frames) - 1, skippable(b"\0" * 8, magic))
    with pytest.raises(ArchiveError, match=r"skippable frame .* in the content region"):
        verify_bytes(env, tmp_path / "between.airbundle", layout.join(frames=frames))


def test_the_seek_table_must_be_where_the_manifest_says(
    env: World, layout: Layout, tmp_path: Path
) -> None:
    # The table moved before the end-of-archive frame: content frames follow it.
    frames = [*layout.frames[:-1], layout.table, layout.frames[-1]]
    data = layout.join(frames=frames, table=b"")
    with pytest.raises(ArchiveError, match=r"skippable frame .* \(at byte \d+\)"):
        verify_bytes(env, tmp_path / "moved.airbundle", data)


def test_a_missing_seek_table_is_refused(env: World, layout: Layout, tmp_path: Path) -> None:
    with pytest.raises(TruncatedError, match=r"its seek table at byte \d+ is missing"):
        verify_bytes(env, tmp_path / "no-table.airbundle", layout.join(table=b""))


def test_another_frame_in_the_seek_tables_place_is_refused(
    env: World, layout: Layout, tmp_path: Path
) -> None:
    same_size = skippable(b"\0" * (len(layout.table) - 8), 0x184D2A50)
    with pytest.raises(ArchiveError, match=r"is not the seek table the manifest declares"):
        verify_bytes(env, tmp_path / "other.airbundle", layout.join(table=same_size))


def test_a_changed_seek_table_fails_its_signed_digest(
    env: World, layout: Layout, tmp_path: Path
) -> None:
    table = bytearray(layout.table)
    table[12] ^= 1  # a decompressed size
    with pytest.raises(ArchiveError, match=r"seek table at byte \d+ has digest .* the signed"):
        verify_bytes(env, tmp_path / "changed.airbundle", layout.join(table=bytes(table)))


def test_a_seek_table_the_manifest_does_not_declare_is_refused(env: World, tmp_path: Path) -> None:
    members = small_members()
    manifest = make_manifest(members).to_bytes()  # no seekTable
    path = write_bundle(tmp_path / "t.airbundle", manifest, [sign(manifest, env.key)], members)
    with pytest.raises(ArchiveError, match=r"skippable frame .* \(none in this bundle\)"):
        verify_bundle(path, env.policy(), at=NOW)


# --- the prefix region ---------------------------------------------------------------------


@pytest.mark.parametrize("at", [8, 9, 100, -1], ids=["first", "second", "middle", "last"])
def test_non_zero_padding_in_the_prefix_is_refused(
    env: World, layout: Layout, tmp_path: Path, at: int
) -> None:
    pad = bytearray(layout.padding)
    pad[at] = 0x41
    data = layout.join(padding=bytes(pad))
    path = tmp_path / "pad.airbundle"
    with pytest.raises(ArchiveError, match=r"non-zero bytes in the prefix padding frame"):
        verify_bytes(env, path, data)
    # Also where only the prefix is read (inspect, diff, export --since) and
    # where it is rewritten (sign).
    with path.open("rb") as fh, pytest.raises(ArchiveError, match=r"non-zero bytes"):
        read_prefix_region(fh, source=str(path))
    with path.open("r+b") as fh, pytest.raises(ArchiveError, match=r"non-zero bytes"):
        archive.rewrite_prefix(fh, layout_manifest(layout), [], mtime=EPOCH, source=str(path))


def layout_manifest(layout: Layout) -> bytes:
    return read_prefix_region(io.BytesIO(layout.join()), source="t").manifest


@pytest.mark.parametrize(
    "change",
    [
        lambda pad: struct.pack("<I", 0x184D2A51) + pad[4:],
        lambda pad: pad[:4] + struct.pack("<I", len(pad) - 9) + pad[8:],
        lambda pad: pad[:4] + struct.pack("<I", len(pad)) + pad[8:],
    ],
    ids=["other-magic", "size-short", "size-long"],
)
def test_a_padding_frame_that_does_not_fill_the_prefix_exactly_is_refused(
    env: World, layout: Layout, tmp_path: Path, change: object
) -> None:
    data = layout.join(padding=change(layout.padding))  # type: ignore[operator]
    with pytest.raises(ArchiveError, match=r"padding frame at byte \d+ does not fill|skippable"):
        verify_bytes(env, tmp_path / "pad.airbundle", data)


def test_a_second_zstd_frame_in_the_prefix_region_is_refused(
    env: World, layout: Layout, tmp_path: Path
) -> None:
    extra = zstandard.ZstdCompressor().compress(b"")
    pad = skippable(b"\0" * (len(layout.padding) - len(extra) - 8), 0x184D2A50)
    data = layout.join(padding=extra + pad)
    with pytest.raises(ArchiveError, match=r"a second zstd frame at byte \d+ inside the prefix"):
        verify_bytes(env, tmp_path / "two.airbundle", data)


def test_the_prefix_frame_holds_only_manifest_and_signatures(env: World, tmp_path: Path) -> None:
    members = small_members()
    manifest = make_manifest(members).to_bytes()
    signed = prefix_tar(manifest, [sign(manifest, env.key)])
    # The first content member moved into the prefix frame.
    moved = signed + tar_bytes(members[:1], end=False)
    path = raw_bundle(tmp_path / "t.airbundle", moved, tar_bytes(members[1:]))
    with pytest.raises(ArchiveError, match=r"manifest and signatures end at"):
        verify_bundle(path, env.policy(), at=NOW)


def test_a_skippable_frame_where_the_prefix_frame_should_be_is_refused(
    env: World, layout: Layout, tmp_path: Path
) -> None:
    data = layout.join(
        prefix_frame=skippable(b"\0" * 8), padding=layout.prefix_frame + layout.padding
    )
    with pytest.raises(ArchiveError, match=r"prefix region at byte 40 starts with a skippable"):
        verify_bytes(env, tmp_path / "skip-first.airbundle", data)


# --- signed seek tables that do not describe the listed members ----------------------------


def crafted_with_table(
    env: World, path: Path, members: list[tuple[str, bytes]], frames: list[bytes]
) -> Path:
    """A bundle with these content frames, a seek table that lists them truly,
    and a signed manifest declaring both (a careless signer's bundle)."""
    body = b"".join(frames)
    sizes = [
        (f.size, len(zstandard.ZstdDecompressor().decompressobj().decompress(body[f.offset :])))
        for f in walk_frames(body, max_window=1 << 27)
    ]
    table = encode_seek_table(sizes)
    manifest = dataclasses.replace(
        make_manifest(members),
        seek_table=SeekTableRef(len(body), len(table), Digest.sha256_of(table)),
    ).to_bytes()
    prefix = zstandard.ZstdCompressor(write_content_size=True).compress(
        prefix_tar(manifest, [sign(manifest, env.key)])
    )
    total = HEADER_SIZE + len(prefix) + len(body) + len(table)
    path.write_bytes(archive._encode_file_header(len(prefix), total) + prefix + body + table)
    return path


def compress(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(data)


def test_a_signed_table_with_two_members_in_one_frame_is_refused(
    env: World, tmp_path: Path
) -> None:
    members = small_members()
    frames = [compress(tar_bytes(members[:2], end=False))]
    frames += [compress(tar_bytes([m], end=False)) for m in members[2:]]
    frames.append(compress(b"\0" * 2 * BLOCK))
    path = crafted_with_table(env, tmp_path / "t.airbundle", members, frames)
    with pytest.raises(ArchiveError, match=r"member 'images/index.json' does not start a zstd"):
        verify_bundle(path, env.policy(), at=NOW)


def test_a_signed_table_with_zeros_after_the_archive_is_refused(env: World, tmp_path: Path) -> None:
    members = small_members()
    frames = [compress(tar_bytes([m], end=False)) for m in members]
    frames.append(compress(b"\0" * 4 * BLOCK))  # end-of-archive and two more zero blocks
    path = crafted_with_table(env, tmp_path / "t.airbundle", members, frames)
    with pytest.raises(ArchiveError, match=r"frames hold \d+ bytes of tar stream, the signed"):
        verify_bundle(path, env.policy(), at=NOW)


def test_a_well_formed_crafted_table_verifies(env: World, tmp_path: Path) -> None:
    """The near variant of the two above: one frame per member, the marker alone."""
    members = small_members()
    frames = [compress(tar_bytes([m], end=False)) for m in members]
    frames.append(compress(b"\0" * 2 * BLOCK))
    path = crafted_with_table(env, tmp_path / "t.airbundle", members, frames)
    assert verify_bundle(path, env.policy(), at=NOW).members == len(members)


def test_members_out_of_the_signed_order_are_refused_with_a_seek_table(
    env: World, tmp_path: Path
) -> None:
    members = small_members()
    swapped = [members[1], members[0], *members[2:]]
    frames = [compress(tar_bytes([m], end=False)) for m in swapped]
    frames.append(compress(b"\0" * 2 * BLOCK))
    path = crafted_with_table(env, tmp_path / "t.airbundle", members, frames)
    with pytest.raises(ArchiveError, match=r"'images/index.json' is out of order"):
        verify_bundle(path, env.policy(), at=NOW)


# --- tar entries bounded by the manifest (issue 11, item 3) ----------------------------------


def folder_bomb(env: World, entries: int, folder: str = "images") -> bytes:
    """A bundle written without a seek table whose content repeats one folder entry."""
    members = small_members()
    manifest = make_manifest(members).to_bytes()
    prefix = zstandard.ZstdCompressor(write_content_size=True).compress(
        prefix_tar(manifest, [sign(manifest, env.key)])
    )
    folder_entry = encode_header(folder, 0, kind=DIRECTORY)
    body = compress(folder_entry * entries + tar_bytes(members))
    total = HEADER_SIZE + len(prefix) + len(body)
    return archive._encode_file_header(len(prefix), total) + prefix + body


def test_two_hundred_thousand_folder_entries_fail_at_the_second(env: World) -> None:
    data = folder_bomb(env, 200_000)
    assert len(data) < 60_000  # a few KB on the media, 100 MB of tar stream
    reader = BundleReader(io.BytesIO(data), source="bomb")
    auth = authenticate(reader.read_prefix(), env.policy(), source="bomb", at=NOW)
    seen: list[str] = []
    # The second entry is refused (bounded by the manifest, not by the media);
    # the first is a folder the manifest implies, so it passes.
    with pytest.raises(ArchiveError, match=r"^bomb: folder entry 'images' .* \(again\)$"):
        stream_members(reader, auth.manifest, lambda m, e, c: seen.append(m.path))
    assert seen == []


def test_the_folder_bomb_fails_from_the_command_line(env: World, tmp_path: Path) -> None:
    path = tmp_path / "bomb.airbundle"
    path.write_bytes(folder_bomb(env, 200_000))
    proc = subprocess.run(
        [*AIRBUNDLE, "verify", str(path), "--trust", str(env.pub_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert "folder entry 'images' is not declared by the manifest (again)" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("folders", "refused"),
    [
        (["images"], None),
        (["images", "images/blobs", "images/blobs/sha256"], None),
        (["images", "images"], "'images' is not declared by the manifest (again)"),
        (
            ["images/blobs/sha256", "images/blobs/sha256"],
            "'images/blobs/sha256' is not declared by the manifest (again)",
        ),
        (["repos"], "'repos' is not declared"),
        (["images/other"], "'images/other' is not declared"),
        (["images/blobs/sha256/x"], "'images/blobs/sha256/x' is not declared"),
    ],
    ids=["once", "each-once", "twice", "deep-twice", "no-repos", "stray", "below-a-file-folder"],
)
def test_folder_entries_in_a_bundle_without_seek_table(
    env: World, tmp_path: Path, folders: list[str], refused: str | None
) -> None:
    members = small_members()
    manifest = make_manifest(members).to_bytes()
    entries = b"".join(encode_header(f, 0, kind=DIRECTORY) for f in folders)
    path = raw_bundle(
        tmp_path / "t.airbundle",
        prefix_tar(manifest, [sign(manifest, env.key)]),
        entries + tar_bytes(members),
    )
    if refused is None:
        assert verify_bundle(path, env.policy(), at=NOW).members == len(members)
        return
    with pytest.raises(ArchiveError, match=r"folder entry " + re.escape(refused)):
        verify_bundle(path, env.policy(), at=NOW)


def test_no_folder_entry_in_a_bundle_with_a_seek_table(env: World, tmp_path: Path) -> None:
    members = small_members()
    frames = [compress(encode_header("images", 0, kind=DIRECTORY))]
    frames += [compress(tar_bytes([m], end=False)) for m in members]
    frames.append(compress(b"\0" * 2 * BLOCK))
    path = crafted_with_table(env, tmp_path / "t.airbundle", members, frames)
    with pytest.raises(ArchiveError, match=r"folder entry 'images' is not declared"):
        verify_bundle(path, env.policy(), at=NOW)


def test_manifest_without_table_still_parses(env: World) -> None:
    doc = env.export.manifest.to_json()
    del doc["seekTable"]
    assert BundleManifest.from_bytes(json.dumps(doc).encode()).seek_table is None


def test_a_bundle_without_members_and_its_seek_table(tmp_path: Path) -> None:
    """Its reader reaches the table while it reads the prefix, before the manifest
    says what may follow the archive: the stream waits there until told."""
    manifest = make_manifest([])
    draft = dataclasses.replace(manifest, seek_table=SEEK_TABLE_DRAFT).to_bytes()
    out = io.BytesIO()
    writer = archive.BundleWriter(out, prefix_capacity=archive.prefix_upper_bound(len(draft), 1, 0))
    data = dataclasses.replace(manifest, seek_table=writer.end_content()).to_bytes()
    writer.finish(data, [b"not checked here"])
    raw = out.getvalue()

    reader = BundleReader(io.BytesIO(raw), source="empty")
    prefix = reader.read_prefix()
    stream_members(reader, BundleManifest.from_bytes(prefix.manifest))

    reader = BundleReader(io.BytesIO(raw), source="empty")
    reader.read_prefix()
    with pytest.raises(ArchiveError, match=r"\(none in this bundle\)"):
        stream_members(reader, manifest)  # a manifest that declares no table

    reader = BundleReader(io.BytesIO(raw), source="empty")
    reader.read_prefix()
    with pytest.raises(ArchiveError, match=r"no manifest was given to say what it is"):
        reader.next_member()


@pytest.mark.parametrize("delta", [-100, -8, -1, 1, 8, 100])
def test_a_changed_prefix_length_in_the_header_is_refused(
    env: World, layout: Layout, tmp_path: Path, delta: int
) -> None:
    """The header is not signed, but its prefix length must match the region exactly."""
    data = bytearray(layout.join())
    length = int.from_bytes(data[24:32], "little")
    data[24:32] = (length + delta).to_bytes(8, "little")
    with pytest.raises(ArchiveError, match=r"padding frame at byte \d+ does not fill the prefix"):
        verify_bytes(env, tmp_path / "p.airbundle", bytes(data))
