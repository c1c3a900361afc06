"""Find the image references that GitOps manifests will ask a cluster to pull.

Pure: YAML (or JSON) text in, findings with line numbers out. Understands
Kubernetes workloads (any `containers`, `initContainers`, `ephemeralContainers`
list, so Pods, Deployments, StatefulSets, DaemonSets, Jobs, CronJobs and
templates inside Argo CD / Flux objects alike), Tekton steps, sidecars and step
templates, kustomize `images:` transformers and `helmCharts[].valuesInline`,
Helm values (`image: {registry, repository, tag, digest}`, `image: {name,
tag}`, `image: "repo:tag"`), Flux ImageRepository objects, and Argo CD
Applications' kustomize image overrides and Helm parameters, values and
valuesObject. A file that cannot be read as YAML (a Helm template, a broken
file) is a finding of its own: not scanned, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import yaml

from airbundle.errors import FormatError
from airbundle.format.reference import ImageReference, spellings
from airbundle.limits import DEFAULT_LIMITS, Limits

CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
# Tekton: Task/ClusterTask spec, a Pipeline's embedded taskSpec, TaskRun and
# PipelineRun specs all hold these (each item a container with `image`).
TEKTON_LISTS = ("steps", "sidecars")
# Lists whose items a detector reads whole: not walked again item by item.
_READ_WHOLE = CONTAINER_LISTS + TEKTON_LISTS
YAML_SUFFIXES = (".yaml", ".yml")
# What `scan` reads: YAML, and JSON manifests (JSON is YAML's flow style).
SCANNED_SUFFIXES = (*YAML_SUFFIXES, ".json")
NOT_SCANNED = "not-scanned"


@dataclass(frozen=True, order=True)
class Finding:
    path: str
    line: int
    text: str  # the reference as written (or assembled from Helm/kustomize parts)
    kind: str  # workload, tekton, kustomize, helm-values, flux, argocd; not-scanned
    ref: ImageReference | None  # None when it could not be parsed (or not scanned)
    problem: str | None = None  # why it does not parse; for not-scanned, why
    # Matched by repository name, whatever the tag (Flux ImageRepository, a
    # kustomize newName whose original tag is not in the scan).
    by_name: bool = False
    # kustomize only: the `name` an override applies to, when it keeps the
    # original tag (newName without newTag or digest).
    keeps_tag_of: str | None = None

    @property
    def scanned(self) -> bool:
        return self.kind != NOT_SCANNED


def not_scanned(path: str, reason: str) -> Finding:
    """A file the scan could not read: reported, never skipped in silence."""
    return Finding(path, 0, "", NOT_SCANNED, None, reason)


_STR = "tag:yaml.org,2002:str"


def _scalar(node: yaml.Node | None) -> str | None:
    if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
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
    for extra in _NESTED:
        yield from extra(fields, path, depth)
    for name, child in fields.items():
        if name in _READ_WHOLE:
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
        yield replace(_finding(path, image, text, "flux"), by_name=True)


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
    """Helm values: image: {registry, repository, tag, digest} or {name, tag}."""
    image = fields.get("image")
    if isinstance(image, yaml.MappingNode):
        helm = _helm_image(_items(image))
        if helm:
            yield _finding(path, image, helm, "helm-values")


def _tekton(fields: dict[str, yaml.Node], path: str) -> Iterator[Finding]:
    """Tekton: `image` of each step and sidecar, and of the stepTemplate (Task,
    ClusterTask, a Pipeline's embedded taskSpec, TaskRun, PipelineRun)."""
    for name in TEKTON_LISTS:
        items = fields.get(name)
        if not isinstance(items, yaml.SequenceNode):
            continue
        for item in items.value:
            if isinstance(item, yaml.MappingNode):
                yield from _image_string(_items(item), path, "tekton")
    template = fields.get("stepTemplate")
    if isinstance(template, yaml.MappingNode):
        yield from _image_string(_items(template), path, "tekton")


def _image_string(fields: dict[str, yaml.Node], path: str, kind: str) -> Iterator[Finding]:
    image = fields.get("image")
    text = _scalar(image)
    if image is not None and text:
        yield _finding(path, image, text, kind)


def _helm_value_string(fields: dict[str, yaml.Node], path: str) -> Iterator[Finding]:
    """Helm values written as one string: image: "repo:tag". Only a string that
    reads as a reference, or tries to (a '/', ':' or '@' in it): `image:` keys
    that hold something else are not reported."""
    image = fields.get("image")
    if not isinstance(image, yaml.ScalarNode) or image.tag != _STR:
        return
    text = str(image.value).strip()
    if not text:
        return
    found = _finding(path, image, text, "helm-values")
    if found.ref is not None or any(c in text for c in "/:@"):
        yield found


def _argocd_helm(fields: dict[str, yaml.Node], path: str) -> Iterator[Finding]:
    """Argo CD Application: spec.source(s).helm.parameters (`image`,
    `image.repository`/`image.tag`, ... as name/value pairs). `valuesObject`
    is walked like any values; `values` (YAML in a string) by _NESTED."""
    helm = fields.get("helm")
    if not isinstance(helm, yaml.MappingNode):
        return
    parameters = _items(helm).get("parameters")
    if not isinstance(parameters, yaml.SequenceNode):
        return
    groups: dict[str, dict[str, yaml.Node]] = {}
    for item in parameters.value:
        if not isinstance(item, yaml.MappingNode):
            continue
        pair = _items(item)
        name, value = _scalar(pair.get("name")), pair.get("value")
        if not name or value is None:
            continue
        prefix, _, leaf = name.rpartition(".")
        if leaf == "image" or name == "image":
            yield from _image_string({"image": value}, path, "argocd")
        else:
            groups.setdefault(prefix, {})[leaf] = value
    for group in groups.values():
        text = _helm_image(group)
        node = group.get("repository") or group.get("name")
        if text and node is not None:
            yield _finding(path, node, text, "argocd")


# One function per convention: a new one is a new detector in this list. The
# more specific come first: where two read the same node, the first one's
# finding is kept (scan_text drops the second).
_DETECTORS: tuple[Detector, ...] = (
    _workload,
    _tekton,
    _flux,
    _argocd,
    _argocd_helm,
    _helm_values,
    _helm_value_string,
)


def _helm_image(parts: dict[str, yaml.Node]) -> str | None:
    """The common Helm values conventions: registry / repository (or name) /
    tag / digest."""
    repository = _scalar(parts.get("repository")) or _scalar(parts.get("name"))
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
    """kustomize `images:` as kustomize applies them: `newTag` replaces the tag,
    `digest` replaces tag and digest (both: both set), `newName` alone keeps
    the original tag (resolved against the originals by `resolve_overrides`)."""
    images = _items(doc).get("images")
    if not isinstance(images, yaml.SequenceNode):
        return
    for item in images.value:
        if not isinstance(item, yaml.MappingNode):
            continue
        fields = _items(item)
        original = _scalar(fields.get("name"))
        name = _scalar(fields.get("newName")) or original
        if not name:
            continue
        digest = _scalar(fields.get("digest"))
        tag = _scalar(fields.get("newTag"))
        text = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
        found = _finding(path, item, text, "kustomize")
        if not tag and not digest and original:
            found = replace(found, keeps_tag_of=original, by_name=True)
        yield found


def _kustomize_helm_values(doc: yaml.MappingNode, path: str, depth: int) -> Iterator[Finding]:
    """kustomize helmCharts[].valuesInline: Helm values inside the kustomization."""
    charts = _items(doc).get("helmCharts")
    if not isinstance(charts, yaml.SequenceNode):
        return
    for chart in charts.value:
        if isinstance(chart, yaml.MappingNode):
            values = _items(chart).get("valuesInline")
            if values is not None:
                yield from _walk(values, path, depth)


def _argocd_values_string(
    fields: dict[str, yaml.Node], path: str, depth: int
) -> Iterator[Finding]:
    """Argo CD `helm.values`: Helm values as YAML inside a string, read with
    their own line numbers moved to where the string starts."""
    helm = fields.get("helm")
    if not isinstance(helm, yaml.MappingNode):
        return
    values = _items(helm).get("values")
    text = _scalar(values)
    if not isinstance(values, yaml.ScalarNode) or not text or values.tag != _STR:
        return
    try:
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except (yaml.YAMLError, RecursionError):
        return
    # A block scalar's text starts on the line after its indicator.
    offset = values.start_mark.line + (1 if values.style in ("|", ">") else 0)
    for doc in documents:
        if doc is not None:
            for found in _walk(doc, path, depth):
                yield replace(found, line=found.line + offset)


NestedDetector = Callable[[dict[str, yaml.Node], str, int], Iterator[Finding]]
# Conventions that hold whole values trees to walk (with the depth left).
_NESTED: tuple[NestedDetector, ...] = (_argocd_values_string,)


def _helm_template_reason(text: str, path: str) -> str | None:
    if "{{" in text and "templates" in path.replace("\\", "/").split("/")[:-1]:
        return "a Helm template ({{ }}): helm renders it; its images come from the chart's values"
    return None


def scan_text(text: str, path: str, *, limits: Limits = DEFAULT_LIMITS) -> list[Finding]:
    """Findings in one YAML or JSON file (all documents); a file that cannot be
    read as YAML, or a Helm template, gives one not-scanned finding instead."""
    reason = _helm_template_reason(text, path)
    if reason is not None:
        return [not_scanned(path, reason)]
    if path.endswith(".json"):
        # JSON allows tabs between tokens, YAML does not; one for one keeps
        # every line and column where it was.
        text = text.replace("\t", " ")
    try:
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except RecursionError:
        return [not_scanned(path, "nested too deeply to read")]
    except yaml.YAMLError as exc:
        return [not_scanned(path, _yaml_problem(exc, text))]
    found: list[Finding] = []
    is_kustomization = path.rsplit("/", 1)[-1] in ("kustomization.yaml", "kustomization.yml")
    depth = limits.max_scan_depth + 1
    for doc in documents:
        if doc is None:
            continue
        if is_kustomization and isinstance(doc, yaml.MappingNode):
            found.extend(_kustomize(doc, path))
            # A kustomization lists images to rewrite, and may inline Helm
            # values; its other fields hold none.
            found.extend(_kustomize_helm_values(doc, path, depth))
            continue
        found.extend(_walk(doc, path, depth))
    return _first_per_node(found)


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1})" if mark is not None else ""
    if "{{" in text:
        return f"a template ({{{{ }}}}), not YAML{where}"
    problem = getattr(exc, "problem", None) or "not valid YAML"
    return f"not valid YAML: {problem}{where}"


