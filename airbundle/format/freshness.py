"""Freshness rules: rollback, replay and freeze protection, as pure decisions.

The import side remembers, per target, the last accepted sequence number for
each channel (whichever trusted keys signed it: editing the trust file for a
key rotation must not reset that memory). A bundle is accepted only if it is newer, not
expired, and for the channel the operator names. The decisions live here, as
values; reading and writing the state file is ops/state.py's job.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from airbundle.errors import FreshnessError
from airbundle.format.manifest import BundleManifest, format_time


@dataclass(frozen=True)
class Accepted:
    """What the state remembers about the last bundle accepted on a channel."""

    sequence: int
    manifest_digest: str
    bundle_id: str
    created: str
    imported_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "manifestDigest": self.manifest_digest,
            "bundleId": self.bundle_id,
            "created": self.created,
            "importedAt": self.imported_at,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Accepted:
        return cls(
            sequence=int(doc["sequence"]),
            manifest_digest=str(doc["manifestDigest"]),
            bundle_id=str(doc["bundleId"]),
            created=str(doc.get("created", "")),
            imported_at=str(doc.get("importedAt", "")),
        )


def trust_set_id(fingerprints: list[str], threshold: int) -> str:
    """A short, stable name for a trust policy (its keys and threshold)."""
    text = "\n".join(sorted(set(fingerprints))) + f"\nthreshold={threshold}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Decision:
    action: str  # "import" or "noop"
    notes: tuple[str, ...] = ()  # loud notes on what an override let through


def decide(
    manifest: BundleManifest,
    manifest_digest: str,
    previous: Accepted | None,
    *,
    channel: str,
    now: datetime,
    allow_expired: bool = False,
    allow_rollback: bool = False,
) -> Decision:
    """Whether to import this bundle; raises FreshnessError if it must not be."""
    info = manifest.bundle
    notes: list[str] = []
    if info.channel != channel:
        raise FreshnessError(
            f"bundle {info.name} was signed for channel {info.channel!r}, "
            f"this import is for channel {channel!r}",
            hint=f"import it with --channel {info.channel} if that is where it belongs",
        )
    if info.expires is not None and now > info.expires:
        message = (
            f"bundle {info.name} (sequence {info.sequence}) expired on "
            f"{format_time(info.expires)}; it is now {format_time(now)}"
        )
        if not allow_expired:
            raise FreshnessError(
                message, hint="ask for a fresh bundle, or pass --allow-expired (recorded)"
            )
        notes.append(f"ALLOWED EXPIRED: {message}")
    if previous is not None:
        if info.sequence < previous.sequence:
            message = (
                f"bundle {info.name} has sequence {info.sequence}, older than the "
                f"{previous.sequence} already imported on channel {channel!r} "
                f"(bundle {previous.bundle_id}): a rollback"
            )
            if not allow_rollback:
                raise FreshnessError(
                    message, hint="pass --allow-rollback to go back on purpose (recorded)"
                )
            notes.append(f"ALLOWED ROLLBACK: {message}")
        elif info.sequence == previous.sequence:
            if manifest_digest == previous.manifest_digest:
                return Decision("noop", tuple(notes))
            raise FreshnessError(
                f"bundle {info.name} reuses sequence {info.sequence} on channel {channel!r} "
                f"with different content (manifest {manifest_digest}, the imported one was "
                f"{previous.manifest_digest}): two bundles cannot share a sequence number",
                hint="export again with a higher --sequence",
            )
    return Decision("import", tuple(notes))
