"""Media-sized volumes: each volume checkable on its own, import in place, split
and join without re-export."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import AIRBUNDLE, KeyPair

from airbundle.errors import ArchiveError, IntegrityError, TruncatedError, UsageError
from airbundle.format.volumes import PRESETS, parse_size
from airbundle.ops.export import ExportOptions, ExportResult, export_bundle
from airbundle.ops.importer import ImportOptions, import_bundle
from airbundle.ops.keys import load_signing_key, load_trust
from airbundle.ops.specfile import load_spec
from airbundle.ops.verify import load_policy, verify_bundle
from airbundle.ops.volumes import check_one_volume, join_volumes, split_bundle

VOLUME = 150_000


def _layout(root: Path) -> Path:
    """An OCI layout with one ~500 KB incompressible layer (several volumes' worth)."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes, media_type: str) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        data = hashlib.shake_256(b"airbundle volumes").digest(500_000)
        info = tarfile.TarInfo("data.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    layer = blob(buf.getvalue(), "application/vnd.oci.image.layer.v1.tar")
    config = blob(
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
            }
        ).encode(),
        "application/vnd.oci.image.config.v1+json",
    )
    manifest = blob(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config,
                "layers": [layer],
            }
        ).encode(),
        "application/vnd.oci.image.manifest.v1+json",
    )
    manifest["annotations"] = {"org.opencontainers.image.ref.name": "1"}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return root


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory, sample_tree: Path) -> Path:
    root = tmp_path_factory.mktemp("vol-src")
    _layout(root / "layout")
    path = root / "spec.yaml"
    path.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: big}\nimages:\n"
        "  - ref: oci:layout:1\n    name: example.com/big:1\nrepos:\n"
        f"  - name: gitops\n    url: {sample_tree / 'gitops'}\n"
    )
    return path


def export(spec: Path, out: Path, key: KeyPair, **kw: object) -> ExportResult:
    options = ExportOptions(
        output=out,
        keys=(load_signing_key(key.private, passphrase=None),),
        source_date_epoch=1_700_000_000,
        **kw,
    )  # type: ignore[arg-type]
    return export_bundle(load_spec(spec), options)


def policy(key: KeyPair):  # type: ignore[no-untyped-def]
    return load_policy(load_trust([key.public]), 1)


@pytest.fixture
def volumes(spec: Path, signing_key: KeyPair, tmp_path: Path) -> Path:
    result = export(spec, tmp_path / "media" / "big.airbundle", signing_key, split_size=VOLUME)
    assert result.path == tmp_path / "media" / "big.airbundle.volumes"
    return tmp_path / "media"


def test_split_export_writes_volumes_that_concatenate_to_the_bundle(
    volumes: Path, spec: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    names = sorted(p.name for p in volumes.iterdir())
    assert names[:4] == [f"big.airbundle.00{i}" for i in range(1, 5)]
    assert names[-2:] == ["big.airbundle.volumes", "big.airbundle.volumes.sig"]
    assert all((volumes / n).stat().st_size == VOLUME for n in names[:3])
    single = export(spec, tmp_path / "single.airbundle", signing_key)
    joined = b"".join((volumes / n).read_bytes() for n in names if n[-1].isdigit())
    assert joined == single.path.read_bytes()


def test_verify_accepts_the_set_in_any_of_its_names(volumes: Path, signing_key: KeyPair) -> None:
    # The folder, the index, and the bundle name the export was given (no such
    # file: the set written in its place).
    for name in (volumes, volumes / "big.airbundle.volumes", volumes / "big.airbundle"):
        result = verify_bundle(name, policy(signing_key))
        assert result.members == len(result.authenticated.manifest.members)


def test_each_volume_checks_on_its_own(volumes: Path, signing_key: KeyPair) -> None:
    assert check_one_volume(volumes / "big.airbundle.002", policy(signing_key)).ok
    path = volumes / "big.airbundle.003"
    data = bytearray(path.read_bytes())
    data[1000] ^= 0x01
    path.write_bytes(bytes(data))
    check = check_one_volume(path, policy(signing_key))
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
        verify_bundle(volumes, policy(signing_key))


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
    options = ImportOptions(
        policy=policy(signing_key),
        registry=f"oci:{target / 'img'}",
        git=str(target / "git"),
        state_dir=tmp_path / "state",
    )
    with pytest.raises(TruncatedError, match=f"volume big.airbundle.003 is {damage}"):
        import_bundle(volumes, options)
    assert not target.exists()
    assert not (tmp_path / "state").exists()


def test_import_reads_volumes_in_place_like_a_single_file(
    volumes: Path, spec: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in volumes.iterdir()}
    os.chmod(volumes, 0o555)  # read-only media
    try:
        a = tmp_path / "a"
        import_bundle(
            volumes / "big.airbundle.001",
            ImportOptions(
                policy=policy(signing_key), registry=f"oci:{a / 'img'}", git=str(a / "git")
            ),
        )
    finally:
        os.chmod(volumes, 0o755)
    assert {p.name: p.stat().st_mtime_ns for p in volumes.iterdir()} == before
    single = export(spec, tmp_path / "single.airbundle", signing_key)
    b = tmp_path / "b"
    import_bundle(
        single.path,
        ImportOptions(policy=policy(signing_key), registry=f"oci:{b / 'img'}", git=str(b / "git")),
    )
    assert (a / "img" / "index.json").read_bytes() == (b / "img" / "index.json").read_bytes()
    assert sorted(p.name for p in (a / "img/blobs/sha256").iterdir()) == sorted(
        p.name for p in (b / "img/blobs/sha256").iterdir()
    )


def test_split_and_join_without_re_export(spec: Path, signing_key: KeyPair, tmp_path: Path) -> None:
    single = export(spec, tmp_path / "one.airbundle", signing_key)
    key = load_signing_key(signing_key.private, passphrase=None)
    index = split_bundle(single.path, VOLUME, (key,), folder=tmp_path / "parts")
    verify_bundle(index, policy(signing_key))
    joined = join_volumes(index, tmp_path / "joined.airbundle")
    assert joined.read_bytes() == single.path.read_bytes()


def test_co_signing_a_volume_set_keeps_every_volume_valid(
    volumes: Path, signing_key: KeyPair, tmp_path: Path
) -> None:
    from conftest import make_key

    from airbundle.ops.sign import sign_bundle

    other = make_key(tmp_path, "reviewer")
    sign_bundle(volumes, load_signing_key(other.private, passphrase=None))
    for n in range(1, 4):
        assert check_one_volume(volumes / f"big.airbundle.00{n}", policy(signing_key)).ok
    both = load_policy(load_trust([signing_key.public, other.public]), 2)
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
        export(spec, tmp_path / "out" / "x.airbundle", signing_key, split_size=1000)
    assert not any((tmp_path / "out").iterdir())


def test_an_index_naming_other_files_is_refused(volumes: Path, signing_key: KeyPair) -> None:
    index = volumes / "big.airbundle.volumes"
    doc = json.loads(index.read_text())
    doc["volumes"][0]["name"] = "../../etc/passwd"
    index.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="volume 1 is named"):
        verify_bundle(volumes, policy(signing_key))


def test_a_tampered_index_fails_its_signature(volumes: Path, signing_key: KeyPair) -> None:
    index = volumes / "big.airbundle.volumes"
    index.write_bytes(index.read_bytes().replace(b'"coveredFrom"', b' "coveredFrom"', 1))
    with pytest.raises(IntegrityError, match="volume index"):
        verify_bundle(volumes, policy(signing_key))
    assert ArchiveError  # the error family used for volume damage
