"""The bundle spec: what a user asks to carry. Parsed from YAML, validated
against schemas/bundle-spec.schema.json, with errors naming file, line and field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import yaml

from airbundle.errors import FormatError, SpecError
from airbundle.format import schemas
from airbundle.format.digest import Digest
from airbundle.format.files import check_file_name
from airbundle.format.oci import Platform
from airbundle.format.paths import check_ref_pattern, check_repo_name
from airbundle.format.reference import ImageReference
from airbundle.limits import DEFAULT_LIMITS, Limits

DEFAULT_REFS = ("refs/heads/*", "refs/tags/*")
Transport = Literal["oci", "docker-archive", "docker"]
_PLAIN_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:seq",
    "tag:yaml.org,2002:map",
}


@dataclass(frozen=True)
class SourceRef:
    """Where an image comes from, in skopeo's transport syntax."""

    transport: Transport
    path: Path | None = None  # oci / docker-archive
    ref: str | None = None  # oci ref name or docker-archive RepoTag, if given
    reference: ImageReference | None = None  # registry image

    def __str__(self) -> str:
        if self.transport == "docker":
            return f"docker://{self.reference}"
        suffix = f":{self.ref}" if self.ref else ""
        return f"{self.transport}:{self.path}{suffix}"


@dataclass(frozen=True)
class ImageSpec:
    source: SourceRef
    text: str  # the ref as written in the spec
    name: ImageReference | None
    platforms: tuple[Platform, ...] | None
    line: int
    # Set from a lock file: the digest this image must resolve to.
    pinned: Digest | None = None
    # Carry the artifacts that refer to it (signatures, SBOMs).
    referrers: bool = False
    # Set from a lock file: exactly these referrers (digest, tag kept or None),
    # fetched by digest whatever the registry lists by then.
    pinned_referrers: tuple[tuple[Digest, str | None], ...] | None = None


@dataclass(frozen=True)
class RepoSpec:
    name: str
    url: str  # resolved: relative paths made absolute against the spec's folder
    refs: tuple[str, ...]
    line: int
    # As written in the spec; recorded in manifests so they do not reveal (or
    # depend on) where the connected host keeps its files.
    written_url: str = ""
    # Set from a lock file: the exact commit of each ref.
    pinned: tuple[tuple[str, str], ...] | None = None


ChartKind = Literal["repo", "oci", "path"]


@dataclass(frozen=True)
class ChartPin:
    """A lock file's pin of a chart: the version chosen, the .tgz's digest, and
    for `images: true` exactly the images (text, digest) it carries."""

    version: str
    digest: Digest
    images: tuple[tuple[str, Digest], ...] | None = None


@dataclass(frozen=True)
class ChartSpec:
    kind: ChartKind
    text: str  # the entry's identity, as written: the lock file's key
    line: int
    repo: str | None = None  # repo: the repository URL as written
    name: str | None = None  # repo: the chart's name
    version: str | None = None  # repo, oci: exact or a range; None: the newest release
    reference: ImageReference | None = None  # oci: the repository (tag: the version if given)
    tagged: bool = False  # oci: the ref named a tag
    path: Path | None = None  # path: a folder or a .tgz
    repository: str | None = None  # carried under REPOSITORY/NAME:VERSION
    images: bool = False
    pinned: ChartPin | None = None


@dataclass(frozen=True)
class FileSpec:
    text: str  # the path or URL as written: the lock file's key
    line: int
    path: Path | None = None
    url: str | None = None
    sha256: Digest | None = None
    name: str | None = None
    executable: bool | None = None
    # Set from a lock file: every file of the entry (name -> digest).
    pinned: tuple[tuple[str, Digest], ...] | None = None


@dataclass(frozen=True)
class BundleSpec:
    name: str
    images: tuple[ImageSpec, ...]
    repos: tuple[RepoSpec, ...]
    path: Path | None = None
    charts: tuple[ChartSpec, ...] = ()
    files: tuple[FileSpec, ...] = ()


