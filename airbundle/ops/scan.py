"""No image left behind: compare the images GitOps repositories reference with
what a bundle carries."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from airbundle.adapters.trees import folder_yaml, repo_yaml
from airbundle.format.imagescan import Carried, Finding, missing, scan_text
from airbundle.format.manifest import ScanIssue, ScanSummary
from airbundle.ops.collect import CollectedImage


def carried_images(images: Iterable[CollectedImage]) -> Carried:
    refs: set[str] = set()
    digests: set[str] = set()
    names: set[str] = set()
    for image in images:
        refs.add(str(image.ref))
        names.add(image.ref.name)
        digests.update(str(d) for d in image.documents)
        if image.source_digest is not None:
            digests.add(str(image.source_digest))
    return Carried(frozenset(refs), frozenset(digests), frozenset(names))


def scan_folder(root: Path) -> tuple[int, list[Finding]]:
    files = 0
    found: list[Finding] = []
    for path, text in folder_yaml(root):
        files += 1
        found.extend(scan_text(text, path))
    return files, found


def scan_repo(name: str, repo: Path, refs: list[str]) -> tuple[int, list[Finding]]:
    files = 0
    found: list[Finding] = []
    for ref, path, text in repo_yaml(repo, refs, what=f"repo {name!r}"):
        files += 1
        found.extend(scan_text(text, f"{name}:{ref}:{path}"))
    return files, found


def summarize(files: int, findings: list[Finding], carried: Carried) -> ScanSummary:
    issues = tuple(
        ScanIssue(f.text, f.path, f.line, f.kind if f.problem is None else f"{f.kind}: {f.problem}")
        for f in missing(findings, carried)
    )
    return ScanSummary(files, len(findings), issues)
