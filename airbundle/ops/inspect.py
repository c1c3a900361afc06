"""Inspect: what a bundle says it holds, read from its prefix only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airbundle.adapters.media import open_media
from airbundle.format.manifest import BundleManifest
from airbundle.limits import DEFAULT_LIMITS, Limits
from airbundle.ops.sign import journal_hint_on_failure
from airbundle.ops.unverified import read_unverified
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
            "charts": doc.get("charts", []),
            "files": doc.get("files", []),
            "formatVersion": doc["formatVersion"],
            "scan": doc.get("scan"),
            "base": doc.get("base", []),
            "vetting": doc.get("vetting"),
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
    with journal_hint_on_failure(open_media(path).first):
        bundle = read_unverified(path, limits=limits)
    reports = tuple(r for r, _ in check_signatures(bundle.prefix))
    return Inspection(path, bundle.size, bundle.manifest, reports)
