"""Find the image references that GitOps manifests will ask a cluster to pull.

Pure: YAML text in, findings with line numbers out. Understands Kubernetes
workloads (any `containers`, `initContainers`, `ephemeralContainers` list,
so Pods, Deployments, StatefulSets, DaemonSets, Jobs, CronJobs and templates
inside Argo CD / Flux objects alike), kustomize `images:` transformers, Helm
values files (`image: {registry, repository, tag, digest}`) and Flux
ImageRepository objects, and Argo CD Applications' kustomize image overrides.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import yaml

from airbundle.errors import FormatError
from airbundle.format.reference import ImageReference
from airbundle.limits import DEFAULT_LIMITS, Limits

CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, order=True)
class Finding:
    path: str
    line: int
    text: str  # the reference as written (or assembled from Helm/kustomize parts)
    kind: str  # workload, kustomize, helm-values, flux
    ref: ImageReference | None  # None when it could not be parsed
    problem: str | None = None


def _scalar(node: yaml.Node | None) -> str | None:
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str":
        return str(node.value)
    if isinstance(node, yaml.ScalarNode) and node.value not in ("", "~", "null"):
        return str(node.value)
    return None


def _items(node: yaml.MappingNode) -> dict[str, yaml.Node]:
    out: dict[str, yaml.Node] = {}
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode):
            out.setdefault(str(key.value), value)
    return out


def _finding(path: str, node: yaml.Node, text: str, kind: str) -> Finding:
    try:
        return Finding(path, node.start_mark.line + 1, text, kind, ImageReference.parse(text))
    except FormatError as exc:
        return Finding(path, node.start_mark.line + 1, text, kind, None, exc.message)


def _walk(node: yaml.Node, path: str, depth: int) -> Iterator[Finding]:
    """Every mapping in the document (up to `depth` levels down), asked of each
    convention in turn."""
    if depth <= 0:
        return
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _walk(item, path, depth - 1)
        return
    if not isinstance(node, yaml.MappingNode):
        return
    fields = _items(node)
    for detect in _DETECTORS:
        yield from detect(fields, path)
    for name, child in fields.items():
        if name in CONTAINER_LISTS:
            continue
        yield from _walk(child, path, depth - 1)


Detector = Callable[[dict[str, yaml.Node], str], Iterator[Finding]]


def _workload(fields: dict[str, yaml.Node], path: str) -> Iterator[Finding]:
    """Kubernetes workloads and templates: `image` of any container list."""
    for name in CONTAINER_LISTS:
        containers = fields.get(name)
        if not isinstance(containers, yaml.SequenceNode):
            continue
        for container in containers.value:
            if isinstance(container, yaml.MappingNode):
                image = _items(container).get("image")
                text = _scalar(image)
                if image is not None and text:
                    yield _finding(path, image, text, "workload")


def _flux(fields: dict[str, yaml.Node], path: str) -> Iterator[Finding]:
    """Flux ImageRepository: spec.image."""
    spec = fields.get("spec")
    if _scalar(fields.get("kind")) != "ImageRepository" or not isinstance(spec, yaml.MappingNode):
        return
    image = _items(spec).get("image")
    text = _scalar(image)
    if image is not None and text:
        yield _finding(path, image, text, "flux")


def _argocd(fields: dict[str, yaml.Node], path: str) -> Iterator[Finding]:
    """Argo CD Application: spec.source(s).kustomize.images: ["[old=]new:tag", ...]."""
    kustomize = fields.get("kustomize")
    if not isinstance(kustomize, yaml.MappingNode):
        return
    overrides = _items(kustomize).get("images")
    if not isinstance(overrides, yaml.SequenceNode):
        return
    for item in overrides.value:
        text = _scalar(item)
        if text:
            yield _finding(path, item, text.rsplit("=", 1)[-1], "argocd")


def _helm_values(fields: dict[str, yaml.Node], path: str) -> Iterator[Finding]:
    """Helm values: image: {registry, repository, tag, digest}."""
    image = fields.get("image")
    if isinstance(image, yaml.MappingNode):
        helm = _helm_image(_items(image))
        if helm:
            yield _finding(path, image, helm, "helm-values")


# One function per convention: a new one is a new detector in this list.
_DETECTORS: tuple[Detector, ...] = (_workload, _flux, _argocd, _helm_values)


def _helm_image(parts: dict[str, yaml.Node]) -> str | None:
    """The common Helm values convention: registry / repository / tag / digest."""
    repository = _scalar(parts.get("repository"))
    if not repository:
        return None
    registry = _scalar(parts.get("registry"))
    text = f"{registry}/{repository}" if registry else repository
    digest = _scalar(parts.get("digest"))
    tag = _scalar(parts.get("tag"))
    if digest:
        return f"{text}@{digest}"
    if tag:
        return f"{text}:{tag}"
    return text


def _kustomize(doc: yaml.MappingNode, path: str) -> Iterator[Finding]:
    images = _items(doc).get("images")
    if not isinstance(images, yaml.SequenceNode):
        return
    for item in images.value:
        if not isinstance(item, yaml.MappingNode):
            continue
        fields = _items(item)
        name = _scalar(fields.get("newName")) or _scalar(fields.get("name"))
        if not name:
            continue
        digest = _scalar(fields.get("digest"))
        tag = _scalar(fields.get("newTag"))
        text = f"{name}@{digest}" if digest else (f"{name}:{tag}" if tag else name)
        yield _finding(path, item, text, "kustomize")


def scan_text(text: str, path: str, *, limits: Limits = DEFAULT_LIMITS) -> list[Finding]:
    """Findings in one YAML file (all documents); unparsable YAML gives none."""
    try:
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except (yaml.YAMLError, RecursionError):
        return []
    found: list[Finding] = []
    is_kustomization = path.rsplit("/", 1)[-1] in ("kustomization.yaml", "kustomization.yml")
    for doc in documents:
        if doc is None:
            continue
        if is_kustomization and isinstance(doc, yaml.MappingNode):
            found.extend(_kustomize(doc, path))
            # A kustomization lists images to rewrite; its other fields hold none.
            continue
        found.extend(_walk(doc, path, limits.max_scan_depth + 1))
    return sorted(set(found))


@dataclass(frozen=True)
class Carried:
    """What a bundle carries, for matching references against it."""

    refs: frozenset[str]  # normalized references with tags
    digests: frozenset[str]  # every manifest and index digest carried
    names: frozenset[str]  # registry/repository names

    def covers(self, ref: ImageReference) -> bool:
        if ref.digest is not None:
            return str(ref.digest) in self.digests
        return str(ref) in self.refs


def missing(findings: list[Finding], carried: Carried) -> list[Finding]:
    """Findings the bundle does not carry (untagged Helm/Flux names match by name)."""
    out = []
    for f in findings:
        if f.ref is None:
            out.append(f)
            continue
        if f.kind in ("flux",) and f.ref.name in carried.names:
            continue
        if not carried.covers(f.ref):
            out.append(f)
    return out
