"""Inspect: what a bundle says it holds, read from its prefix only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airbundle.adapters.media import open_media
from airbundle.errors import UsageError
from airbundle.format.archive import read_prefix_region
from airbundle.format.manifest import BundleManifest, format_time
from airbundle.limits import DEFAULT_LIMITS, Limits
from airbundle.ops.sign import journal_hint_on_failure
from airbundle.ops.verify import SignatureReport, check_signatures


@dataclass(frozen=True)
class Inspection:
    path: Path
    file_size: int
    manifest: BundleManifest
    signatures: tuple[SignatureReport, ...]

    def to_json(self) -> dict[str, Any]:
        doc = self.manifest.to_json()
        return {
            "file": str(self.path),
            "fileSize": self.file_size,
            "contentSize": self.manifest.total_size,
            "bundle": doc["bundle"],
            "images": doc["images"],
            "repos": doc["repos"],
            "scan": doc.get("scan"),
            "base": doc.get("base", []),
            "members": len(self.manifest.members),
            "signatures": [
                {
                    "member": s.member,
                    "fingerprint": s.fingerprint,
                    "valid": s.valid,
                    "problem": s.problem,
                }
                for s in self.signatures
            ],
            "note": "signatures checked for validity only; run verify with --trust to check trust",
        }


def inspect_bundle(path: Path, *, limits: Limits = DEFAULT_LIMITS) -> Inspection:
    """Reads the manifest without a trust decision: for display, never for import."""
    media = open_media(path)
    try:
        fh = media.first.open("rb")
    except OSError as exc:
        raise UsageError(f"cannot open bundle {media.first}: {exc.strerror}") from None
    with fh, journal_hint_on_failure(media.first):
        prefix = read_prefix_region(fh, source=media.description, limits=limits)
        size = media.index.total_length if media.index else fh.seek(0, 2)
        manifest = BundleManifest.from_bytes(prefix.manifest, limits=limits)
    reports = tuple(r for r, _ in check_signatures(prefix))
    return Inspection(path, size, manifest, reports)


__all__ = ["Inspection", "format_time", "inspect_bundle"]