def _first_per_node(found: list[Finding]) -> list[Finding]:
    """One finding per place and text: two conventions reading the same node
    (a Flux `spec.image` is also a string `image:`) report it once, as the
    first (the more specific) one saw it."""
    kept: dict[tuple[str, int, str], Finding] = {}
    for f in found:
        kept.setdefault((f.path, f.line, f.text), f)
    return sorted(kept.values(), key=_order)


def resolve_overrides(findings: list[Finding]) -> list[Finding]:
    """kustomize `newName` without `newTag` keeps the original tag: for each
    such override, the references it applies to among the other findings of
    the same scan (kustomize's literal name match) give the tags it ends up
    with. An override whose originals are not in the scan matches by name."""
    originals = [f for f in findings if f.kind != "kustomize" and f.scanned and f.text]
    out: list[Finding] = []
    for f in findings:
        if f.keeps_tag_of is None:
            out.append(f)
            continue
        suffixes = sorted(
            {_kustomize_suffix(o.text) for o in originals if _kustomize_matches(o.text, f)}
        )
        if not suffixes:
            out.append(f)
            continue
        for suffix in suffixes:
            text = f.text + suffix
            out.append(replace(_finding_at(f, text), keeps_tag_of=None, by_name=False))
    return sorted(set(out), key=_order)


