"""Co-signing: add an approval signature to a bundle without touching its content.

Only the prefix region (manifest + signatures) is rewritten, in place. The old
region is saved to a journal beside the bundle first, so a crash mid-write is
undone by the next `sign` (or `recover_journal`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airbundle.adapters.fsutil import write_atomic
from airbundle.adapters.media import Media, open_media
from airbundle.errors import AirbundleError, IntegrityError, SignatureError
from airbundle.format import sshsig
from airbundle.format.archive import (
    HEADER_SIZE,
    read_file_header,
    read_prefix_region,
    rewrite_prefix,
)
from airbundle.format.volumes import SIGNATURE_SUFFIX
from airbundle.limits import DEFAULT_LIMITS, Limits
from airbundle.ops.unverified import open_first_volume, read_manifest


@dataclass(frozen=True)
class SignResult:
    path: Path
    fingerprint: str
    signatures: int
    added: bool


def journal_path(bundle: Path) -> Path:
    return bundle.with_name(bundle.name + ".sign-journal")


def recover_journal(bundle: Path) -> bool:
    """Finish what an interrupted `sign` left: keep the new prefix if it was
    written completely, else put back the saved one. True if there was a journal."""
    journal = journal_path(bundle)
    if not journal.exists():
        return False
    try:
        with bundle.open("rb") as fh:
            read_prefix_region(fh, source=str(bundle))
    except AirbundleError:
        pass  # the rewrite was cut short: restore below
    else:
        # The new prefix is whole (the crash came after it was synced):
        # keep it, so the signature just added is not lost.
        journal.unlink()
        return True
    saved = journal.read_bytes()
    with bundle.open("r+b") as fh:
        fh.write(saved)
        fh.flush()
        os.fsync(fh.fileno())
    journal.unlink()
    return True


def journal_hint(bundle: Path) -> str | None:
    if journal_path(bundle).exists():
        return (
            f"an interrupted `airbundle sign` left {journal_path(bundle).name}; "
            "run `airbundle sign` again to repair the bundle"
        )
    return None


@contextlib.contextmanager
def journal_hint_on_failure(bundle: Path) -> Iterator[None]:
    """An integrity error on a bundle beside which an interrupted `sign` left
    its journal says so: `sign` repairs it."""
    try:
        yield
    except IntegrityError as exc:
        exc.hint = journal_hint(bundle) or exc.hint
        raise


def sign_bundle(
    path: Path, key: Ed25519PrivateKey, *, limits: Limits = DEFAULT_LIMITS
) -> SignResult:
    # In a volume set the prefix lives in the first volume, outside the range
    # the volume index hashes: signing changes no other byte of the volumes.
    bundle = open_media(path).first
    recover_journal(bundle)
    media, fh = open_first_volume(path, mode="r+b", purpose=" for signing")
    with fh:
        # Refuse to approve something that is not a well-formed manifest.
        prefix, manifest = read_manifest(fh, source=str(bundle), limits=limits)
        signer = sshsig.public_key_of(key)
        existing = []
        for _name, armored in prefix.signatures:
            try:
                if sshsig.verify(prefix.manifest, armored) == signer:
                    if media.index is not None:
                        _cosign_index(media, key)
                    return SignResult(bundle, signer.fingerprint, len(prefix.signatures), False)
            except SignatureError:
                pass  # kept as found; verify reports it
            existing.append(armored)
        signatures = [*existing, sshsig.sign(prefix.manifest, key)]
        fh.seek(0)
        header = read_file_header(fh.read(HEADER_SIZE), source=str(bundle))
        fh.seek(0)
        original = fh.read(HEADER_SIZE + header.prefix_length)
        write_atomic(journal_path(bundle), original)
        mtime = int(manifest.bundle.created.timestamp())
        rewrite_prefix(fh, prefix.manifest, signatures, mtime=mtime, source=str(bundle))
        fh.flush()
        os.fsync(fh.fileno())
    with contextlib.suppress(FileNotFoundError):
        journal_path(bundle).unlink()
    if media.index is not None:
        _cosign_index(media, key)
    return SignResult(bundle, signer.fingerprint, len(signatures), True)


def _cosign_index(media: Media, key: Ed25519PrivateKey) -> None:
    """Approve the volume index too, so a threshold holds for the set as well."""
    assert media.index is not None and media.folder is not None
    signer = sshsig.public_key_of(key)
    for armored in media.index_signatures:
        with contextlib.suppress(SignatureError):
            if sshsig.verify(media.index_bytes, armored) == signer:
                return
    data = b"".join([*media.index_signatures, sshsig.sign(media.index_bytes, key)])
    write_atomic(media.folder / (media.index.bundle + SIGNATURE_SUFFIX), data)
