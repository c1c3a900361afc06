"""Bundles written before the seek table still verify, import and co-sign as before,
and new bundles are still read by the code of the commit before the change."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest
import zstandard

from airbundle.errors import ArchiveError
from airbundle.format.archive import HEADER_SIZE, BundleReader, read_file_header
from airbundle.format.manifest import BundleManifest
from airbundle.format.tarstream import TarReader
from airbundle.format.trust import TrustPolicy
from airbundle.format.zstdframes import walk_frames
from airbundle.ops.keys import load_trust
from airbundle.ops.verify import verify_bundle
from support.crafting import NOW, World, blob, make_manifest, small_members, world
from support.env import AIRBUNDLE
from support.legacy import LEGACY_PUB, LEGACY_SAMPLES, gzip_like, legacy_bundle, legacy_content


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> World:
    return world(tmp_path_factory)


def legacy_policy() -> TrustPolicy:
    return TrustPolicy(tuple(load_trust([LEGACY_PUB])))


def members_of(path: Path) -> list[tuple[str, bytes]]:
    with path.open("rb") as fh:
        reader = BundleReader(fh, source=str(path))
        reader.read_prefix()
        out = []
        while (member := reader.next_member()) is not None:
            out.append((member.path, b"".join(reader.iter_data())))
    return out


def test_legacy_writer_reproduces_the_old_bytes() -> None:
    data = LEGACY_SAMPLES.read_bytes()
    start = HEADER_SIZE + read_file_header(data, source="legacy").prefix_length
    assert legacy_content(members_of(LEGACY_SAMPLES)) == data[start:]


def test_an_old_bundle_has_no_seek_table_and_one_shared_frame() -> None:
    data = LEGACY_SAMPLES.read_bytes()
    start = HEADER_SIZE + read_file_header(data, source="legacy").prefix_length
    frames = walk_frames(data[start:], max_window=1 << 27)
    assert [f.skippable for f in frames] == [False, False]  # a data frame, an empty frame
    with LEGACY_SAMPLES.open("rb") as fh:
        manifest = BundleManifest.from_bytes(BundleReader(fh, source="l").read_prefix().manifest)
    assert manifest.seek_table is None


def test_an_old_bundle_still_verifies() -> None:
    result = verify_bundle(LEGACY_SAMPLES, legacy_policy(), at=NOW)
    assert result.members == 17
    assert str(result.authenticated.manifest_digest) == (
        "sha256:2b52b984a2da1063634d26be42e4f4e9ad85a72bdd206bb6404eee67520de305"
    )


def test_an_old_bundle_still_verifies_from_the_command_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*AIRBUNDLE, "verify", str(LEGACY_SAMPLES), "--trust", str(LEGACY_PUB)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "17 members" in proc.stdout


def test_an_old_bundle_with_raw_frames_still_verifies(env: World, tmp_path: Path) -> None:
    layer = blob(gzip_like(2 * (1 << 20) + 300))
    members = [*small_members(), layer, blob(b"after the layer\n" * 40)]
    path = tmp_path / "old-raw.airbundle"
    path.write_bytes(legacy_bundle(members, make_manifest(members), env.key))
    assert verify_bundle(path, env.policy(), at=NOW).members == len(members)


def test_an_old_bundle_with_an_appended_skippable_frame_is_refused(
    env: World, tmp_path: Path
) -> None:
    """Without a seek table no skippable frame may follow the archive, header adjusted or not."""
    members = small_members()
    data = bytearray(legacy_bundle(members, make_manifest(members), env.key))
    extra = bytes.fromhex("5e2a4d18") + (4).to_bytes(4, "little") + b"\0\0\0\0"
    adjusted = data + extra
    adjusted[32:40] = len(adjusted).to_bytes(8, "little")
    path = tmp_path / "old-tail.airbundle"
    path.write_bytes(bytes(adjusted))
    with pytest.raises(ArchiveError, match=r"skippable frame .* \(none in this bundle\)"):
        verify_bundle(path, env.policy(), at=NOW)


def test_an_old_bundle_can_be_co_signed_and_still_verifies(env: World, tmp_path: Path) -> None:
    bundle = tmp_path / "old.airbundle"
    shutil.copyfile(LEGACY_SAMPLES, bundle)
    bundle.chmod(0o644)
    proc = subprocess.run(
        [*AIRBUNDLE, "sign", str(bundle), "--key", str(env.key_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    both = TrustPolicy((*legacy_policy().keys, *env.policy().keys), threshold=2)
    assert verify_bundle(bundle, both, at=NOW).members == 17


def test_a_new_bundle_reads_as_the_old_reader_read_it(env: World) -> None:
    """The code before the seek table decoded the whole file with zstd's stream
    reader (skippable frames skipped), walked the tar stream and allowed only
    zeros after the end-of-archive marker: the new frames and the seek table
    change nothing of that (checked with that commit's airbundle too, see
    docs/bundle-format.md)."""
    data = env.bundle.read_bytes()
    stream = zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(data[HEADER_SIZE:]), read_across_frames=True
    )
    reader = TarReader(stream)
    names = []
    while (member := reader.next()) is not None:
        names.append(member.path)
        reader.skip_data()
    assert names[2:] == [m.path for m in env.export.manifest.members]
    assert read_file_header(data, source="new").total_length == len(data)
