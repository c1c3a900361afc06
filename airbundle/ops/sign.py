"""Co-signing: add an approval signature to a bundle without touching its content.

Only the prefix region (manifest + signatures) is rewritten, in place. The old
region is saved to a journal beside the bundle first, so a crash mid-write is
undone by the next `sign` with the same key (format/journal.py says what a
journal must prove before a byte of it is written back).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airbundle.adapters.fsutil import open_regular, read_optional, read_regular, write_atomic
from airbundle.adapters.media import Media, open_media
from airbundle.errors import AirbundleError, IntegrityError, SignatureError, UsageError
from airbundle.format import journal, sshsig
from airbundle.format.archive import (
    HEADER_SIZE,
    Prefix,
    encode_prefix,
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


@dataclass(frozen=True)
class _Accepted:
    record: journal.Journal
    current: bytes  # the bundle's prefix region as it is now


def _read_binding(fh: BinaryIO, name: str, *, source: str) -> tuple[journal.Binding, bytes]:
    """The bundle file as a journal names it, and its header's 40 bytes."""
    fh.seek(0)
    header_bytes = fh.read(HEADER_SIZE)
    header = read_file_header(header_bytes, source=source)
    fh.seek(HEADER_SIZE + header.prefix_length)
    head = fh.read(journal.CONTENT_PROBE)
    binding = journal.Binding(
        name,
        os.fstat(fh.fileno()).st_size,
        journal.sha256_hex(header_bytes),
        header.prefix_length,
        journal.sha256_hex(head),
        len(head),
    )
    return binding, header_bytes


def _prefix_of(header_bytes: bytes, region: bytes, *, source: str) -> Prefix:
    return read_prefix_region(io.BytesIO(header_bytes + region), source=source)


def _accept(
    bundle: Path, data: bytes, limits: Limits, signer: sshsig.PublicKey | None
) -> _Accepted:
    """The journal beside `bundle`, if it proves it was left by an interrupted
    `sign` (by `signer`, when given) of this very bundle; else an
    IntegrityError saying why not. Nothing is written here."""
    name = journal_path(bundle).name
    source = str(journal_path(bundle))
    if not (os.access(bundle, os.W_OK) and os.access(bundle.parent, os.W_OK)):
        # `sign` could not have written the bundle here: the journal is not ours.
        raise SignatureError(f"{name} lies on read-only media, where no `airbundle sign` ran")
    record = journal.decode(data, source=source, max_signature_bytes=limits.max_signature_bytes)
    if signer is not None and record.signer != signer:
        raise SignatureError(
            f"{name} was written by {record.signer.fingerprint}, "
            f"not by this key ({signer.fingerprint})"
        )
    with open_regular(bundle, limit=None, what="bundle", error=UsageError) as fh:
        binding, header_bytes = _read_binding(fh, bundle.name, source=str(bundle))
        fh.seek(HEADER_SIZE)
        current = fh.read(binding.prefix_length)
    if record.binding != binding:
        raise SignatureError(
            f"{name} belongs to another bundle, or to this one in another state "
            "(its header, size or content differ)"
        )
    old = _prefix_of(header_bytes, record.old, source=f"{source} (saved region)")
    new = _prefix_of(header_bytes, record.new, source=f"{source} (new region)")
    if (
        old.manifest != new.manifest
        or journal.sha256_hex(old.manifest) != record.manifest
        or [sig for _, sig in new.signatures[:-1]] != [sig for _, sig in old.signatures]
        or len(new.signatures) != len(old.signatures) + 1
    ):
        raise SignatureError(
            f"{name} would change the manifest or the signatures it held; "
            "`sign` only ever adds one signature"
        )
    if not journal.torn_between(current, record.old, record.new):
        raise SignatureError(
            f"{name} does not describe the bundle's prefix region as it is now: "
            "the region is not what an interrupted `sign` leaves"
        )
    return _Accepted(record, current)


