"""No image left behind: compare the images GitOps repositories reference with
what a bundle carries."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from airbundle.adapters.trees import folder_yaml, repo_yaml
from airbundle.format.imagescan import (
    Carried,
    Finding,
    missing,
    not_scanned,
    resolve_overrides,
    scan_text,
)
from airbundle.format.manifest import ImageEntry, MemberEntry, ScanIssue, ScanSummary, Unscanned
from airbundle.limits import DEFAULT_LIMITS, Limits


def carried(images: Iterable[ImageEntry], members: Iterable[MemberEntry]) -> Carried:
    """What a bundle carries, for `scan --bundle` and `export --check-images`
    alike: its images' references and names, and every member's digest: the
    subset index of a platform subset and, where the bundle carries it, the
    upstream index it came from (a reference pinned to that resolves where the
    target takes a sparse index; a bundle from before it was carried does not
    hold it, and pins on it do not resolve)."""
    images = list(images)
    digests = {str(m.digest) for m in members}
    return Carried(
        frozenset(str(i.ref) for i in images),
        frozenset(digests),
        frozenset(i.ref.name for i in images),
    )


def scan_folder(root: Path, *, limits: Limits = DEFAULT_LIMITS) -> tuple[int, list[Finding]]:
    """Files read and findings (not-scanned files among them) below `root`."""
    files = 0
    found: list[Finding] = []
    skipped: list[tuple[str, str]] = []
    for path, text in folder_yaml(root, limits=limits, skipped=skipped):
        files += 1
        found.extend(scan_text(text, path, limits=limits))
    found += [not_scanned(path, why) for path, why in skipped]
    return files, resolve_overrides(found)


def scan_repo(
    name: str, repo: Path, refs: list[str], *, limits: Limits = DEFAULT_LIMITS
) -> tuple[int, list[Finding]]:
    """The same for the tips of `refs` in a repository (paths `NAME:REF:PATH`);
    kustomize overrides resolved within each ref."""
    files = 0
    by_ref: dict[str, list[Finding]] = {}
    skipped: list[tuple[str, str]] = []
    what = f"repo {name!r}"
    for ref, path, text in repo_yaml(repo, refs, what=what, limits=limits, skipped=skipped):
        files += 1
        by_ref.setdefault(ref, []).extend(scan_text(text, f"{name}:{ref}:{path}", limits=limits))
    found = [f for group in by_ref.values() for f in resolve_overrides(group)]
    found += [not_scanned(f"{name}:{where}", why) for where, why in skipped]
    return files, found


# The manifest schema's bound on a scan issue's kind (with its problem).
_KIND_LIMIT = 64


def _issue_kind(f: Finding) -> str:
    """`KIND` or `KIND: problem`, cut to what the manifest schema allows (a
    longer one would make the signed manifest unreadable)."""
    text = f.kind if f.problem is None else f"{f.kind}: {f.problem}"
    return text if len(text) <= _KIND_LIMIT else text[: _KIND_LIMIT - 1] + "…"


def summarize(files: int, findings: list[Finding], carried: Carried) -> ScanSummary:
    issues = tuple(
        ScanIssue(f.text, f.path, f.line, _issue_kind(f)) for f in missing(findings, carried)
    )
    references = [f for f in findings if f.scanned]
    unscanned = tuple(Unscanned(f.path, f.problem or "") for f in findings if not f.scanned)
    return ScanSummary(files, len(references), issues, unscanned)
