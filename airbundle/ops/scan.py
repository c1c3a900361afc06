"""No image left behind: compare the images GitOps repositories reference with
what a bundle carries."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from airbundle.adapters.trees import folder_yaml, repo_yaml
from airbundle.format.imagescan import Carried, Finding, missing, scan_text
from airbundle.format.manifest import ImageEntry, MemberEntry, ScanIssue, ScanSummary
from airbundle.limits import DEFAULT_LIMITS, Limits


def carried(images: Iterable[ImageEntry], members: Iterable[MemberEntry]) -> Carried:
    """What a bundle carries, for `scan --bundle` and `export --check-images`
    alike: its images' references and names, every member's digest, and the
    source digest of an index cut down to some platforms (a reference pinned
    to it is served by the subset)."""
    images = list(images)
    digests = {str(m.digest) for m in members}
    digests |= {str(i.source_digest) for i in images if i.source_digest is not None}
    return Carried(
        frozenset(str(i.ref) for i in images),
        frozenset(digests),
        frozenset(i.ref.name for i in images),
    )


def scan_folder(root: Path, *, limits: Limits = DEFAULT_LIMITS) -> tuple[int, list[Finding]]:
    files = 0
    found: list[Finding] = []
    for path, text in folder_yaml(root, limits=limits):
        files += 1
        found.extend(scan_text(text, path, limits=limits))
    return files, found


def scan_repo(
    name: str, repo: Path, refs: list[str], *, limits: Limits = DEFAULT_LIMITS
) -> tuple[int, list[Finding]]:
    files = 0
    found: list[Finding] = []
    for ref, path, text in repo_yaml(repo, refs, what=f"repo {name!r}", limits=limits):
        files += 1
        found.extend(scan_text(text, f"{name}:{ref}:{path}", limits=limits))
    return files, found


def summarize(files: int, findings: list[Finding], carried: Carried) -> ScanSummary:
    issues = tuple(
        ScanIssue(f.text, f.path, f.line, f.kind if f.problem is None else f"{f.kind}: {f.problem}")
        for f in missing(findings, carried)
    )
    return ScanSummary(files, len(findings), issues)
