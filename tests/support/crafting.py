"""Shared helpers for the archive, bad-input and CLI tests.

Two kinds of help live here:

* :func:`world`: the samples, two key pairs and one bundle exported through
  the library API, built once per test session (tests copy the bundle before
  they change it);
* bundle crafting: build a bundle from (path, bytes) lists, a manifest and
  signatures made with a test key, so that a test can make any one thing
  wrong on purpose (a member missing, a digest that lies, a signature by the
  wrong key, a manifest that is not the first member...).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airbundle.adapters.fsutil import TEMP_MARK
from airbundle.format import archive, sshsig
from airbundle.format.archive import (
    MANIFEST_PATH,
    BundleReader,
    BundleWriter,
    Prefix,
    prefix_upper_bound,
    signature_path,
)
from airbundle.format.digest import Digest
from airbundle.format.manifest import (
    BLOB_PREFIX,
    SEEK_TABLE_DRAFT,
    BundleInfo,
    BundleManifest,
    ImageEntry,
    MemberEntry,
    RepoEntry,
)
from airbundle.format.tarstream import BLOCK, encode_header, padding
from airbundle.format.trust import TrustPolicy
from airbundle.ops.export import ExportOptions, ExportResult, export_bundle
from airbundle.ops.keys import generate_key, load_signing_key, load_trust
from airbundle.ops.specfile import load_spec
from support.env import REPO_ROOT

SAMPLES = REPO_ROOT / "samples"
MAKE_SAMPLES = SAMPLES / "make_samples.py"
SPEC_NAME = "spec.yaml"
# 2024-01-01T00:00:00Z, the samples' epoch: the exported bundle is reproducible.
EPOCH = 1704067200
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
GIT_MEMBER = "repos/gitops.bundle"
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)


# --- the session world ------------------------------------------------------------


@dataclass(frozen=True)
class World:
    root: Path  # samples (layouts/, saved/, gitops/) with spec.yaml beside them
    spec: Path
    key_path: Path
    pub_path: Path
    key: Ed25519PrivateKey
    other_key_path: Path
    other_pub_path: Path
    other_key: Ed25519PrivateKey
    bundle: Path  # pristine: copy before changing it
    export: ExportResult

    @property
    def manifest_bytes(self) -> bytes:
        return self.export.manifest.to_bytes()

    def policy(self, *, other: bool = False) -> TrustPolicy:
        return TrustPolicy(tuple(load_trust([self.other_pub_path if other else self.pub_path])))

    def copy_bundle(self, dest_dir: Path, name: str = "copy.airbundle") -> Path:
        dest = dest_dir / name
        shutil.copyfile(self.bundle, dest)
        return dest


_CACHE: dict[str, World] = {}


def make_samples(out: Path) -> Path:
    """Run samples/make_samples.py into `out` and put spec.yaml beside its output."""
    if shutil.which("git") is None:
        pytest.fail("git not found: apt-get install git", pytrace=False)
    proc = subprocess.run(
        [sys.executable, str(MAKE_SAMPLES), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"make_samples.py failed:\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    shutil.copyfile(SAMPLES / SPEC_NAME, out / SPEC_NAME)
    return out


def export_options(output: Path, *keys: Ed25519PrivateKey) -> ExportOptions:
    return ExportOptions(output=output, keys=tuple(keys), source_date_epoch=EPOCH)


def world(factory: pytest.TempPathFactory) -> World:
    """The samples, two key pairs and one exported bundle, built once per session."""
    # Cached per process: every test module that asks gets the same world.
    if "world" in _CACHE:
        return _CACHE["world"]
    base = factory.mktemp("world")
    root = make_samples(base / "samples")
    keys = base / "keys"
    generate_key(keys / "signer", passphrase=None, comment="signer@test")
    generate_key(keys / "other", passphrase=None, comment="other@test")
    key = load_signing_key(keys / "signer", passphrase=None)
    other = load_signing_key(keys / "other", passphrase=None)
    spec = root / SPEC_NAME
    out = base / "bundle" / "samples.airbundle"
    out.parent.mkdir()
    result = export_bundle(load_spec(spec), export_options(out, key))
    out.chmod(0o444)  # shared by every test: copy it before changing it
    _CACHE["world"] = World(
        root=root,
        spec=spec,
        key_path=keys / "signer",
        pub_path=keys / "signer.pub",
        key=key,
        other_key_path=keys / "other",
        other_pub_path=keys / "other.pub",
        other_key=other,
        bundle=out,
        export=result,
    )
    return _CACHE["world"]


# --- reading bundles --------------------------------------------------------------


@dataclass(frozen=True)
class Parts:
    """A bundle taken apart: what a crafting test rebuilds, with one thing changed."""

    manifest: bytes
    signatures: tuple[bytes, ...]
    members: tuple[tuple[str, bytes], ...]

    def member(self, path: str) -> bytes:
        return dict(self.members)[path]

    def replace_member(self, path: str, data: bytes) -> Parts:
        assert path in dict(self.members), path
        members = tuple((p, data if p == path else d) for p, d in self.members)
        return replace(self, members=members)


def read_parts(path: Path) -> Parts:
    """Every member of a bundle, read without any trust decision (test input only)."""
    with path.open("rb") as fh:
        reader = BundleReader(fh, source=str(path))
        prefix = reader.read_prefix()
        manifest = BundleManifest.from_bytes(prefix.manifest)
        reader.expect_content(manifest.members, manifest.seek_table)
        members = []
        while (member := reader.next_member()) is not None:
            members.append((member.path, b"".join(reader.iter_data())))
    return Parts(prefix.manifest, tuple(sig for _, sig in prefix.signatures), tuple(members))


def read_prefix(path: Path) -> Prefix:
    with path.open("rb") as fh:
        return archive.read_prefix_region(fh, source=str(path))


def content_start(data: bytes) -> int:
    """Offset of the first content byte: header plus the prefix region."""
    return archive.HEADER_SIZE + archive.parse_file_header(data, source="test")


# --- crafting manifests and bundles -----------------------------------------------


def sign(manifest: bytes, key: Ed25519PrivateKey, namespace: str = sshsig.NAMESPACE) -> bytes:
    return sshsig.sign(manifest, key, namespace=namespace)


def blob(data: bytes) -> tuple[str, bytes]:
    """A content member under images/blobs/, named by its digest as manifests require."""
    return (f"{BLOB_PREFIX}{Digest.sha256_of(data).hex}", data)


def small_members() -> list[tuple[str, bytes]]:
    """A few members a manifest with no images and no repos may list."""
    return [
        ("images/oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
        ("images/index.json", b'{"schemaVersion":2,"manifests":[]}'),
        blob(b"layer one\n" * 50),
        blob(bytes(range(256)) * 9),
    ]


def make_manifest(
    members: Iterable[tuple[str, bytes]],
    *,
    images: Sequence[ImageEntry] = (),
    repos: Sequence[RepoEntry] = (),
    name: str = "crafted",
) -> BundleManifest:
    """A manifest listing each (path, bytes) with its true size and digest."""
    entries = tuple(MemberEntry(p, len(d), Digest.sha256_of(d)) for p, d in members)
    info = BundleInfo(
        name=name,
        id="00000000-0000-4000-8000-000000000000",
        created=datetime.fromtimestamp(EPOCH, UTC),
        tool="airbundle tests",
        sequence=1,
    )
    return BundleManifest(info, entries, tuple(images), tuple(repos))


def write_bundle(
    path: Path,
    manifest: bytes | BundleManifest,
    signatures: Sequence[bytes],
    members: Iterable[tuple[str, bytes]],
    *,
    keys: Sequence[Ed25519PrivateKey] = (),
    threads: int = -1,
) -> Path:
    """A bundle written by the real BundleWriter, with exactly these parts.

    A BundleManifest gets the seek table the writer made and is signed by
    `keys` (before `signatures`); manifest bytes are written as given.
    """
    draft = (
        replace(manifest, seek_table=SEEK_TABLE_DRAFT).to_bytes()
        if isinstance(manifest, BundleManifest)
        else manifest
    )
    capacity = prefix_upper_bound(
        len(draft),
        max(len(signatures) + len(keys), 1),
        max((len(s) for s in signatures), default=0) + 1024,
    )
    with path.open("wb") as fh:
        writer = BundleWriter(fh, prefix_capacity=capacity, mtime=EPOCH, threads=threads)
        for member_path, data in members:
            writer.add_bytes(member_path, data)
        table = writer.end_content()
        if isinstance(manifest, BundleManifest):
            data = replace(manifest, seek_table=table).to_bytes()
            signatures = [*(sign(data, key) for key in keys), *signatures]
        else:
            data = manifest
        writer.finish(data, list(signatures))
    return path


def write_parts(path: Path, parts: Parts) -> Path:
    return write_bundle(path, parts.manifest, parts.signatures, parts.members)


def signed_bundle(
    path: Path,
    key: Ed25519PrivateKey,
    members: Sequence[tuple[str, bytes]],
    *,
    listed: Sequence[tuple[str, bytes]] | None = None,
) -> Path:
    """A bundle whose signed manifest lists `listed` (default: `members`) and
    whose archive holds `members`: make them differ to lie about the content."""
    manifest = make_manifest(members if listed is None else listed)
    return write_bundle(path, manifest, [], members, keys=[key])


def tar_bytes(members: Iterable[tuple[str, bytes]], *, end: bool = True) -> bytes:
    """An uncompressed tar stream as the bundle writer makes it."""
    parts: list[bytes] = []
    for member_path, data in members:
        parts += [encode_header(member_path, len(data), mtime=EPOCH), data]
        parts.append(b"\0" * padding(len(data)))
    if end:
        parts.append(END_OF_ARCHIVE)
    return b"".join(parts)


def raw_bundle(path: Path, prefix_tar: bytes, content: bytes, *, compress: bool = True) -> Path:
    """A bundle assembled by hand: any prefix tar, any content (tar, or frames as given).

    For what BundleWriter will not write: a manifest that is not the first
    member, two signatures under one name, foreign frames in the content.
    """
    prefix = zstandard.ZstdCompressor(write_content_size=True).compress(prefix_tar)
    body = zstandard.ZstdCompressor(write_checksum=True).compress(content) if compress else content
    total = archive.HEADER_SIZE + len(prefix) + len(body)
    path.write_bytes(archive._encode_file_header(len(prefix), total) + prefix + body)
    return path


def prefix_tar(manifest: bytes, signatures: Sequence[bytes]) -> bytes:
    members = [(MANIFEST_PATH, manifest)]
    members += [(signature_path(i), sig) for i, sig in enumerate(signatures)]
    return tar_bytes(members, end=False)


# --- checking what is left on disk ------------------------------------------------


def temp_files(*roots: Path) -> list[str]:
    """Every temporary file or folder airbundle may leave under `roots`."""
    found = []
    for root in roots:
        if root.exists():
            found += [str(p) for p in root.rglob(f"*{TEMP_MARK}*")]
            found += [str(p) for p in root.rglob(".airbundle-tmp*")]
    return sorted(set(found))


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (to show that nothing changed)."""
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def flip(data: bytes, pos: int, mask: int = 0xFF) -> bytes:
    out = bytearray(data)
    out[pos] ^= mask
    return bytes(out)