def recover_journal(
    bundle: Path, key: Ed25519PrivateKey, *, limits: Limits = DEFAULT_LIMITS
) -> bool:
    """Finish what an interrupted `sign` with this key left: keep the new
    prefix if it was written whole, else put back the saved one. Only the
    prefix region is ever written, only bytes the journal proves this key's
    `sign` wrote first, and only over what that `sign` left. True if there was
    a journal; SignatureError if there is one that cannot be used."""
    path = journal_path(bundle)
    data = read_optional(
        path, limit=limits.max_sign_journal_bytes, what="sign journal", error=SignatureError
    )
    if data is None:
        return False
    try:
        accepted = _accept(bundle, data, limits, sshsig.public_key_of(key))
    except IntegrityError as exc:
        raise SignatureError(
            f"{bundle}: a sign journal cannot be used: {exc.message}",
            hint=_REFUSED_HINT,
        ) from None
    record = accepted.record
    if accepted.current not in (record.old, record.new):
        with open_regular(
            bundle, limit=None, what="bundle", error=UsageError, writable=True
        ) as fh:
            fh.seek(HEADER_SIZE)
            fh.write(record.old)
            fh.flush()
            os.fsync(fh.fileno())
    path.unlink()
    return True


_REFUSED_HINT = (
    "nothing was changed; copy the bundle again from the original media (a journal "
    "that is not yours is never used: remove it)"
)


def journal_hint(bundle: Path) -> str | None:
    """For a bundle that failed verification: a journal `sign` would accept, or
    one it would refuse (never a suggestion to run `sign` on that one)."""
    try:
        first = open_media(bundle).first
    except (AirbundleError, OSError):
        first = bundle
    path = journal_path(first)
    if not path.exists() and not path.is_symlink():
        return None
    try:
        data = read_regular(
            path,
            limit=DEFAULT_LIMITS.max_sign_journal_bytes,
            what="sign journal",
            error=SignatureError,
        )
        accepted = _accept(first, data, DEFAULT_LIMITS, None)
    except (AirbundleError, OSError) as exc:
        reason = exc.message if isinstance(exc, AirbundleError) else str(exc)
        return f"{path.name} cannot be used ({reason}); {_REFUSED_HINT}"
    # Well formed, bound to this bundle, signed: but only by the key it names.
    return (
        f"{path.name} was left by an interrupted `airbundle sign` with key "
        f"{accepted.record.signer.fingerprint}: only `airbundle sign` with that key can use "
        "it (run it again to repair the bundle, then verify); any other key refuses it, so "
        "if that key is not yours, copy the bundle again from the original media"
    )


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
    bundle = open_media(path, limits=limits).first
    recover_journal(bundle, key, limits=limits)
    media, fh = open_first_volume(path, writable=True, limits=limits)
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
                        _refresh_parity(media)
                    return SignResult(bundle, signer.fingerprint, len(prefix.signatures), False)
            except SignatureError:
                pass  # kept as found; verify reports it
            existing.append(armored)
        signatures = [*existing, sshsig.sign(prefix.manifest, key)]
        binding, _header = _read_binding(fh, bundle.name, source=str(bundle))
        fh.seek(HEADER_SIZE)
        old = fh.read(binding.prefix_length)
        mtime = int(manifest.bundle.created.timestamp())
        new = encode_prefix(
            prefix.manifest, signatures, capacity=binding.prefix_length, mtime=mtime
        )
        write_atomic(
            journal_path(bundle), journal.encode(binding, prefix.manifest, old, new, key)
        )
        rewrite_prefix(fh, prefix.manifest, signatures, mtime=mtime, source=str(bundle))
        fh.flush()
        os.fsync(fh.fileno())
    with contextlib.suppress(FileNotFoundError):
        journal_path(bundle).unlink()
    if media.index is not None:
        _cosign_index(media, key)
        _refresh_parity(media)
    return SignResult(bundle, signer.fingerprint, len(signatures), True)


def _refresh_parity(media: Media) -> None:
    """Parity volumes keep a copy of the first volume's prefix region (outside
    what the code and the index cover): it follows the new signatures, so a
    first volume rebuilt later carries them."""
    if media.index is not None and media.index.parity is not None:
        assert media.folder is not None
        from airbundle.adapters.parity import Layout, refresh_prefix_copies

        refresh_prefix_copies(Layout(media.folder, media.index))


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
