"""What changed between two bundles: what a reviewer reads before approving."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from airbundle.format.manifest import BLOB_PREFIX, BundleManifest


@dataclass
class BundleDiff:
    images_added: list[tuple[str, str]] = field(default_factory=list)  # ref, digest
    images_removed: list[tuple[str, str]] = field(default_factory=list)
    images_updated: list[tuple[str, str, str]] = field(default_factory=list)  # ref, old, new
    refs_added: list[tuple[str, str, str]] = field(default_factory=list)  # repo, ref, oid
    refs_removed: list[tuple[str, str, str]] = field(default_factory=list)
    refs_moved: list[tuple[str, str, str, str]] = field(default_factory=list)  # repo, ref, old, new
    new_blob_bytes: int = 0  # bytes of blobs in B that A did not carry
    new_blobs: int = 0
    charts_added: list[tuple[str, str, str]] = field(default_factory=list)  # name, version, ref
    charts_removed: list[tuple[str, str, str]] = field(default_factory=list)
    # name, version: the same chart version with other content (rebuilt, or the source lied)
    charts_changed: list[tuple[str, str, str, str]] = field(default_factory=list)  # +old, new
    files_added: list[tuple[str, str]] = field(default_factory=list)  # name, digest
    files_removed: list[tuple[str, str]] = field(default_factory=list)
    files_changed: list[tuple[str, str, str]] = field(default_factory=list)  # name, old, new

    @property
    def empty(self) -> bool:
        return not any(
            (
                self.images_added,
                self.images_removed,
                self.images_updated,
                self.refs_added,
                self.refs_removed,
                self.refs_moved,
                self.charts_added,
                self.charts_removed,
                self.charts_changed,
                self.files_added,
                self.files_removed,
                self.files_changed,
            )
        )


    def to_json(self) -> dict[str, Any]:
        """diff --json: every change an object with named fields, grouped by kind."""
        return {
            "images": {
                "added": [{"ref": r, "digest": d} for r, d in self.images_added],
                "removed": [{"ref": r, "digest": d} for r, d in self.images_removed],
                "updated": [{"ref": r, "from": a, "to": b} for r, a, b in self.images_updated],
            },
            "refs": {
                "added": [{"repo": p, "ref": r, "commit": c} for p, r, c in self.refs_added],
                "removed": [{"repo": p, "ref": r, "commit": c} for p, r, c in self.refs_removed],
                "moved": [
                    {"repo": p, "ref": r, "from": a, "to": b} for p, r, a, b in self.refs_moved
                ],
            },
            "charts": {
                "added": [{"name": n, "version": v, "ref": r} for n, v, r in self.charts_added],
                "removed": [
                    {"name": n, "version": v, "ref": r} for n, v, r in self.charts_removed
                ],
                "changed": [
                    {"name": n, "version": v, "from": a, "to": b}
                    for n, v, a, b in self.charts_changed
                ],
            },
            "files": {
                "added": [{"name": n, "digest": d} for n, d in self.files_added],
                "removed": [{"name": n, "digest": d} for n, d in self.files_removed],
                "changed": [{"name": n, "from": a, "to": b} for n, a, b in self.files_changed],
            },
            "newBlobs": self.new_blobs,
            "newBlobBytes": self.new_blob_bytes,
        }


def diff(a: BundleManifest, b: BundleManifest) -> BundleDiff:
    out = BundleDiff()
    old = {str(i.ref): str(i.digest) for i in a.images}
    new = {str(i.ref): str(i.digest) for i in b.images}
    for ref in sorted(new.keys() - old.keys()):
        out.images_added.append((ref, new[ref]))
    for ref in sorted(old.keys() - new.keys()):
        out.images_removed.append((ref, old[ref]))
    for ref in sorted(old.keys() & new.keys()):
        if old[ref] != new[ref]:
            out.images_updated.append((ref, old[ref], new[ref]))
    old_refs = {(r.name, ref.name): ref.target for r in a.repos for ref in r.refs}
    new_refs = {(r.name, ref.name): ref.target for r in b.repos for ref in r.refs}
    for key in sorted(new_refs.keys() - old_refs.keys()):
        out.refs_added.append((*key, new_refs[key]))
    for key in sorted(old_refs.keys() - new_refs.keys()):
        out.refs_removed.append((*key, old_refs[key]))
    for key in sorted(old_refs.keys() & new_refs.keys()):
        if old_refs[key] != new_refs[key]:
            out.refs_moved.append((*key, old_refs[key], new_refs[key]))
    _charts(a, b, out)
    _files(a, b, out)
    old_blobs = {m.digest for m in a.members if m.path.startswith(BLOB_PREFIX)}
    for m in b.members:
        if m.path.startswith(BLOB_PREFIX) and m.digest not in old_blobs:
            out.new_blobs += 1
            out.new_blob_bytes += m.size
    return out


def _charts(a: BundleManifest, b: BundleManifest, out: BundleDiff) -> None:
    """Charts by name and version (a new version is an added chart, as Helm
    keeps every version); the same version with another .tgz is changed."""
    old = {(c.name, c.version): c for c in a.charts}
    new = {(c.name, c.version): c for c in b.charts}
    for key in sorted(new.keys() - old.keys()):
        out.charts_added.append((*key, str(new[key].ref)))
    for key in sorted(old.keys() - new.keys()):
        out.charts_removed.append((*key, str(old[key].ref)))
    for key in sorted(old.keys() & new.keys()):
        if old[key].chart_digest != new[key].chart_digest:
            out.charts_changed.append(
                (*key, str(old[key].chart_digest), str(new[key].chart_digest))
            )


def _files(a: BundleManifest, b: BundleManifest, out: BundleDiff) -> None:
    old = {f.name: str(f.digest) for f in a.files}
    new = {f.name: str(f.digest) for f in b.files}
    for name in sorted(new.keys() - old.keys()):
        out.files_added.append((name, new[name]))
    for name in sorted(old.keys() - new.keys()):
        out.files_removed.append((name, old[name]))
    for name in sorted(old.keys() & new.keys()):
        if old[name] != new[name]:
            out.files_changed.append((name, old[name], new[name]))
