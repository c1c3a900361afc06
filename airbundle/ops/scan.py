"""No image left behind: compare the images GitOps repositories reference with
what a bundle carries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from airbundle.adapters.trees import folder_yaml, repo_yaml
from airbundle.format.chartscan import ChartFinding, HelmRepository, scan_charts_text
from airbundle.format.chartscan import missing as missing_charts
from airbundle.format.chartscan import resolve as resolve_charts
from airbundle.format.helm import ChartEntry
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


@dataclass
class ScanResult:
    """What a scan found: YAML files read, image findings (not-scanned files
    among them), chart references (Flux HelmRelease, Argo CD Application with
    a Helm source, given their HelmRepository's URL when it was scanned too)."""

    files: int = 0
    images: list[Finding] = field(default_factory=list)
    charts: list[ChartFinding] = field(default_factory=list)


def _charts(
    text: str,
    path: str,
    limits: Limits,
    charts: list[ChartFinding],
    repos: list[HelmRepository],
) -> None:
    found, repositories = scan_charts_text(text, path, limits=limits)
    charts.extend(found)
    repos.extend(repositories)


def scan_folder_all(root: Path, *, limits: Limits = DEFAULT_LIMITS) -> ScanResult:
    """Images and charts below `root`."""
    files = 0
    found: list[Finding] = []
    charts: list[ChartFinding] = []
    repos: list[HelmRepository] = []
    skipped: list[tuple[str, str]] = []
    for path, text in folder_yaml(root, limits=limits, skipped=skipped):
        files += 1
        found.extend(scan_text(text, path, limits=limits))
        _charts(text, path, limits, charts, repos)
    found += [not_scanned(path, why) for path, why in skipped]
    return ScanResult(files, resolve_overrides(found), resolve_charts(charts, repos))


def scan_folder(root: Path, *, limits: Limits = DEFAULT_LIMITS) -> tuple[int, list[Finding]]:
    """Files read and findings (not-scanned files among them) below `root`."""
    result = scan_folder_all(root, limits=limits)
    return result.files, result.images


def scan_repo(
    name: str, repo: Path, refs: list[str], *, limits: Limits = DEFAULT_LIMITS
) -> tuple[int, list[Finding]]:
    """The same for the tips of `refs` in a repository (paths `NAME:REF:PATH`);
    kustomize overrides resolved within each ref."""
    result = scan_repo_all(name, repo, refs, limits=limits)
    return result.files, result.images


def scan_repo_all(
    name: str, repo: Path, refs: list[str], *, limits: Limits = DEFAULT_LIMITS
) -> ScanResult:
    """Images and charts at the tips of `refs` in a repository."""
    files = 0
    by_ref: dict[str, list[Finding]] = {}
    charts: list[ChartFinding] = []
    repos: list[HelmRepository] = []
    skipped: list[tuple[str, str]] = []
    what = f"repo {name!r}"
    for ref, path, text in repo_yaml(repo, refs, what=what, limits=limits, skipped=skipped):
        files += 1
        where = f"{name}:{ref}:{path}"
        by_ref.setdefault(ref, []).extend(scan_text(text, where, limits=limits))
        _charts(text, where, limits, charts, repos)
    found = [f for group in by_ref.values() for f in resolve_overrides(group)]
    found += [not_scanned(f"{name}:{where}", why) for where, why in skipped]
    return ScanResult(files, found, resolve_charts(charts, repos))


# The manifest schema's bound on a scan issue's kind (with its problem).
_KIND_LIMIT = 64


def _issue_kind(f: Finding) -> str:
    """`KIND` or `KIND: problem`, cut to what the manifest schema allows (a
    longer one would make the signed manifest unreadable)."""
    text = f.kind if f.problem is None else f"{f.kind}: {f.problem}"
    return text if len(text) <= _KIND_LIMIT else text[: _KIND_LIMIT - 1] + "…"


def summarize(
    files: int,
    findings: list[Finding],
    carried: Carried,
    charts_found: Sequence[ChartFinding] = (),
    charts: Sequence[ChartEntry] = (),
) -> ScanSummary:
    """The references the bundle lacks: images, and charts named by Flux or
    Argo CD that none of the bundle's charts satisfies."""
    issues = tuple(
        ScanIssue(f.text, f.path, f.line, _issue_kind(f)) for f in missing(findings, carried)
    ) + tuple(
        ScanIssue(f.text, f.path, f.line, f.kind) for f in missing_charts(charts_found, charts)
    )
    references = [f for f in findings if f.scanned]
    unscanned = tuple(Unscanned(f.path, f.problem or "") for f in findings if not f.scanned)
    return ScanSummary(files, len(references) + len(charts_found), issues, unscanned)
