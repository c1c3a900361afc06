"""Media-sized volumes: each volume checkable on its own, import in place, split
and join without re-export."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from airbundle.errors import ArchiveError, IntegrityError, TruncatedError, UsageError
from airbundle.format.volumes import PRESETS, parse_size
from airbundle.ops.keys import load_signing_key
from airbundle.ops.verify import verify_bundle
from airbundle.ops.volumes import check_one_volume, join_volumes, split_bundle
from support.bundles import export, import_, repo_entry, trust_policy, write_spec
from support.env import AIRBUNDLE
from support.keys import KeyPair
from support.parity import layer_layout

VOLUME = 150_000
EPOCH = 1_700_000_000  # every export at one time: the same bytes each run


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory, sample_tree: Path) -> Path:
    root = tmp_path_factory.mktemp("vol-src")
    layer_layout(root / "layout", 500_000)
    return write_spec(
        root / "spec.yaml",
        {"ref": "oci:layout:1", "name": "example.com/big:1"},
        repos=[repo_entry("gitops", str(sample_tree / "gitops"))],
        name="big",
    )


@pytest.fixture
def volumes(spec: Path, signing_key: KeyPair, tmp_path: Path) -> Path:
    result = export(
        spec,
        tmp_path / "media" / "big.airbundle",
        signing_key,
        split_size=VOLUME,
        source_date_epoch=EPOCH,
    )
    assert result.path == tmp_path / "media" / "big.airbundle.volumes"
    return tmp_path / "media"


def test_split_export_writes_volumes_that_concatenate_to_the_bundle(
    volumes: Path, spec: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    names = sorted(p.name for p in volumes.iterdir())
    assert names[:4] == [f"big.airbundle.00{i}" for i in range(1, 5)]
    assert names[-2:] == ["big.airbundle.volumes", "big.airbundle.volumes.sig"]
    assert all((volumes / n).stat().st_size == VOLUME for n in names[:3])
    single = export(spec, tmp_path / "single.airbundle", signing_key, source_date_epoch=EPOCH)
    joined = b"".join((volumes / n).read_bytes() for n in names if n[-1].isdigit())
    assert joined == single.path.read_bytes()


def test_verify_accepts_the_set_in_any_of_its_names(volumes: Path, signing_key: KeyPair) -> None:
    # The folder, the index, and the bundle name the export was given (no such
    # file: the set written in its place).
    for name in (volumes, volumes / "big.airbundle.volumes", volumes / "big.airbundle"):
        result = verify_bundle(name, trust_policy(signing_key))
        assert result.members == len(result.authenticated.manifest.members)


def test_each_volume_checks_on_its_own(volumes: Path, signing_key: KeyPair) -> None:
    assert check_one_volume(volumes / "big.airbundle.002", trust_policy(signing_key)).ok
    path = volumes / "big.airbundle.003"
    data = bytearray(path.read_bytes())
    data[1000] ^= 0x01
    path.write_bytes(bytes(data))
    check = check_one_volume(path, trust_policy(signing_key))
    assert (check.ok, check.problem) == (False, "its bytes do not match the signed index")
    proc = subprocess.run(
        [*AIRBUNDLE, "verify", str(path), "--trust", str(signing_key.public)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "big.airbundle.003 is damaged" in proc.stderr


def test_a_corrupt_volume_is_named_by_verify_of_the_set(
    volumes: Path, signing_key: KeyPair
) -> None:
    path = volumes / "big.airbundle.002"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"damaged volume\(s\): big\.airbundle\.002$"):
        verify_bundle(volumes, trust_policy(signing_key))


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_an_incomplete_set_is_refused_before_anything_is_written(
    volumes: Path, signing_key: KeyPair, tmp_path: Path, damage: str
) -> None:
    path = volumes / "big.airbundle.003"
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:-10])
    target = tmp_path / "target"
    with pytest.raises(TruncatedError, match=f"volume big.airbundle.003 is {damage}"):
        import_(
            volumes,
            signing_key,
            registry=f"oci:{target / 'img'}",
            git=str(target / "git"),
            state_dir=tmp_path / "state",
        )
    assert not target.exists()
    assert not (tmp_path / "state").exists()


def test_import_reads_volumes_in_place_like_a_single_file(
    volumes: Path, spec: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in volumes.iterdir()}
    os.chmod(volumes, 0o555)  # read-only media
    try:
        a = tmp_path / "a"
        import_(
            volumes / "big.airbundle.001",
            signing_key,
            registry=f"oci:{a / 'img'}",
            git=str(a / "git"),
        )
    finally:
        os.chmod(volumes, 0o755)
    assert {p.name: p.stat().st_mtime_ns for p in volumes.iterdir()} == before
    single = export(spec, tmp_path / "single.airbundle", signing_key, source_date_epoch=EPOCH)
    b = tmp_path / "b"
    import_(single.path, signing_key, registry=f"oci:{b / 'img'}", git=str(b / "git"))
    assert (a / "img" / "index.json").read_bytes() == (b / "img" / "index.json").read_bytes()
    assert sorted(p.name for p in (a / "img/blobs/sha256").iterdir()) == sorted(
        p.name for p in (b / "img/blobs/sha256").iterdir()
    )


def test_split_and_join_without_re_export(spec: Path, signing_key: KeyPair, tmp_path: Path) -> None:
    single = export(spec, tmp_path / "one.airbundle", signing_key, source_date_epoch=EPOCH)
    key = load_signing_key(signing_key.private, passphrase=None)
    index = split_bundle(single.path, VOLUME, (key,), folder=tmp_path / "parts")
    verify_bundle(index, trust_policy(signing_key))
    joined = join_volumes(index, tmp_path / "joined.airbundle")
    assert joined.read_bytes() == single.path.read_bytes()


def test_co_signing_a_volume_set_keeps_every_volume_valid(
    volumes: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    from airbundle.ops.sign import sign_bundle
    from support.keys import make_key

    other = make_key(tmp_path, "reviewer")
    sign_bundle(volumes, load_signing_key(other.private, passphrase=None))
    for n in range(1, 4):
        assert check_one_volume(volumes / f"big.airbundle.00{n}", trust_policy(signing_key)).ok
    both = trust_policy(signing_key.public, other.public, threshold=2)
    # The volume index is co-signed too, so the threshold holds for the set.
    result = verify_bundle(volumes, both)
    assert len(result.authenticated.signatures) == 2
    assert (volumes / "big.airbundle.volumes.sig").read_bytes().count(b"BEGIN SSH SIGNATURE") == 2


def test_sizes_and_presets() -> None:
    assert parse_size("4GiB") == 4 << 30
    assert parse_size("700MB") == 700_000_000
    assert parse_size("fat32") == PRESETS["fat32"] == (4 << 30) - 1
    assert parse_size("dvd") == 4_700_000_000
    with pytest.raises(UsageError, match="invalid size"):
        parse_size("4 bananas")


def test_a_volume_too_small_for_the_prefix_is_refused(
    spec: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match="too small"):
        export(
            spec,
            tmp_path / "out" / "x.airbundle",
            signing_key,
            split_size=1000,
            source_date_epoch=EPOCH,
        )
    assert not any((tmp_path / "out").iterdir())


def test_an_index_naming_other_files_is_refused(volumes: Path, signing_key: KeyPair) -> None:
    index = volumes / "big.airbundle.volumes"
    doc = json.loads(index.read_text())
    doc["volumes"][0]["name"] = "../../etc/passwd"
    index.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="volume 1 is named"):
        verify_bundle(volumes, trust_policy(signing_key))


def test_a_tampered_index_fails_its_signature(volumes: Path, signing_key: KeyPair) -> None:
    index = volumes / "big.airbundle.volumes"
    index.write_bytes(index.read_bytes().replace(b'"coveredFrom"', b' "coveredFrom"', 1))
    with pytest.raises(IntegrityError, match="volume index"):
        verify_bundle(volumes, trust_policy(signing_key))
    assert issubclass(ArchiveError, IntegrityError)  # the error family used for volume damage
