"""Helm charts as values: Chart.yaml, packaged charts, repository indexes, the
OCI layout Helm reads, the images a chart names, and packaging a chart folder.

Pure: bytes and text in, values out. The conventions follow Helm's own code
and documentation: the media types of `helm push` (pkg/registry/constants.go),
its config blob (the chart's metadata as JSON, Go field order, empty fields
left out), the `+` of a version written `_` in an OCI tag, index.yaml entries
as `helm repo index` writes them (metadata, `urls`, `digest` in plain hex,
`created`), and `.helmignore` patterns.
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import json
import re
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import yaml

from airbundle.errors import FormatError, InvalidReferenceError
from airbundle.format import yamlsafe
from airbundle.format.chartentry import ChartEntry
from airbundle.format.digest import Digest
from airbundle.format.imagescan import Finding, scan_text
from airbundle.format.oci import OCI_MANIFEST
from airbundle.format.reference import ImageReference
from airbundle.format.semver import Version
from airbundle.limits import DEFAULT_LIMITS, Limits

__all__ = ["ChartEntry"]  # re-exported: the manifest reads it from chartentry (no yaml)

CONFIG_MEDIA_TYPE = "application/vnd.cncf.helm.config.v1+json"
CHART_MEDIA_TYPE = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
LEGACY_CHART_MEDIA_TYPE = "application/tar+gzip"
PROV_MEDIA_TYPE = "application/vnd.cncf.helm.chart.provenance.v1.prov"
CHART_LAYER_TYPES = frozenset({CHART_MEDIA_TYPE, LEGACY_CHART_MEDIA_TYPE})
IMAGES_ANNOTATION = "artifacthub.io/images"
INDEX_API_VERSION = "v1"

# Helm's chart.Metadata, in its Go field order (json.Marshal keeps it), with
# the kind each takes. Everything is omitted when empty.
_STRING, _STRINGS, _BOOL, _MAP, _MAINTAINERS, _DEPENDENCIES = range(6)
_METADATA_FIELDS: tuple[tuple[str, int], ...] = (
    ("name", _STRING),
    ("home", _STRING),
    ("sources", _STRINGS),
    ("version", _STRING),
    ("description", _STRING),
    ("keywords", _STRINGS),
    ("maintainers", _MAINTAINERS),
    ("icon", _STRING),
    ("apiVersion", _STRING),
    ("condition", _STRING),
    ("tags", _STRING),
    ("appVersion", _STRING),
    ("deprecated", _BOOL),
    ("annotations", _MAP),
    ("kubeVersion", _STRING),
    ("dependencies", _DEPENDENCIES),
    ("type", _STRING),
)
# chart.Dependency: name and repository are always written, the rest when set.
_DEPENDENCY_FIELDS = ("name", "version", "repository", "condition", "tags", "enabled", "alias")
# OCI repository path components (distribution's grammar): a chart name that is
# not one cannot be carried under its own name.
_CHART_NAME = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")


# --- Chart.yaml -----------------------------------------------------------------------


@dataclass(frozen=True)
class Dependency:
    name: str
    version: str
    repository: str
    alias: str = ""


@dataclass(frozen=True)
class ChartMeta:
    """Chart.yaml, as Helm reads it: every value the text it was written as."""

    name: str
    version: str
    api_version: str
    app_version: str
    dependencies: tuple[Dependency, ...]
    annotations: dict[str, str]
    # The metadata as Helm's JSON has it (field order, empty fields out).
    fields: dict[str, Any] = field(compare=False)

    @property
    def description(self) -> str:
        return str(self.fields.get("description", ""))


def parse_chart_yaml(text: str, *, where: str, limits: Limits = DEFAULT_LIMITS) -> ChartMeta:
    """Chart.yaml text -> ChartMeta; name, version (semver) and apiVersion are required."""
    node = yamlsafe.compose(text, where, max_nodes=limits.max_chart_yaml_nodes)
    doc = yamlsafe.fields(node)
    if not isinstance(node, yaml.MappingNode):
        raise FormatError(f"{where}: not a mapping")
    out: dict[str, Any] = {}
    for name, kind in _METADATA_FIELDS:
        value = _metadata_value(doc.get(name), kind, f"{where}: {name}")
        if value not in (None, "", [], {}, False):
            out[name] = value
    chart = out.get("name", "")
    version = out.get("version", "")
    if not chart or not version or not out.get("apiVersion"):
        raise FormatError(f"{where}: name, version and apiVersion are required")
    if chart in (".", "..") or "/" in chart or "\\" in chart:
        raise FormatError(f"{where}: chart name {chart!r} is not allowed")
    try:
        Version.parse(version)
    except FormatError:
        raise FormatError(f"{where}: version {version!r} is not a semantic version") from None
    deps = tuple(
        Dependency(d["name"], d.get("version", ""), d.get("repository", ""), d.get("alias", ""))
        for d in out.get("dependencies", [])
    )
    return ChartMeta(
        chart,
        version,
        out["apiVersion"],
        out.get("appVersion", ""),
        deps,
        dict(out.get("annotations", {})),
        out,
    )


def _metadata_value(node: yaml.Node | None, kind: int, where: str) -> Any:
    if node is None:
        return None
    if kind == _STRING:
        return yamlsafe.text(node)
    if kind == _STRINGS:
        return yamlsafe.texts(node)
    if kind == _BOOL:
        return yamlsafe.boolean(node)
    if kind == _MAP:
        return {k: v for k, n in sorted(yamlsafe.fields(node).items()) if (v := yamlsafe.text(n))}
    items = node.value if isinstance(node, yaml.SequenceNode) else []
    if kind == _MAINTAINERS:
        return [
            {
                k: v
                for k in ("name", "email", "url")
                if (v := yamlsafe.text(yamlsafe.fields(m).get(k)))
            }
            for m in items
        ]
    deps = []
    for i, item in enumerate(items):
        parts = yamlsafe.fields(item)
        dep: dict[str, Any] = {}
        for key in _DEPENDENCY_FIELDS:
            if key == "tags":
                value: Any = yamlsafe.texts(parts.get(key))
            elif key == "enabled":
                value = yamlsafe.boolean(parts.get(key))
            else:
                value = yamlsafe.text(parts.get(key)) or ""
            if value or key in ("name", "repository"):
                dep[key] = value
        if not dep["name"]:
            raise FormatError(f"{where}[{i}]: a dependency needs a name")
        deps.append(dep)
    return deps


def check_chart_name(name: str, *, where: str) -> str:
    """A chart carried by OCI is a repository named after it."""
    if not _CHART_NAME.fullmatch(name) or len(name) > 128:
        raise FormatError(
            f"{where}: chart name {name!r} cannot name an OCI repository (lowercase letters, "
            "digits and '.', '_', '-' between them)"
        )
    return name


def config_json(meta: ChartMeta) -> bytes:
    """The config blob `helm push` writes: the metadata as Go's json.Marshal
    writes it (compact, Go field order, map keys sorted, <, >, & escaped)."""
    text = json.dumps(meta.fields, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return text.encode("utf-8")


def oci_annotations(meta: ChartMeta) -> dict[str, str]:
    """The manifest annotations `helm push` derives from the chart (without
    `created`, so that the same chart always makes the same manifest)."""
    out: dict[str, str] = {}
    f = meta.fields
    for key, value in (
        ("org.opencontainers.image.description", f.get("description", "")),
        ("org.opencontainers.image.title", meta.name),
        ("org.opencontainers.image.version", meta.version),
        ("org.opencontainers.image.url", f.get("home", "")),
        ("org.opencontainers.image.source", (f.get("sources") or [""])[0]),
    ):
        if str(value).strip():
            out[key] = str(value)
    maintainers = f.get("maintainers") or []
    if maintainers:
        out["org.opencontainers.image.authors"] = ", ".join(
            m.get("name", "") + (f" ({m['email']})" if m.get("email") else "") for m in maintainers
        )
    for key, value in meta.annotations.items():
        if key not in ("org.opencontainers.image.title", "org.opencontainers.image.version"):
            out[key] = value
    return out


@dataclass(frozen=True)
class ChartArtifact:
    """A chart as an OCI artifact: manifest, config and the .tgz layer."""

    manifest: bytes
    config: bytes
    chart: bytes

    @property
    def manifest_digest(self) -> Digest:
        return Digest.sha256_of(self.manifest)


def chart_artifact(meta: ChartMeta, chart: bytes) -> ChartArtifact:
    """The OCI image manifest Helm reads for a chart (one config of Helm's
    config type, one layer of Helm's chart type: the .tgz byte for byte)."""
    config = config_json(meta)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": str(Digest.sha256_of(config)),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": CHART_MEDIA_TYPE,
                "digest": str(Digest.sha256_of(chart)),
                "size": len(chart),
            }
        ],
        "annotations": dict(sorted(oci_annotations(meta).items())),
    }
    manifest = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return ChartArtifact(manifest, config, chart)