def _order(f: Finding) -> tuple[str, int, str, str]:
    return (f.path, f.line, f.text, f.kind)


def _finding_at(f: Finding, text: str) -> Finding:
    try:
        return replace(f, text=text, ref=ImageReference.parse(text), problem=None)
    except FormatError as exc:
        return replace(f, text=text, ref=None, problem=exc.message)


def _kustomize_split(value: str) -> tuple[str, str]:
    """(name, ':tag@digest' part) as kustomize splits an image value: a ':' in
    the first path component is a port."""
    slash = value.find("/")
    offset = max(slash, 0)
    rest = value[offset:]
    cut = min((i for i in (rest.find(":"), rest.find("@")) if i >= 0), default=-1)
    if cut < 0:
        return value, ""
    return value[: offset + cut], value[offset + cut :]


def _kustomize_suffix(value: str) -> str:
    return _kustomize_split(value)[1]


def _kustomize_matches(value: str, override: Finding) -> bool:
    # kustomize compares the written name literally.
    return _kustomize_split(value)[0] == override.keeps_tag_of


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


def rewritten(written: str, ref: ImageReference) -> bool:
    """Whether the name as written is one the mirror configuration's kustomize
    list rewrites for `ref` (mirrorconfig.kustomize emits exactly these)."""
    return _kustomize_split(written)[0] in spellings(ref.name)


def missing(findings: list[Finding], carried: Carried) -> list[Finding]:
    """Findings the bundle does not carry (Flux names and kustomize overrides
    whose tag is elsewhere match by name). A reference counts as carried only
    in a spelling the mirror configuration rewrites; files not scanned are not
    references, and are not listed."""
    out = []
    for f in findings:
        if not f.scanned:
            continue
        if f.ref is None:
            out.append(f)
            continue
        if f.by_name and f.ref.name in carried.names:
            continue
        if not carried.covers(f.ref) or not rewritten(f.text, f.ref):
            out.append(f)
    return out


def count_line(
    references: int, files: int, not_in_bundle: int | None = None, not_scanned: int = 0
) -> str:
    """The summary line of a scan: `23 references in 13 files; 8 not in the
    bundle; 2 files not scanned`."""

    def plural(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    parts = [f"{plural(references, 'reference')} in {plural(files, 'file')}"]
    if not_in_bundle is not None:
        parts.append(f"{not_in_bundle} not in the bundle")
    if not_scanned:
        parts.append(f"{plural(not_scanned, 'file')} not scanned")
    return "; ".join(parts)
