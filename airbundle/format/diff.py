"""What changed between two bundles: what a reviewer reads before approving."""

from __future__ import annotations

from dataclasses import dataclass, field

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
            )
        )


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
    old_blobs = {m.digest for m in a.members if m.path.startswith(BLOB_PREFIX)}
    for m in b.members:
        if m.path.startswith(BLOB_PREFIX) and m.digest not in old_blobs:
            out.new_blobs += 1
            out.new_blob_bytes += m.size
    return out