# --- references -------------------------------------------------------------------------


def version_tag(version: str) -> str:
    """OCI tags have no `+`: Helm writes it `_` (helm/helm#10166)."""
    return version.replace("+", "_")


def tag_version(tag: str) -> str:
    return tag.replace("_", "+")


def repository_base(url: str) -> str:
    """Where an HTTP chart repository's charts are carried: `host[:port]/path`
    of its URL (https://charts.example.com/stable -> charts.example.com/stable)."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if path.endswith("/index.yaml"):
        path = path[: -len("/index.yaml")]
    return f"{parts.netloc.rsplit('@', 1)[-1].lower()}{path}"


def chart_reference(base: str, name: str, version: str) -> ImageReference:
    """`BASE/NAME:VERSION` as a normalized reference; FormatError if the base
    cannot be one (the spec's `repository:` then names another)."""
    text = f"{base.rstrip('/')}/{name}:{version_tag(version)}"
    try:
        ref = ImageReference.parse(text)
    except InvalidReferenceError as exc:
        raise FormatError(
            f"chart {name} {version}: {text!r} cannot be an OCI reference: {exc.message}",
            hint="give the chart `repository: REGISTRY/PATH` to carry it under another name",
        ) from None
    if ref.registry != base.split("/", 1)[0].lower():
        # A base without a host ("charts") would land on Docker Hub.
        raise FormatError(
            f"chart {name} {version}: {base!r} names no registry host",
            hint="give the chart `repository: REGISTRY/PATH`, e.g. charts.example.com/stable",
        )
    return ref


# --- packaged charts (.tgz) -----------------------------------------------------------


@dataclass(frozen=True)
class ChartArchive:
    """What airbundle reads from a packaged chart: its metadata, its values
    and its vendored dependencies (charts/*.tgz or charts/NAME/)."""

    meta: ChartMeta
    values: str | None
    where: str
    dependencies: tuple[ChartArchive, ...] = ()
    # Dependencies Chart.yaml lists that are not vendored in charts/.
    unvendored: tuple[Dependency, ...] = ()


class _Counting(io.RawIOBase):
    """The decompressed stream of a .tgz, refused beyond a size (a gzip bomb)."""

    def __init__(self, inner: gzip.GzipFile, limit: int, where: str) -> None:
        self.inner = inner
        self.limit = limit
        self.where = where
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        self.count += len(data)
        if self.count > self.limit:
            raise FormatError(f"{self.where}: unpacks to more than {self.limit} bytes")
        buffer[: len(data)] = data
        return len(data)


def read_chart_archive(
    data: bytes, *, where: str, limits: Limits = DEFAULT_LIMITS, depth: int = 0
) -> ChartArchive:
    """A packaged chart: one top folder holding Chart.yaml, values.yaml and
    charts/ (dependencies, themselves packaged or folders)."""
    files, tops = _archive_files(data, where, limits)
    chart_yaml = [p for p in files if p.count("/") == 1 and p.endswith("/Chart.yaml")]
    if len(chart_yaml) != 1 or len(tops) != 1:
        raise FormatError(f"{where}: not a packaged Helm chart (one folder with a Chart.yaml)")
    top = chart_yaml[0].split("/", 1)[0]
    return _chart_in(files, top, where, limits, depth)


def _chart_in(
    files: dict[str, bytes], root: str, where: str, limits: Limits, depth: int
) -> ChartArchive:
    """The chart whose Chart.yaml is ROOT/Chart.yaml among `files`."""
    meta = parse_chart_yaml(_utf8(files[f"{root}/Chart.yaml"], where), where=f"{where}: Chart.yaml")
    values = files.get(f"{root}/values.yaml")
    deps: list[ChartArchive] = []
    prefix = f"{root}/charts/"
    if depth < limits.max_chart_depth:
        for path in sorted(files):
            rest = path[len(prefix) :] if path.startswith(prefix) else None
            if rest is None:
                continue
            if "/" not in rest and rest.endswith(".tgz"):
                deps.append(
                    read_chart_archive(
                        files[path], where=f"{where}: {rest}", limits=limits, depth=depth + 1
                    )
                )
            elif rest.count("/") == 1 and rest.endswith("/Chart.yaml"):
                sub = rest.split("/", 1)[0]
                deps.append(
                    _chart_in(files, f"{prefix}{sub}", f"{where}: {sub}", limits, depth + 1)
                )
    vendored = {d.meta.name for d in deps}
    unvendored = tuple(d for d in meta.dependencies if d.name not in vendored)
    return ChartArchive(
        meta,
        _utf8(values, where) if values is not None else None,
        where,
        tuple(deps),
        unvendored,
    )


def _wanted(path: str) -> bool:
    """The members read from a chart archive: metadata, values, nested charts."""
    name = path.rsplit("/", 1)[-1]
    return name in ("Chart.yaml", "values.yaml") or (
        name.endswith(".tgz") and path.rsplit("/", 2)[-2:-1] == ["charts"]
    )


def _archive_files(data: bytes, where: str, limits: Limits) -> tuple[dict[str, bytes], set[str]]:
    """The members a chart is read from, and the top folders of all members."""
    if len(data) > limits.max_chart_bytes:
        raise FormatError(f"{where}: {len(data)} bytes, more than {limits.max_chart_bytes}")
    files: dict[str, bytes] = {}
    tops: set[str] = set()
    count = 0
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") as gz:
            stream = io.BufferedReader(_Counting(gz, limits.max_chart_unpacked_bytes, where))
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    count += 1
                    if count > limits.max_chart_entries:
                        raise FormatError(f"{where}: more than {limits.max_chart_entries} entries")
                    path = member.name.removeprefix("./")
                    tops.add(path.split("/", 1)[0])
                    if not member.isfile() or not _wanted(path):
                        continue
                    if member.size > limits.max_scanned_file_bytes and not path.endswith(".tgz"):
                        raise FormatError(
                            f"{where}: {path} is larger than {limits.max_scanned_file_bytes} bytes"
                        )
                    handle = tar.extractfile(member)
                    if handle is not None:
                        files[path] = handle.read()
    except (OSError, EOFError, tarfile.TarError, ValueError) as exc:
        raise FormatError(f"{where}: not a gzip-compressed tar archive ({exc})") from None
    return files, tops


def _utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise FormatError(f"{where}: a chart file is not UTF-8 text") from None


# --- the images a chart names -----------------------------------------------------------


@dataclass(frozen=True)
class ChartImage:
    text: str  # as found (or assembled)
    ref: ImageReference | None
    where: str  # chart file and line, for messages
    problem: str | None = None


def chart_images(
    archive: ChartArchive, *, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[ChartImage], list[str]]:
    """The images a chart names without rendering it: its values (the same
    detectors as `scan`), its `artifacthub.io/images` annotation, and the same
    in each vendored dependency. A Helm-values image without tag or digest
    gets the chart's appVersion (the common `tag | default .Chart.AppVersion`).
    Returns the images and notes on what could not be read."""
    found: list[ChartImage] = []
    notes: list[str] = []
    for chart in _walk(archive):
        _values_images(chart, found, notes, limits)
        _annotation_images(chart, found, notes, limits)
        for dep in chart.unvendored:
            notes.append(
                f"{chart.where}: dependency {dep.name} {dep.version} is not vendored in "
                "charts/ (helm dependency build); its images are not found"
            )
    unique: dict[str, ChartImage] = {}
    for image in found:
        key = str(image.ref) if image.ref is not None else image.text
        unique.setdefault(key, image)
    return list(unique.values()), notes


def _walk(archive: ChartArchive) -> Iterable[ChartArchive]:
    yield archive
    for dep in archive.dependencies:
        yield from _walk(dep)


def _values_images(
    chart: ChartArchive, found: list[ChartImage], notes: list[str], limits: Limits
) -> None:
    if chart.values is None:
        return
    where = f"{chart.where}: values.yaml"
    try:
        yamlsafe.compose(chart.values, where, max_nodes=limits.max_chart_yaml_nodes)
    except FormatError as exc:
        notes.append(f"{exc.message}; its images are not found")
        return
    for f in scan_text(chart.values, where, limits=limits):
        found.append(_with_app_version(f, chart.meta))


def _with_app_version(f: Finding, meta: ChartMeta) -> ChartImage:
    where = f"{f.path}:{f.line}"
    text = f.text
    if (
        f.kind == "helm-values"
        and f.ref is not None
        and ":" not in text.rsplit("/", 1)[-1]
        and "@" not in text
        and meta.app_version
    ):
        text = f"{text}:{meta.app_version}"
        try:
            return ChartImage(text, ImageReference.parse(text), where + " (tag: appVersion)")
        except FormatError as exc:
            return ChartImage(text, None, where, exc.message)
    return ChartImage(text, f.ref, where, f.problem)


def _annotation_images(
    chart: ChartArchive, found: list[ChartImage], notes: list[str], limits: Limits
) -> None:
    value = chart.meta.annotations.get(IMAGES_ANNOTATION)
    if not value:
        return
    where = f"{chart.where}: Chart.yaml annotation {IMAGES_ANNOTATION}"
    try:
        node = yamlsafe.compose(value, where, max_nodes=limits.max_chart_yaml_nodes)
    except FormatError as exc:
        notes.append(exc.message)
        return
    if not isinstance(node, yaml.SequenceNode):
        notes.append(f"{where}: not a list of images")
        return
    for item in node.value:
        text = yamlsafe.text(yamlsafe.fields(item).get("image"))
        if not text:
            continue
        try:
            found.append(ChartImage(text, ImageReference.parse(text), where))
        except FormatError as exc:
            found.append(ChartImage(text, None, where, exc.message))


# --- repository indexes (index.yaml) ----------------------------------------------------


@dataclass(frozen=True)
class IndexVersion:
    """One version of a chart in a repository's index.yaml."""

    name: str
    version: str
    urls: tuple[str, ...]
    digest: Digest | None  # the .tgz's sha256, when the index gives one


def parse_index_versions(
    text: str, chart: str, *, where: str, limits: Limits = DEFAULT_LIMITS
) -> list[IndexVersion]:
    """The versions of `chart` an index.yaml lists. Only that chart's entries
    are read (an index may list thousands of charts): in the layout `helm repo
    index` writes, only their lines are parsed; otherwise the whole document."""
    block = _chart_block(text, chart)
    if block == "":
        return []  # laid out as helm writes it, and no line names the chart
    # Only this chart's entries are walked, so only they are measured.
    doc = yamlsafe.fields(yamlsafe.compose(block or text, where, max_nodes=None))
    if block is not None and yamlsafe.fields(doc.get("entries")).get(chart) is None:
        doc = yamlsafe.fields(yamlsafe.compose(text, where, max_nodes=None))
    entries = doc.get("entries")
    if not isinstance(entries, yaml.MappingNode) or yamlsafe.text(doc.get("apiVersion")) is None:
        raise FormatError(f"{where}: not a Helm repository index (no apiVersion and entries)")
    listed = yamlsafe.fields(entries).get(chart)
    if listed is None:
        return []
    yamlsafe.check_expansion(
        listed, f"{where}: entries.{chart}", max_nodes=limits.max_chart_yaml_nodes
    )
    if not isinstance(listed, yaml.SequenceNode):
        raise FormatError(f"{where}: entries.{chart} is not a list")
    out = []
    for i, item in enumerate(listed.value):
        parts = yamlsafe.fields(item)
        version = yamlsafe.text(parts.get("version"))
        urls = tuple(yamlsafe.texts(parts.get("urls")))
        if not version or not urls:
            raise FormatError(f"{where}: entries.{chart}[{i}] has no version or no urls")
        out.append(
            IndexVersion(
                yamlsafe.text(parts.get("name")) or chart,
                version,
                urls,
                _index_digest(yamlsafe.text(parts.get("digest")), f"{where}: entries.{chart}[{i}]"),
            )
        )
    return out


_TOP_KEY = re.compile(r"^([A-Za-z][A-Za-z0-9]*):", re.M)


def _chart_block(text: str, chart: str) -> str | None:
    """`apiVersion`, and `entries` with only `chart`'s lines, cut out of an index
    in the layout `helm repo index` writes (top-level keys at column 0, chart
    names one indentation in, each followed by its list); "" when in that
    layout no line at that indentation names the chart (quoted or not); None
    when the text is laid out otherwise (then the whole document is parsed).
    Composing 40 MB of YAML takes a minute; the one chart's lines, milliseconds."""
    api = re.search(r"^apiVersion:[^\n]*$", text, re.M)
    start = re.search(r"^entries:[ \t]*$", text, re.M)
    if api is None or start is None:
        return None
    body = start.end() + 1
    first = re.compile(r"^( +)[^ #\n-][^\n]*$", re.M).search(text, body)
    if first is None:
        return None
    indent = first.group(1)
    key = re.compile(rf"^{indent}{re.escape(chart)}:[ \t]*$", re.M).search(text, body)
    if key is None:
        named = re.compile(rf"^{indent}([\"']?){re.escape(chart)}\1[ \t]*:", re.M)
        return None if named.search(text, body) else ""
    # The chart's list ends at the next line indented less, or as much but not
    # as a list item (the next chart name, or a top-level key).
    end = re.compile(rf"^(?!{indent} |{indent}- |[ \t]*(#|$))", re.M).search(text, key.end() + 1)
    stop = end.start() if end is not None else len(text)
    return f"{api.group(0)}\nentries:\n{text[key.start() : stop]}"


def _index_digest(text: str | None, where: str) -> Digest | None:
    if not text:
        return None
    try:
        return Digest.parse(text if ":" in text else f"sha256:{text}")
    except FormatError as exc:
        raise FormatError(f"{where}: digest: {exc.message}") from None


def chart_url(index_url: str, url: str) -> str:
    """A chart's URL as an index gives it, relative to the index's folder."""
    base = index_url if index_url.endswith("/") else index_url.rsplit("/", 1)[0] + "/"
    return urljoin(base, url)


# --- a static repository (import --charts DIR) -----------------------------------------


def archive_name(name: str, version: str) -> str:
    """NAME-VERSION.tgz, as `helm package` names it."""
    return f"{name}-{version}.tgz"


def index_entry(config: bytes, chart_digest: Digest, created: str, *, where: str) -> dict[str, Any]:
    """An index.yaml entry for a chart from its config blob (Helm's metadata
    JSON), its .tgz digest and a creation time; the URL is relative."""
    try:
        doc = json.loads(config)
    except ValueError:
        raise FormatError(f"{where}: the chart's config is not JSON") from None
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("name"), str)
        or not isinstance(doc.get("version"), str)
    ):
        raise FormatError(f"{where}: the chart's config has no name and version")
    entry = {k: v for k, v in doc.items() if k in dict(_METADATA_FIELDS)}
    entry.update(
        {
            "created": created,
            "digest": chart_digest.hex,
            "urls": [archive_name(doc["name"], doc["version"])],
        }
    )
    return entry