def stream_all(raw: bytes, *, source: str = "fuzz") -> None:
    """Read a bundle's prefix and every member's data (no trust decision)."""
    reader = BundleReader(io.BytesIO(raw), source=source)
    reader.read_prefix()
    while reader.next_member() is not None:
        for _ in reader.iter_data():
            pass


# --- raw tar headers ----------------------------------------------------------------


def with_checksum(header: bytearray | bytes) -> bytes:
    """`header` with its ustar checksum field recomputed."""
    out = bytearray(header)
    out[148:156] = b" " * 8
    out[148:156] = f"{sum(out):06o}".encode("ascii") + b"\0 "
    return bytes(out)


def raw_header(
    name: bytes,
    size: int = 0,
    typeflag: bytes = b"0",
    *,
    prefix: bytes = b"",
    magic: bytes = b"ustar\x0000",
) -> bytes:
    """A ustar header with any name, type and magic (the writer refuses most of them)."""
    header = bytearray(BLOCK)
    header[0 : len(name)] = name
    header[100:108] = b"0000644\0"
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    header[124:136] = f"{size:011o}".encode("ascii") + b"\0"
    header[136:148] = f"{EPOCH:011o}".encode("ascii") + b"\0"
    header[156:157] = typeflag
    header[257:265] = magic
    header[345 : 345 + len(prefix)] = prefix
    return with_checksum(header)


