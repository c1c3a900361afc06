"""Verification: authenticate the manifest first, then check every member as it streams.

The steps follow python-tuf's trusted-metadata idea: each step takes bytes
and returns a verified value or raises; nothing downstream sees unverified
data. `verify` and `import` share this code; import only adds sinks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from airbundle.errors import (
    ArchiveError,
    ManifestError,
    MemberDigestError,
    SignatureError,
    TruncatedError,
    UsageError,
)
from airbundle.format import sshsig
from airbundle.format.archive import BundleReader, Prefix
from airbundle.format.digest import Digest
from airbundle.format.manifest import BundleManifest, MemberEntry
from airbundle.format.tarstream import DIRECTORY, TarMember
from airbundle.format.trust import TrustedKey, TrustPolicy
from airbundle.limits import DEFAULT_LIMITS, Limits
from airbundle.ops.volumes import opened_bundle

Progress = Callable[[int], None]


@dataclass(frozen=True)
class SignatureReport:
    member: str
    fingerprint: str | None  # None when the signature could not be parsed
    valid: bool
    trusted: bool
    problem: str | None = None


@dataclass(frozen=True)
class Authenticated:
    """A manifest whose signatures met the trust policy."""

    manifest: BundleManifest
    manifest_bytes: bytes
    manifest_digest: Digest
    signers: tuple[TrustedKey, ...]
    signatures: tuple[SignatureReport, ...]


def check_signatures(prefix: Prefix) -> list[tuple[SignatureReport, sshsig.PublicKey | None]]:
    """Cryptographic check of each signature over the manifest bytes (no trust yet)."""
    out: list[tuple[SignatureReport, sshsig.PublicKey | None]] = []
    for name, armored in prefix.signatures:
        try:
            key = sshsig.verify(prefix.manifest, armored)
        except SignatureError as exc:
            try:
                fp: str | None = sshsig.parse_signature(armored).public_key.fingerprint
            except SignatureError:
                fp = None
            out.append((SignatureReport(name, fp, False, False, exc.message), None))
            continue
        out.append((SignatureReport(name, key.fingerprint, True, False), key))
    return out


def authenticate(
    prefix: Prefix,
    policy: TrustPolicy,
    *,
    source: str,
    at: datetime | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Authenticated:
    if not prefix.signatures:
        raise SignatureError(f"{source}: the bundle carries no signature; it cannot be trusted")
    when = at or datetime.now(UTC)
    checked = check_signatures(prefix)
    valid = [(report.member, key) for report, key in checked if key is not None]
    try:
        signers = policy.check(valid, namespace=sshsig.NAMESPACE, at=when)
    except SignatureError as exc:
        bad = [f"{r.member}: {r.problem}" for r, key in checked if key is None]
        detail = ("; invalid signatures: " + "; ".join(bad)) if bad else ""
        raise SignatureError(f"{source}: {exc.message}{detail}", hint=exc.hint) from None
    trusted = {s.public_key for s in signers}
    reports = tuple(
        SignatureReport(
            r.member, r.fingerprint, r.valid, key in trusted if key else False, r.problem
        )
        for r, key in checked
    )
    # Only now, with the bytes authenticated, is the manifest parsed.
    manifest = BundleManifest.from_bytes(prefix.manifest, limits=limits)
    if manifest.format_version != prefix.format_version:
        raise ManifestError(
            f"{source}: the header says format version {prefix.format_version}, the signed "
            f"manifest {manifest.format_version}"
        )
    return Authenticated(
        manifest, prefix.manifest, Digest.sha256_of(prefix.manifest), tuple(signers), reports
    )


def _verified_chunks(
    reader: BundleReader, entry: MemberEntry, progress: Progress | None
) -> Iterator[bytes]:
    """The member's bytes; raises MemberDigestError after the last chunk if they are wrong.

    A sink that commits only after exhausting this iterator can never commit
    unverified bytes.
    """
    h = hashlib.sha256()
    for chunk in reader.iter_data():
        h.update(chunk)
        if progress:
            progress(len(chunk))
        yield chunk
    if h.hexdigest() != entry.digest.hex:
        raise MemberDigestError(
            f"{reader.source}: member {entry.path!r} is corrupt or was tampered with: "
            f"its content has digest sha256:{h.hexdigest()}, "
            f"the signed manifest says {entry.digest}",
            member=entry.path,
        )


MemberSink = Callable[[TarMember, MemberEntry, Iterator[bytes]], None]


def _drain(_member: TarMember, _entry: MemberEntry, chunks: Iterator[bytes]) -> None:
    for _ in chunks:
        pass


def _folders(paths: Iterable[str]) -> set[str]:
    """Every folder the listed paths imply (images, images/blobs, ...)."""
    out: set[str] = set()
    for path in paths:
        while "/" in path:
            path = path.rsplit("/", 1)[0]
            if path in out:
                break
            out.add(path)
    return out


def stream_members(
    reader: BundleReader,
    manifest: BundleManifest,
    sink: MemberSink = _drain,
    *,
    progress: Progress | None = None,
) -> None:
    """Walk every content member, checking it against the manifest as it passes.

    Every tar entry must be one the manifest declares: a listed file, once;
    in a bundle without a seek table also a folder its paths imply, once
    (a bundle with one holds exactly the listed members, in order). So the
    number of entries, and the time spent on them, is bounded by the signed
    manifest, not by what the media holds.
    """
    reader.expect_content(manifest.members, manifest.seek_table)
    ordered = manifest.seek_table is not None
    expected = manifest.member_index
    folders = _folders(expected)
    seen: set[str] = set()
    seen_folders: set[str] = set()
    while True:
        member = reader.next_member()
        if member is None:
            break
        if member.kind == DIRECTORY:
            if ordered or member.path not in folders or member.path in seen_folders:
                raise ArchiveError(
                    f"{reader.source}: folder entry {member.path!r} is not declared by the "
                    "manifest" + (" (again)" if member.path in seen_folders else "")
                )
            seen_folders.add(member.path)
            continue
        entry = expected.get(member.path)
        if entry is None:
            raise ArchiveError(
                f"{reader.source}: member {member.path!r} is not listed in the signed manifest",
                member=member.path,
            )
        if member.path in seen:
            raise ArchiveError(
                f"{reader.source}: member {member.path!r} appears twice", member=member.path
            )
        if ordered and manifest.members[len(seen)].path != member.path:
            raise ArchiveError(
                f"{reader.source}: member {member.path!r} is out of order: the signed manifest "
                f"lists {manifest.members[len(seen)].path!r} there",
                member=member.path,
            )
        seen.add(member.path)
        if member.size != entry.size:
            raise MemberDigestError(
                f"{reader.source}: member {member.path!r} has {member.size} bytes in the archive, "
                f"the signed manifest says {entry.size}",
                member=member.path,
            )
        chunks = _verified_chunks(reader, entry, progress)
        sink(member, entry, chunks)
        # A sink that stops early must not leave unchecked bytes behind.
        for _ in chunks:
            pass
    missing = [p for p in expected if p not in seen]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise TruncatedError(
            f"{reader.source}: member {missing[0]!r}{more} listed in the manifest "
            "is missing from the archive",
            member=missing[0],
        )
    reader.check_layout()


@dataclass(frozen=True)
class VerifyResult:
    path: Path
    authenticated: Authenticated
    members: int
    bytes: int
    # A set with parity: volumes rebuilt for the check, and parity volumes
    # found damaged (name -> what is wrong).
    rebuilt: dict[str, str] = field(default_factory=dict)
    parity_damaged: dict[str, str] = field(default_factory=dict)


def load_policy(trust: list[TrustedKey], threshold: int) -> TrustPolicy:
    if not trust:
        raise UsageError("no trusted keys given (--trust PUBKEY or --trust allowed_signers)")
    return TrustPolicy(tuple(trust), threshold)


def verify_bundle(
    path: Path,
    policy: TrustPolicy,
    *,
    limits: Limits = DEFAULT_LIMITS,
    progress: Progress | None = None,
    at: datetime | None = None,
) -> VerifyResult:
    """Signatures, then every member. A bundle with a signed seek table, on a
    regular file or a volume set and at least `Limits.parallel_read_min_bytes`,
    is read in sections by `Limits.read_workers` threads (ops/sections.py);
    any other, front to back."""
    verdict = None
    if limits.read_workers > 1:
        # Imported here: a small bundle's verify need not load it.
        from airbundle.ops.sections import DamagedInPlace, verify_in_place

        try:
            found = verify_in_place(path, policy, limits=limits, progress=progress, at=at)
        except DamagedInPlace as damaged:
            verdict = damaged.verdict  # read again front to back, for its own error
        else:
            if found is not None:
                auth, media = found
                manifest = auth.manifest
                repairing = media.repairing
                return VerifyResult(
                    path,
                    auth,
                    len(manifest.members),
                    manifest.total_size,
                    media.rebuilt(),
                    repairing.check_parity() if repairing is not None else {},
                )
    with opened_bundle(path, policy, at=at) as (media, fh):
        source = media.description
        reader = BundleReader(fh, source=source, limits=limits)
        auth = authenticate(reader.read_prefix(), policy, source=source, at=at, limits=limits)
        stream_members(reader, auth.manifest, progress=progress)
        repairing = media.repairing
        parity_damaged = repairing.check_parity() if repairing is not None else {}
    if verdict is not None:
        raise verdict
    return VerifyResult(
        path,
        auth,
        len(auth.manifest.members),
        auth.manifest.total_size,
        media.rebuilt(),
        parity_damaged,
    )