def parse_source(text: str, *, base_dir: Path) -> SourceRef:
    """Parse `oci:PATH[:REF]`, `docker-archive:PATH[:REF]`, `docker://REF` or `REF`."""
    for transport in ("oci", "docker-archive"):
        prefix = transport + ":"
        if text.startswith(prefix):
            rest = text[len(prefix) :]
            path_text, _, ref = rest.partition(":")
            if not path_text:
                raise FormatError(f"{text!r}: no path after {prefix!r}")
            path = Path(path_text)
            if not path.is_absolute():
                path = base_dir / path
            return SourceRef(transport, path=path, ref=ref or None)
    body = text.removeprefix("docker://")
    return SourceRef("docker", reference=ImageReference.parse(body))


class _Builder:
    """Turns a composed YAML node tree into plain data, recording lines.

    We compose instead of load so that (a) every value keeps its line for
    error messages, (b) only plain YAML tags are accepted (no !!python), and
    (c) aliases cannot expand into a billion nodes.
    """

    def __init__(self, source: str, limits: Limits) -> None:
        self.source = source
        self.max_nodes = limits.max_spec_nodes
        self.max_depth = limits.max_spec_depth
        self.lines: dict[tuple[str | int, ...], int] = {}
        self.count = 0
        self._constructor = yaml.constructor.SafeConstructor()

    def build(self, node: yaml.Node, path: tuple[str | int, ...], depth: int = 0) -> Any:
        self.count += 1
        if depth > self.max_depth:
            raise SpecError(
                f"{self.source}:{node.start_mark.line + 1}: nested deeper than {self.max_depth} "
                "levels (or an alias refers to itself)"
            )
        if self.count > self.max_nodes:
            raise SpecError(
                f"{self.source}: the spec expands to more than {self.max_nodes} values "
                "(an alias bomb?)"
            )
        line = node.start_mark.line + 1
        self.lines.setdefault(path, line)
        if node.tag not in _PLAIN_TAGS:
            raise SpecError(f"{self.source}:{line}: YAML tag {node.tag!r} is not allowed")
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = self.build(key_node, path, depth + 1)
                if not isinstance(key, str):
                    key_line = key_node.start_mark.line + 1
                    raise SpecError(f"{self.source}:{key_line}: mapping keys must be strings")
                if key in out:
                    raise SpecError(
                        f"{self.source}:{key_node.start_mark.line + 1}: duplicate key {key!r}"
                    )
                self.lines.setdefault((*path, key), key_node.start_mark.line + 1)
                out[key] = self.build(value_node, (*path, key), depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        try:
            return self._constructor.construct_object(node, deep=True)
        except (ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
            raise SpecError(
                f"{self.source}:{line}: value {node.value!r} does not fit its tag {node.tag!r}"
                f" ({type(exc).__name__})"
            ) from None

    def line_of(self, path: tuple[str | int, ...]) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)


def _field(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# The spec's sections that carry content; a spec must fill at least one.
CONTENT_SECTIONS = ("images", "repos", "charts", "files")


def parse_spec(
    text: str, *, source: str, base_dir: Path, limits: Limits = DEFAULT_LIMITS
) -> BundleSpec:
    builder, doc = _compose(text, source, limits)
    _check_schema(doc, builder, source)
    where = _Where(source, builder)
    images = tuple(
        _image(item, ("images", i), where, base_dir) for i, item in enumerate(doc.get("images", []))
    )
    repos = _repos(doc.get("repos", []), where, base_dir)
    if not any(doc.get(section) for section in CONTENT_SECTIONS):
        # An empty bundle would export, sign and import "successfully" and
        # carry nothing: almost always a spec that lost its content.
        raise SpecError(
            f"{source}: the spec carries nothing: add entries under "
            + ", ".join(f"{s}:" for s in CONTENT_SECTIONS[:-1])
            + f" or {CONTENT_SECTIONS[-1]}:"
        )
    charts = tuple(
        _chart(item, ("charts", i), where, base_dir) for i, item in enumerate(doc.get("charts", []))
    )
    files = _files(doc.get("files", []), where, base_dir)
    return BundleSpec(doc["metadata"]["name"], images, repos, None, charts, files)


def _compose(text: str, source: str, limits: Limits) -> tuple[_Builder, Any]:
    """The one YAML document of the spec as plain data, and where each value was."""
    if len(text.encode("utf-8", "surrogatepass")) > limits.max_spec_bytes:
        raise SpecError(f"{source}: larger than {limits.max_spec_bytes} bytes")
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: not valid YAML: {exc}") from None
    except RecursionError:
        raise SpecError(f"{source}: nested too deeply to be a spec") from None
    if len(nodes) != 1 or nodes[0] is None:
        raise SpecError(f"{source}: expected exactly one YAML document")
    builder = _Builder(source, limits)
    return builder, builder.build(nodes[0], ())


def _check_schema(doc: Any, builder: _Builder, source: str) -> None:
    """The first schema error, at its file:line and field."""
    for error in schemas.errors(schemas.BUNDLE_SPEC, doc):
        path = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            # Point at the unknown key itself, not at the mapping holding it.
            schema = error.schema if isinstance(error.schema, dict) else {}
            known = set(schema.get("properties", {}))
            extra = sorted(k for k in error.instance if k not in known)
            if extra:
                path = (*path, extra[0])
                raise SpecError(
                    f"{source}:{builder.line_of(path)}: field {_field(path)}: unknown field "
                    f"{extra[0]!r} (allowed: {', '.join(sorted(known))})"
                )
        where = _field(path) or "(top level)"
        raise SpecError(f"{source}:{builder.line_of(path)}: field {where}: {error.message}")


class _Where:
    """Errors about a field of the spec, at its file and line."""

    def __init__(self, source: str, builder: _Builder) -> None:
        self.source = source
        self.builder = builder

    def error(self, path: tuple[str | int, ...], message: str) -> SpecError:
        return SpecError(
            f"{self.source}:{self.builder.line_of(path)}: field {_field(path)}: {message}"
        )

    def line(self, path: tuple[str | int, ...]) -> int:
        return self.builder.line_of(path)


def _image(
    item: dict[str, Any], path: tuple[str | int, ...], where: _Where, base_dir: Path
) -> ImageSpec:
    try:
        src = parse_source(item["ref"], base_dir=base_dir)
    except FormatError as exc:
        raise where.error((*path, "ref"), exc.message) from None
    name = None
    if "name" in item:
        # Local sources need one when they record no full name; a registry
        # source takes one too, so an image pulled through a private mirror
        # is carried (and mirror-configured) under its upstream name.
        try:
            name = ImageReference.parse(item["name"])
        except FormatError as exc:
            raise where.error((*path, "name"), exc.message) from None
    platforms = None
    if "platforms" in item:
        platforms = tuple(Platform.parse(p) for p in item["platforms"])
    if item.get("referrers") and src.transport != "docker":
        raise where.error((*path, "referrers"), "referrers are found in registries only")
    return ImageSpec(
        src,
        item["ref"],
        name,
        platforms,
        where.line(path),
        referrers=bool(item.get("referrers", False)),
    )


def _repos(items: list[dict[str, Any]], where: _Where, base_dir: Path) -> tuple[RepoSpec, ...]:
    repos = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        try:
            repo_name = check_repo_name(item["name"], error=SpecError)
        except SpecError as exc:
            raise where.error(("repos", i, "name"), exc.message) from None
        if repo_name in seen:
            raise where.error(("repos", i, "name"), f"repo name {repo_name!r} is used twice")
        seen.add(repo_name)
        refs = tuple(item.get("refs", DEFAULT_REFS))
        for j, ref in enumerate(refs):
            try:
                check_ref_pattern(ref, error=SpecError)
            except SpecError as exc:
                raise where.error(("repos", i, "refs", j), exc.message) from None
        repos.append(
            RepoSpec(
                repo_name,
                _resolve_url(item["url"], base_dir),
                refs,
                where.line(("repos", i)),
                written_url=item["url"],
            )
        )
    return tuple(repos)


_CHART_SOURCES = ("repo", "ref", "path")


def _chart(
    item: dict[str, Any], path: tuple[str | int, ...], where: _Where, base_dir: Path
) -> ChartSpec:
    """One `charts:` entry: exactly one of repo (with name), ref (oci://) or path."""
    given = [k for k in _CHART_SOURCES if k in item]
    if len(given) != 1:
        raise where.error(path, "a chart needs exactly one of repo (with name), ref or path")
    kind = given[0]
    common: dict[str, Any] = {
        "line": where.line(path),
        "repository": item.get("repository"),
        "images": bool(item.get("images", False)),
        "version": item.get("version"),
    }
    if kind != "repo" and "name" in item:
        raise where.error((*path, "name"), "name goes with repo (the chart's name there)")
    if kind == "repo":
        if "name" not in item:
            raise where.error(path, "a chart from repo needs the chart's name")
        url = item["repo"]
        if not url.startswith(("https://", "http://")):
            raise where.error((*path, "repo"), "an HTTP chart repository is an http(s):// URL")
        text = f"{url} {item['name']} {item.get('version', '*')}"
        return ChartSpec("repo", text, repo=url, name=item["name"], **common)
    if kind == "ref":
        return _oci_chart(item, path, where, common)
    if "version" in item:
        raise where.error((*path, "version"), "a chart from path has the version of its Chart.yaml")
    local = Path(item["path"])
    return ChartSpec(
        "path", item["path"], path=local if local.is_absolute() else base_dir / local, **common
    )


def _oci_chart(
    item: dict[str, Any], path: tuple[str | int, ...], where: _Where, common: dict[str, Any]
) -> ChartSpec:
    text = item["ref"]
    if not text.startswith("oci://"):
        raise where.error(
            (*path, "ref"), "a chart in a registry is oci://REGISTRY/PATH/NAME[:VERSION]"
        )
    body = text.removeprefix("oci://")
    last = body.rsplit("/", 1)[-1]
    if "@" in last:
        raise where.error((*path, "ref"), "name the chart by version (tag), not by digest")
    tagged = ":" in last
    if tagged and common["version"] is not None:
        raise where.error((*path, "version"), "the ref already names a version")
    try:
        reference = ImageReference.parse(body)
    except FormatError as exc:
        raise where.error((*path, "ref"), exc.message) from None
    if "/" not in body or reference.registry != body.split("/", 1)[0].lower():
        raise where.error((*path, "ref"), "oci:// needs a registry host and a repository")
    key = text if tagged else f"{text} {common['version'] or '*'}"
    return ChartSpec("oci", key, reference=reference, tagged=tagged, **common)


def _files(items: list[dict[str, Any]], where: _Where, base_dir: Path) -> tuple[FileSpec, ...]:
    out = []
    for i, item in enumerate(items):
        path = ("files", i)
        given = [k for k in ("path", "url") if k in item]
        if len(given) != 1:
            raise where.error(path, "a file needs exactly one of path or url")
        name = item.get("name")
        if name is not None:
            try:
                check_file_name(name, error=SpecError)
            except SpecError as exc:
                raise where.error((*path, "name"), exc.message) from None
        digest = None
        if "sha256" in item:
            hex_part = item["sha256"].removeprefix("sha256:")
            digest = Digest("sha256", hex_part)
        local = None
        url = item.get("url")
        if url is not None:
            if not url.startswith(("https://", "http://")):
                raise where.error((*path, "url"), "files are fetched over http(s)://")
            if name is None and not url_base_name(url):
                raise where.error((*path, "name"), "the URL ends in no file name: give one")
        else:
            local = Path(item["path"])
            local = local if local.is_absolute() else base_dir / local
        out.append(
            FileSpec(
                url or item["path"],
                where.line(path),
                path=local,
                url=url,
                sha256=digest,
                name=name,
                executable=item.get("executable"),
            )
        )
    return tuple(out)


def url_base_name(url: str) -> str:
    """The last segment of a URL's path (unquoted), or '' if it has none."""
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def _resolve_url(url: str, base_dir: Path) -> str:
    """Relative local paths resolve against the spec's folder, `~/x` against the
    user's home as a shell would; URLs stay as they are."""
    if url.startswith("~"):
        return str(Path(url).expanduser().resolve())
    if "://" in url or url.startswith("/"):
        return url
    # scp-like ssh syntax host:path (git treats a colon before any slash so)
    head = url.split("/", 1)[0]
    if ":" in head:
        return url
    return str((base_dir / url).resolve())
