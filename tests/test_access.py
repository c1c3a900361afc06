"""Random access to members: a bundle file or a volume set, read in place."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airbundle.adapters.bundleaccess import BundleAccess, index_path
from airbundle.errors import (
    ArchiveError,
    IntegrityError,
    MemberDigestError,
    SignatureError,
    TruncatedError,
)
from airbundle.format import archive
from airbundle.format.archive import HEADER_SIZE, BundleWriter, prefix_upper_bound
from airbundle.format.digest import Digest
from airbundle.format.manifest import SEEK_TABLE_DRAFT, BundleManifest
from airbundle.format.tarstream import DIRECTORY, encode_header
from airbundle.format.trust import TrustPolicy
from airbundle.limits import Limits
from airbundle.ops.access import open_bundle_access
from airbundle.ops.keys import load_trust
from airbundle.ops.verify import verify_bundle
from airbundle.ops.volumes import split_bundle
from support.crafting import (
    EPOCH,
    NOW,
    World,
    blob,
    flip,
    make_manifest,
    signed_bundle,
    small_members,
    tar_bytes,
    world,
)
from support.legacy import LEGACY_PUB, LEGACY_SAMPLES, gzip_like, legacy_bundle

MiB = 1 << 20
# Small frames, so that a few MiB of members make many frames, and members
# and volume boundaries fall inside frames.
SMALL_FRAMES = Limits(seek_frame_bytes=64 * 1024)


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> World:
    return world(tmp_path_factory)


def text_member(size: int, seed: str) -> bytes:
    line = f"{seed}: some compressible text that repeats with a counter ".encode()
    out = bytearray()
    n = 0
    while len(out) < size:
        out += line + str(n).encode() + b"\n"
        n += 1
    return bytes(out[:size])


def mixed_members() -> list[tuple[str, bytes]]:
    return [
        *small_members(),
        blob(text_member(700_000, "big")),  # eleven 64 KiB frames
        blob(gzip_like(2 * MiB + 4321, b"layer-a")),  # raw frames
        blob(b""),
        blob(text_member(513, "tiny")),
        blob(gzip_like(MiB, b"layer-b")),  # exactly one raw frame
        ("repos/app.bundle", text_member(200_000, "git")),
    ]


def write_signed(
    path: Path,
    members: list[tuple[str, bytes]],
    env: World,
    *,
    limits: Limits = SMALL_FRAMES,
    threads: int = 2,
) -> Path:
    manifest = make_manifest(members)
    draft = dataclasses.replace(manifest, seek_table=SEEK_TABLE_DRAFT).to_bytes()
    with path.open("wb") as fh:
        writer = BundleWriter(
            fh,
            prefix_capacity=prefix_upper_bound(len(draft), 2, 1024),
            mtime=EPOCH,
            threads=threads,
            limits=limits,
        )
        for member_path, data in members:
            writer.add_bytes(member_path, data)
        final = dataclasses.replace(manifest, seek_table=writer.end_content()).to_bytes()
        writer.finish(final, [archive_sign(final, env)])
    return path


def archive_sign(data: bytes, env: World) -> bytes:
    from airbundle.format import sshsig

    return sshsig.sign(data, env.key)


@pytest.fixture(scope="module")
def mixed(env: World, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    members = mixed_members()
    path = write_signed(tmp_path_factory.mktemp("access") / "mixed.airbundle", members, env)
    return path, dict(members)


@pytest.fixture(scope="module")
def volume_set(
    env: World, mixed: tuple[Path, dict[str, bytes]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path, _ = mixed
    data = path.read_bytes()
    start = HEADER_SIZE + archive.parse_file_header(data, source="t")
    # Volumes of an odd size: boundaries land inside frames, blocks and members.
    size = start + 333_333
    return split_bundle(path, size, (env.key,), folder=tmp_path_factory.mktemp("set"))


def open_access(path: Path, env: World, **kwargs: object) -> BundleAccess:
    return open_bundle_access(path, env.policy(), at=NOW, **kwargs)  # type: ignore[arg-type]


def test_the_mixed_bundle_verifies_and_has_many_frames(
    env: World, mixed: tuple[Path, dict[str, bytes]]
) -> None:
    path, members = mixed
    assert verify_bundle(path, env.policy(), at=NOW).members == len(members)
    with open_access(path, env) as bundle:
        assert bundle.frames_signed
        assert len(bundle.frames.frames) > 20
        assert not any(info.shared for info in bundle.members.values())


@pytest.mark.parametrize("which", ["file", "volumes"])
def test_every_member_reads_back_whole_and_verifies(
    env: World, mixed: tuple[Path, dict[str, bytes]], volume_set: Path, which: str
) -> None:
    path, members = mixed
    with open_access(path if which == "file" else volume_set, env) as bundle:
        assert set(bundle.members) == set(members)
        for name, data in members.items():
            reader = bundle.open_member(name)
            assert reader.size == len(data)
            assert reader.read() == data
            assert reader.read() == b""
            bundle.verify_member(name)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
@pytest.mark.parametrize("which", ["file", "volumes"])
def test_any_range_of_any_member_is_exactly_its_bytes(
    env: World,
    mixed: tuple[Path, dict[str, bytes]],
    volume_set: Path,
    which: str,
    data: st.DataObject,
) -> None:
    path, members = mixed
    name = data.draw(st.sampled_from(sorted(members)))
    content = members[name]
    start = data.draw(st.integers(0, len(content)))
    end = data.draw(st.integers(start, len(content)))
    with open_access(path if which == "file" else volume_set, env) as bundle:
        reader = bundle.open_member(name)
        assert (
            b"".join(reader.iter_range(start, end, chunk=data.draw(st.integers(1, 99_999))))
            == (content[start:end])
        )
        # Reads go on from where they stopped; a seek back starts over.
        reader.seek(start)
        first = reader.read(data.draw(st.integers(0, 70_000)))
        assert first == content[start : start + len(first)]
        assert reader.tell() == start + len(first)
        reader.seek(0)
        assert reader.read(10) == content[:10]


@pytest.mark.parametrize("which", ["file", "volumes"])
def test_raw_members_give_payload_spans_that_hold_exactly_their_bytes(
    env: World, mixed: tuple[Path, dict[str, bytes]], volume_set: Path, which: str
) -> None:
    path, members = mixed
    with open_access(path if which == "file" else volume_set, env) as bundle:
        raw = [n for n, d in members.items() if d.startswith(b"\x1f\x8b")]
        assert len(raw) == 2
        files = set()
        for name in raw:
            spans = bundle.payload_spans(name)
            assert spans is not None
            got = b""
            for span in spans:
                files.add(span.path)
                fd = bundle.volumes.fileno(span.path)
                got += os.pread(fd, span.length, span.offset)
            assert got == members[name]
        if which == "volumes":
            assert len(files) > 1  # the spans crossed volumes
        # A range (an HTTP Range request) gets exactly its bytes.
        name = raw[0]
        for start, end in [(0, 1), (131_000, 131_200), (1000, len(members[name])), (5, 5)]:
            ranged = bundle.payload_spans(name, start, end)
            assert ranged is not None
            got = b"".join(
                os.pread(bundle.volumes.fileno(s.path), s.length, s.offset) for s in ranged
            )
            assert got == members[name][start:end]
        for name, content in members.items():
            if name not in raw and content:
                assert bundle.payload_spans(name) is None  # compressed: read it instead


def test_a_flipped_byte_in_a_member_fails_its_verification_and_only_its(
    env: World, mixed: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    path, members = mixed
    name = next(n for n, d in members.items() if d.startswith(b"\x1f\x8b"))
    data = path.read_bytes()
    at = data.index(members[name][300_000:300_064]) + 7
    damaged = tmp_path / "damaged.airbundle"
    damaged.write_bytes(flip(data, at))
    with open_access(damaged, env) as bundle:
        with pytest.raises(MemberDigestError, match=rf"member '{name}' is corrupt"):
            bundle.verify_member(name)
        for other in members:
            if other != name:
                bundle.verify_member(other)


def test_a_flipped_byte_in_a_compressed_frame_is_refused_when_read(
    env: World, mixed: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    path, members = mixed
    with open_access(path, env) as bundle:
        info = bundle.member("repos/app.bundle")
        frame = bundle.frames.frames[info.first_frame + 1]
    damaged = tmp_path / "damaged.airbundle"
    damaged.write_bytes(flip(path.read_bytes(), frame.offset + frame.size // 2))
    with open_access(damaged, env) as bundle:
        reader = bundle.open_member("repos/app.bundle")
        assert reader.read(1000) == members["repos/app.bundle"][:1000]  # the first frame is whole
        with pytest.raises(ArchiveError, match=r"corrupt near byte|not the one the seek table"):
            reader.read()


def test_a_changed_seek_table_is_refused_on_open(
    env: World, mixed: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    path, _ = mixed
    data = path.read_bytes()
    damaged = tmp_path / "table.airbundle"
    damaged.write_bytes(flip(data, len(data) - 20))  # an entry of the table
    with pytest.raises(ArchiveError, match=r"seek table at byte \d+ has digest .* the signed"):
        open_access(damaged, env)


def test_access_checks_the_signature_first(
    env: World, mixed: tuple[Path, dict[str, bytes]]
) -> None:
    path, _ = mixed
    with pytest.raises(SignatureError, match=r"0 trusted signature"):
        open_bundle_access(path, env.policy(other=True), at=NOW)


def test_a_truncated_bundle_is_refused_on_open(
    env: World, mixed: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    path, _ = mixed
    cut = tmp_path / "cut.airbundle"
    cut.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(TruncatedError, match=r"the bundle is truncated"):
        open_access(cut, env)


def test_a_member_not_in_the_manifest_is_a_key_error(
    env: World, mixed: tuple[Path, dict[str, bytes]]
) -> None:
    path, _ = mixed
    with open_access(path, env) as bundle, pytest.raises(KeyError, match="no member"):
        bundle.open_member("images/blobs/sha256/" + "0" * 64)


def test_the_exported_samples_read_back_member_by_member(env: World) -> None:
    with open_access(env.bundle, env) as bundle:
        for entry in env.export.manifest.members:
            data = bundle.open_member(entry.path).read()
            assert Digest.sha256_of(data) == entry.digest


# --- bundles written before the seek table ----------------------------------------------


def legacy_policy() -> TrustPolicy:
    return TrustPolicy(tuple(load_trust([LEGACY_PUB])))


def test_an_old_bundle_is_indexed_once_then_read_from_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    seen: list[int] = []
    bundle = open_bundle_access(
        LEGACY_SAMPLES, legacy_policy(), at=NOW, cache_dir=cache, progress=seen.append
    )
    with bundle:
        assert not bundle.frames_signed
        assert sum(seen) == bundle.manifest.total_size  # one pass over every member
        assert bundle.verified == {m.path for m in bundle.manifest.members}
        # One data frame holds every member: all but the first start inside it.
        shared = [info.shared for info in bundle.members.values()]
        assert shared == [False] + [True] * 16
        for entry in bundle.manifest.members:
            bundle.verify_member(entry.path)
    cached = index_path(cache, bundle.manifest_digest)
    assert cached.is_file()
    seen.clear()
    with open_bundle_access(
        LEGACY_SAMPLES, legacy_policy(), at=NOW, cache_dir=cache, progress=seen.append
    ) as again:
        assert seen == []  # no second pass
        assert again.verified == frozenset()
        for entry in again.manifest.members:
            again.verify_member(entry.path)


def test_an_old_bundle_with_raw_members_gives_spans_and_shared_flags(
    env: World, tmp_path: Path
) -> None:
    layer = blob(gzip_like(3 * MiB + 5, b"old-layer"))
    members = [*small_members(), layer, blob(text_member(5000, "after"))]
    path = tmp_path / "old.airbundle"
    path.write_bytes(legacy_bundle(members, make_manifest(members), env.key))
    with open_access(path, env, cache_dir=tmp_path / "cache") as bundle:
        info = bundle.member(layer[0])
        assert not info.shared  # its bytes start a raw frame
        spans = bundle.payload_spans(layer[0])
        assert spans is not None
        got = b"".join(os.pread(bundle.volumes.fileno(s.path), s.length, s.offset) for s in spans)
        assert got == layer[1]
        assert bundle.member(members[-1][0]).shared  # after the layer, in the shared frame
        for member_path, data in members:
            assert bundle.open_member(member_path).read() == data


def test_an_old_bundle_with_folder_entries_cannot_be_read_in_place(
    env: World, tmp_path: Path
) -> None:
    members = small_members()
    manifest = make_manifest(members).to_bytes()
    prefix = tar_bytes(
        [
            (archive.MANIFEST_PATH, manifest),
            (archive.signature_path(0), archive_sign(manifest, env)),
        ],
        end=False,
    )
    content = encode_header("images", 0, kind=DIRECTORY) + tar_bytes(members)
    from support.crafting import raw_bundle

    path = raw_bundle(tmp_path / "dirs.airbundle", prefix, content)
    assert verify_bundle(path, env.policy(), at=NOW).members == len(members)  # valid, once
    with pytest.raises(ArchiveError, match=r"not exactly the listed members in order"):
        open_access(path, env)


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b'{"apiVersion": "airbundle/v1"}',
        b"[]",
        b'{"apiVersion":"airbundle/v1","contentOffset":true,"frames":[],"kind":"FrameIndex",'
        b'"manifestDigest":"sha256:' + b"0" * 64 + b'","totalLength":1}',
        b'{"apiVersion":"airbundle/v1","contentOffset":1,"frames":[[1,2]],"kind":"FrameIndex",'
        b'"manifestDigest":"sha256:' + b"0" * 64 + b'","totalLength":1}',
        b'{"apiVersion":"airbundle/v1","contentOffset":1,"frames":[["9",2]],"kind":"FrameIndex",'
        b'"manifestDigest":"sha256:' + b"0" * 64 + b'","totalLength":1}',
    ],
    ids=["text", "fields", "list", "bool", "tiny-frame", "string"],
)
def test_a_malformed_cached_index_is_refused_by_name(tmp_path: Path, content: bytes) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    with LEGACY_SAMPLES.open("rb") as fh:
        manifest = archive.read_prefix_region(fh, source="l").manifest
    cached = index_path(cache, Digest.sha256_of(manifest))
    cached.write_bytes(content)
    with pytest.raises(ArchiveError, match=rf"frame index {cached}"):
        open_bundle_access(LEGACY_SAMPLES, legacy_policy(), at=NOW, cache_dir=cache)


@pytest.mark.parametrize("kind", ["fifo", "symlink", "folder", "huge"])
def test_a_cached_index_that_is_not_a_small_regular_file_is_refused(
    tmp_path: Path, kind: str
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    with LEGACY_SAMPLES.open("rb") as fh:
        manifest = archive.read_prefix_region(fh, source="l").manifest
    cached = index_path(cache, Digest.sha256_of(manifest))
    limits = Limits()
    if kind == "fifo":
        os.mkfifo(cached)  # a reader that waited on it would hang
    elif kind == "symlink":
        (tmp_path / "elsewhere").write_text("{}")
        cached.symlink_to(tmp_path / "elsewhere")
    elif kind == "folder":
        cached.mkdir()
    else:
        cached.write_bytes(b" " * 2000)
        limits = Limits(max_frame_index_bytes=1000)
    with pytest.raises(ArchiveError, match=rf"frame index {cached}"):
        open_bundle_access(LEGACY_SAMPLES, legacy_policy(), at=NOW, cache_dir=cache, limits=limits)


def test_an_index_of_another_framing_of_the_same_manifest_is_rebuilt(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    open_bundle_access(LEGACY_SAMPLES, legacy_policy(), at=NOW, cache_dir=cache).close()
    cached = next(cache.iterdir())
    text = cached.read_text()
    cached.write_text(text.replace('"totalLength":42899', '"totalLength":42900'))
    seen: list[int] = []
    with open_bundle_access(
        LEGACY_SAMPLES, legacy_policy(), at=NOW, cache_dir=cache, progress=seen.append
    ) as bundle:
        assert seen  # indexed again
        assert bundle.verified
    assert cached.read_text() == text


def test_a_bundle_manifest_round_trips_its_seek_table(env: World) -> None:
    manifest = env.export.manifest
    assert manifest.seek_table is not None
    again = BundleManifest.from_bytes(manifest.to_bytes())
    assert again.seek_table == manifest.seek_table
    data = env.bundle.read_bytes()
    start = HEADER_SIZE + archive.parse_file_header(data, source="t")
    table = data[start + manifest.seek_table.offset :]
    assert len(table) == manifest.seek_table.size
    assert hashlib.sha256(table).hexdigest() == manifest.seek_table.digest.hex


def test_a_signed_bundle_from_the_helpers_opens(env: World, tmp_path: Path) -> None:
    path = signed_bundle(tmp_path / "s.airbundle", env.key, small_members())
    with open_access(path, env) as bundle:
        for name, data in small_members():
            assert bundle.open_member(name).read() == data


def test_errors_are_integrity_errors(env: World, tmp_path: Path) -> None:
    junk = tmp_path / "junk.airbundle"
    junk.write_bytes(b"\0" * 100)
    with pytest.raises(IntegrityError):
        open_access(junk, env)
