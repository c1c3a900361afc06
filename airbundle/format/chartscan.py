"""Find the Helm charts GitOps manifests will ask a cluster to install, and
tell which of them a bundle does not carry.

Pure: YAML text in, findings with line numbers out. Understands Flux
`HelmRelease` (spec.chart.spec: chart, version, sourceRef to a
`HelmRepository`, whose spec.url says where the chart lives) and Argo CD
`Application` sources with a `chart` (repoURL, chart, targetRevision; a
repoURL without a scheme is an OCI repository, as Argo CD reads it). A
HelmRelease whose HelmRepository is in another file of the same scan gets
its URL; one whose repository is not found is matched by name and version.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import yaml

from airbundle.errors import FormatError
from airbundle.format import semver, yamlsafe
from airbundle.format.helm import ChartEntry, repository_base
from airbundle.limits import DEFAULT_LIMITS, Limits


@dataclass(frozen=True, order=True)
class ChartFinding:
    path: str
    line: int
    chart: str
    version: str | None  # exact or a range, as written; None: any
    repo: str | None  # https://... or oci://...; None: not known
    kind: str  # flux-helm, argocd-helm
    # Flux: the HelmRepository the release names (namespace/name), for resolving repo.
    source: str | None = None

    @property
    def text(self) -> str:
        where = f" from {self.repo}" if self.repo else ""
        return f"chart {self.chart} {self.version or '*'}{where}"


@dataclass(frozen=True)
class HelmRepository:
    key: str  # namespace/name
    url: str


def scan_charts_text(
    text: str, path: str, *, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[ChartFinding], list[HelmRepository]]:
    """Chart references and Flux HelmRepository objects in one YAML file."""
    try:
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except (yaml.YAMLError, RecursionError):
        return [], []
    findings: list[ChartFinding] = []
    repos: list[HelmRepository] = []
    for doc in documents:
        if doc is None:
            continue
        try:
            yamlsafe.check_expansion(doc, path, max_nodes=limits.max_chart_yaml_nodes)
        except FormatError:
            continue
        fields = yamlsafe.fields(doc)
        kind = yamlsafe.text(fields.get("kind"))
        if kind == "HelmRepository":
            repo = _helm_repository(fields)
            if repo is not None:
                repos.append(repo)
        elif kind == "HelmRelease":
            findings.extend(_helm_release(fields, path))
        elif kind in ("Application", "ApplicationSet"):
            findings.extend(_argocd(fields, path))
    return findings, repos


def _namespace(fields: dict[str, yaml.Node], default: str = "") -> str:
    return yamlsafe.text(yamlsafe.fields(fields.get("metadata")).get("namespace")) or default


def _helm_repository(fields: dict[str, yaml.Node]) -> HelmRepository | None:
    name = yamlsafe.text(yamlsafe.fields(fields.get("metadata")).get("name"))
    url = yamlsafe.text(yamlsafe.fields(fields.get("spec")).get("url"))
    if not name or not url:
        return None
    return HelmRepository(f"{_namespace(fields)}/{name}", url)


def _helm_release(fields: dict[str, yaml.Node], path: str) -> Iterator[ChartFinding]:
    spec = yamlsafe.fields(fields.get("spec"))
    chart_node = yamlsafe.fields(spec.get("chart"))
    template = yamlsafe.fields(chart_node.get("spec"))
    name_node = template.get("chart")
    name = yamlsafe.text(name_node)
    if name_node is None or not name:
        return
    source = yamlsafe.fields(template.get("sourceRef"))
    if (yamlsafe.text(source.get("kind")) or "HelmRepository") != "HelmRepository":
        return  # a chart in a GitRepository or Bucket travels with that source
    namespace = yamlsafe.text(source.get("namespace")) or _namespace(fields)
    ref = yamlsafe.text(source.get("name"))
    yield ChartFinding(
        path,
        yamlsafe.line(name_node),
        name,
        yamlsafe.text(template.get("version")),
        None,
        "flux-helm",
        f"{namespace}/{ref}" if ref else None,
    )


def _argocd(fields: dict[str, yaml.Node], path: str) -> Iterator[ChartFinding]:
    spec = yamlsafe.fields(fields.get("spec"))
    if yamlsafe.text(fields.get("kind")) == "ApplicationSet":
        spec = yamlsafe.fields(yamlsafe.fields(spec.get("template")).get("spec"))
    sources = [spec.get("source")]
    listed = spec.get("sources")
    if isinstance(listed, yaml.SequenceNode):
        sources += listed.value
    for node in sources:
        source = yamlsafe.fields(node)
        chart_node = source.get("chart")
        chart = yamlsafe.text(chart_node)
        repo = yamlsafe.text(source.get("repoURL"))
        if chart_node is None or not chart or not repo:
            continue
        url = repo if "://" in repo else f"oci://{repo}"
        yield ChartFinding(
            path,
            yamlsafe.line(chart_node),
            chart,
            yamlsafe.text(source.get("targetRevision")),
            url,
            "argocd-helm",
        )


def resolve(
    findings: Iterable[ChartFinding], repos: Iterable[HelmRepository]
) -> list[ChartFinding]:
    """Give each Flux finding the URL of the HelmRepository it names, if scanned."""
    urls = {r.key: r.url for r in repos}
    out = []
    for f in findings:
        if f.repo is None and f.source is not None and f.source in urls:
            f = ChartFinding(f.path, f.line, f.chart, f.version, urls[f.source], f.kind, f.source)
        out.append(f)
    return sorted(set(out))


def _location(url: str, chart: str) -> str:
    """Where a chart of a repository URL is carried (host/path/NAME), to compare."""
    if url.startswith("oci://"):
        return f"{url.removeprefix('oci://').rstrip('/').lower()}/{chart}"
    return f"{repository_base(url)}/{chart}"


def carries(charts: Iterable[ChartEntry], finding: ChartFinding) -> bool:
    """Whether a bundle carrying `charts` has what `finding` asks for: the
    chart's name, a version the finding's version (or range) allows, and the
    same repository when the finding knows it."""
    for chart in charts:
        if chart.name != finding.chart:
            continue
        if finding.repo is not None and not _same_repository(chart, finding):
            continue
        if finding.version is None or _allows(finding.version, chart.version):
            return True
    return False


def _same_repository(chart: ChartEntry, finding: ChartFinding) -> bool:
    assert finding.repo is not None
    wanted = _location(finding.repo, finding.chart)
    source = chart.source
    carried = (
        _location(source, chart.name)
        if source.startswith(("https://", "http://"))
        else source.removeprefix("oci://").rsplit(":", 1)[0].lower()
    )
    return wanted in (carried, chart.ref.name)


def _allows(wanted: str, version: str) -> bool:
    if wanted == version:
        return True
    try:
        return semver.Constraint.parse(wanted).allows(semver.Version.parse(version))
    except FormatError:
        return False


def missing(findings: Iterable[ChartFinding], charts: Iterable[ChartEntry]) -> list[ChartFinding]:
    carried = list(charts)
    return [f for f in findings if not carries(carried, f)]