# --- an interrupted `airbundle sign` ------------------------------------------------


class Crash(BaseException):
    """Stands for a power cut or a SIGKILL at one exact point of a run."""


def interrupted_sign(
    bundle: Path, key: Ed25519PrivateKey, written: int, monkeypatch: pytest.MonkeyPatch
) -> bytes:
    """Run the real `sign` of `bundle` until it has written `written` bytes of
    the new prefix region in place (its journal is already on disk), then stop
    it dead: what a crash at that moment leaves. Returns the new region."""
    from airbundle.ops import sign as sign_module

    new: list[bytes] = []

    def torn_rewrite(
        fh: io.BufferedRandom, manifest: bytes, signatures: Sequence[bytes], **kw: object
    ) -> None:
        fh.seek(0)
        capacity = archive.read_file_header(fh.read(archive.HEADER_SIZE), source="t").prefix_length
        region = archive.encode_prefix(manifest, signatures, capacity=capacity, mtime=kw["mtime"])  # type: ignore[arg-type]
        fh.seek(archive.HEADER_SIZE)
        fh.write(region[:written])
        fh.flush()
        new.append(region)
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(sign_module, "rewrite_prefix", torn_rewrite)
        with pytest.raises(Crash):
            sign_module.sign_bundle(bundle, key)
    return new[0]