def render_index(entries: Sequence[dict[str, Any]], generated: str) -> bytes:
    """index.yaml of a static repository: entries grouped by chart name,
    newest version first, keys sorted (as `helm repo index` writes it)."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_name.setdefault(entry["name"], []).append(entry)
    for versions in by_name.values():
        versions.sort(key=_version_key, reverse=True)
    doc = {
        "apiVersion": INDEX_API_VERSION,
        "entries": dict(sorted(by_name.items())),
        "generated": generated,
    }
    return yaml.safe_dump(
        doc, sort_keys=True, default_flow_style=False, allow_unicode=True
    ).encode()


def _version_key(entry: dict[str, Any]) -> tuple[int, Version | str]:
    try:
        return (1, Version.parse(str(entry.get("version"))))
    except FormatError:
        return (0, str(entry.get("version")))


def read_index_entries(
    text: str, *, where: str, limits: Limits = DEFAULT_LIMITS
) -> list[dict[str, Any]]:
    """The entries of an index.yaml this airbundle wrote, to merge with (read as
    plain data after the same checks as any YAML from outside)."""
    doc = yamlsafe.plain(yamlsafe.compose(text, where, max_nodes=limits.max_chart_index_nodes))
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), dict):
        raise FormatError(f"{where}: not a Helm repository index")
    out = []
    for name, versions in doc["entries"].items():
        if not isinstance(versions, list):
            raise FormatError(f"{where}: entries.{name} is not a list")
        for entry in versions:
            if not isinstance(entry, dict) or not isinstance(entry.get("version"), str):
                raise FormatError(f"{where}: entries.{name} holds an entry without a version")
            out.append({**entry, "name": str(name)})
    return out


# --- packaging a chart folder -----------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    pattern: str
    negate: bool
    folder_only: bool


class HelmIgnore:
    """`.helmignore` rules: shell globs, matched against the path relative to
    the chart when they hold a `/`, else against the base name; `dir/` only
    matches folders; `!` re-includes; the last matching rule decides. As
    Helm does, `templates/` dotfiles are always left out."""

    def __init__(self, text: str = "") -> None:
        self.rules: list[_Rule] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            line = line[1:] if negate else line
            folder = line.endswith("/")
            line = line.rstrip("/").removeprefix("/")
            if line:
                self.rules.append(_Rule(line, negate, folder))

    def ignored(self, path: str, *, folder: bool) -> bool:
        name = path.rsplit("/", 1)[-1]
        if path.startswith("templates/") and name.startswith(".") and not folder:
            return True
        result = False
        for rule in self.rules:
            if rule.folder_only and not folder:
                continue
            target = path if "/" in rule.pattern else name
            if fnmatch.fnmatchcase(target, rule.pattern):
                result = not rule.negate
        return result


def package_chart(name: str, files: Sequence[tuple[str, bytes, bool]], *, mtime: int = 0) -> bytes:
    """A packaged chart from (relative path, bytes, executable) entries:
    `NAME/PATH` members in path order, regular files only, owner root, a fixed
    time; gzip without name or time. The same files give the same bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, data, executable in sorted(files):
            info = tarfile.TarInfo(f"{name}/{path}")
            info.size = len(data)
            info.mode = 0o755 if executable else 0o644
            info.mtime = mtime
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()
