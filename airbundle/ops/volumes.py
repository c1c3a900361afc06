"""Volume sets: sign and check their index, split a bundle, join it back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airbundle.adapters.fsutil import atomic_output, open_regular, write_atomic
from airbundle.adapters.media import Media, VolumeWriter, open_media, volume_digest
from airbundle.errors import IntegrityError, SignatureError, UsageError
from airbundle.format import sshsig
from airbundle.format.archive import HEADER_SIZE, read_file_header
from airbundle.format.trust import TrustPolicy
from airbundle.format.volumes import INDEX_SUFFIX, SIGNATURE_SUFFIX, VolumeIndex
from airbundle.limits import DEFAULT_LIMITS
from airbundle.ops.sign import journal_hint_on_failure

if TYPE_CHECKING:
    from airbundle.adapters.parity import RepairResult


def write_index(folder: Path, index: VolumeIndex, keys: tuple[Ed25519PrivateKey, ...]) -> Path:
    """The index and its signatures; the index is the last file written, so a
    set whose index exists is complete."""
    data = index.to_bytes()
    signatures = b"".join(sshsig.sign(data, key) for key in keys)
    write_atomic(folder / (index.bundle + SIGNATURE_SUFFIX), signatures)
    path = folder / (index.bundle + INDEX_SUFFIX)
    write_atomic(path, data)
    return path


def authenticate_index(media: Media, policy: TrustPolicy, *, at: datetime | None = None) -> None:
    """The volume index must be signed like a manifest (same trust, same threshold)."""
    if media.index is None:
        return
    if not media.index_signatures:
        raise SignatureError(f"{media.description}: the volume index carries no signature")
    signers = []
    for i, armored in enumerate(media.index_signatures):
        try:
            signers.append(
                (f"volume index signature {i}", sshsig.verify(media.index_bytes, armored))
            )
        except SignatureError:
            continue
    try:
        policy.check(signers, namespace=sshsig.NAMESPACE, at=at or datetime.now(UTC))
    except SignatureError as exc:
        raise SignatureError(f"{media.description}: volume index: {exc.message}") from None


def name_corrupt_volumes(media: Media, exc: IntegrityError) -> IntegrityError:
    """After a failure inside a volume set, say which volumes are damaged."""
    bad = media.corrupt_volumes()
    if not bad:
        return exc
    return type(exc)(
        f"{exc.message}; damaged volume(s): {', '.join(bad)}",
        hint="copy those volumes again from the original media",
        member=exc.member,
        volumes=tuple(bad),
    )


def rebuilt_notes(rebuilt: dict[str, str]) -> list[str]:
    """What a reader says of the volumes it rebuilt from parity."""
    return [
        f"volume {name} was {'missing' if problem == 'missing' else 'damaged: ' + problem}; "
        "it was rebuilt from the set's parity volumes and matched the signed index"
        for name, problem in sorted(rebuilt.items())
    ]


@dataclass(frozen=True)
class VolumeCheck:
    name: str
    ok: bool
    problem: str | None = None


def check_one_volume(path: Path, policy: TrustPolicy) -> VolumeCheck:
    """Check a single volume against the signed index beside it."""
    media = open_media(path)
    if media.index is None:
        raise UsageError(f"{path} is not a volume of a set (no index beside it)")
    authenticate_index(media, policy)
    entry = media.index.entry(path.name)
    if entry is None:
        raise UsageError(f"{path.name} is not listed in {media.index_path}")
    size = path.stat().st_size
    if size != entry.size:
        return VolumeCheck(entry.name, False, f"{size} bytes, the index says {entry.size}")
    if volume_digest(path, entry.covered_from) != entry.digest:
        return VolumeCheck(entry.name, False, "its bytes do not match the signed index")
    return VolumeCheck(entry.name, True)


def split_bundle(
    bundle: Path,
    volume_size: int,
    keys: tuple[Ed25519PrivateKey, ...],
    *,
    folder: Path | None = None,
    parity: int | float | None = None,
) -> Path:
    """Cut an existing bundle into volumes (no re-export); returns the index."""
    target = folder or bundle.parent
    target.mkdir(parents=True, exist_ok=True)
    with open_regular(bundle, limit=None, what="bundle", error=UsageError) as fh:
        header = read_file_header(fh.read(HEADER_SIZE), source=str(bundle))
        fh.seek(0)
        writer = VolumeWriter(
            target,
            bundle.name,
            volume_size,
            unhashed=HEADER_SIZE + header.prefix_length,
            parity=parity,
        )
        try:
            while chunk := fh.read(DEFAULT_LIMITS.io_chunk_bytes):
                writer.write(chunk)
            index = writer.commit()
        except BaseException:
            writer.abort()
            raise
    return write_index(target, index, keys)


def repair_volumes(
    path: Path, output: Path, policy: TrustPolicy, *, at: datetime | None = None
) -> RepairResult:
    """Rebuild the missing or damaged volumes of a set with parity into
    `output`, byte for byte as the signed index describes them."""
    media = open_media(path)
    if media.index is None or media.folder is None:
        raise UsageError(f"{path} is not a volume set (no .volumes index)")
    if media.index.parity is None:
        raise UsageError(
            f"{media.description} has no parity volumes: nothing can be rebuilt",
            hint="copy the missing or damaged volumes again from the original media",
        )
    authenticate_index(media, policy, at=at)
    from airbundle.adapters.parity import repair_set  # parity code only for repair

    return repair_set(media.folder, media.index, media.description, output)


def join_volumes(index_path: Path, output: Path) -> Path:
    """Concatenate a volume set into one bundle file, checking every volume."""
    media = open_media(index_path)
    if media.index is None:
        raise UsageError(f"{index_path} is not a volume index")
    media.check_present()
    with atomic_output(output) as out, contextlib.closing(media.open()) as src:
        while chunk := src.read(DEFAULT_LIMITS.io_chunk_bytes):
            out.write(chunk)
    return output


@contextlib.contextmanager
def opened_bundle(
    path: Path,
    policy: TrustPolicy | None = None,
    *,
    at: datetime | None = None,
    scratch: Path | None = None,
) -> Iterator[tuple[Media, BinaryIO]]:
    """A bundle file or volume set, opened for one streaming pass.

    For a volume set the signed index is checked first (if a trust policy is
    given) and every volume must be present and whole before anything is read;
    a failure later names the damaged volumes. A set with parity volumes may
    miss up to as many volumes as it has parity volumes: they are rebuilt as
    they are read (into `scratch`, if given; media.rebuilt() names them).
    """
    media = open_media(path)
    media.scratch = scratch
    if policy is not None:
        authenticate_index(media, policy, at=at)
    media.check_present()
    try:
        fh = media.open()
    except OSError as exc:
        raise UsageError(f"cannot open bundle {path}: {exc.strerror}") from None
    try:
        with journal_hint_on_failure(media.first):
            try:
                yield media, fh
            except IntegrityError as exc:
                # (a set with parity checks each volume before using it, and
                # names the bad ones itself)
                if media.index is not None and media.repairing is None:
                    raise name_corrupt_volumes(media, exc) from exc
                raise
    finally:
        fh.close()
