"""The bundle manifest: the signed list of every member, image and repo.

A manifest is signed as exact bytes. Readers keep the bytes they verified and
parse them; nothing is re-serialised before checking. Every field that later
becomes a path, a URL or a command argument is validated here, on every read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airbundle.errors import FormatError, ManifestError
from airbundle.format import schemas
from airbundle.format.chartentry import ChartEntry
from airbundle.format.digest import Digest
from airbundle.format.files import FILE_PREFIX, FileEntry, check_file_name
from airbundle.format.jsonutil import loads_strict
from airbundle.format.paths import (
    check_member_path,
    check_object_id,
    check_ref_name,
    check_repo_name,
)
from airbundle.format.reference import ImageReference
from airbundle.limits import DEFAULT_LIMITS, Limits

if TYPE_CHECKING:
    # Loaded when a manifest carries vetting evidence: the policy judge is
    # not needed to read any other (start-up of verify, docs/performance.md).
    from airbundle.format.vetting import VettingRecord

API_VERSION = "airbundle/v1"
KIND = "BundleManifest"
FORMAT_VERSION = 1
# A bundle that carries files (a member kind version 1 readers refuse) is
# version 2; every other bundle stays version 1 (docs/bundle-format.md).
FILES_FORMAT_VERSION = 2
FORMAT_VERSIONS = (FORMAT_VERSION, FILES_FORMAT_VERSION)
OCI_LAYOUT_DIR = "images"
BLOB_PREFIX = f"{OCI_LAYOUT_DIR}/blobs/sha256/"
REPO_DIR = "repos"
DEFAULT_CHANNEL = "default"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime(_TIME_FORMAT)


def parse_time(text: str, *, where: str = "timestamp") -> datetime:
    try:
        return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise ManifestError(f"bundle manifest: {where} {text!r} is not a valid UTC time") from None


def repo_member_path(name: str) -> str:
    return f"{REPO_DIR}/{name}.bundle"


def blob_member_path(digest: Digest) -> str:
    return f"{OCI_LAYOUT_DIR}/{digest.blob_path}"


@dataclass(frozen=True)
class MemberEntry:
    path: str
    size: int
    digest: Digest


@dataclass(frozen=True)
class ImageEntry:
    ref: ImageReference
    source: str
    digest: Digest
    media_type: str
    size: int
    platforms: tuple[str, ...] = ()
    # Set when platform selection replaced the source's index by a smaller one.
    source_digest: Digest | None = None
    # Set when the bundle also carries that source index, byte for byte (a
    # sparse index: only the chosen platforms' manifests travel with it).
    source_media_type: str | None = None
    source_size: int | None = None
    # The charts (their refs) whose `images: true` added this image.
    requested_by: tuple[str, ...] = ()
    # The whole image: every manifest, index and config and every layer of the
    # platforms carried, each blob once (whether or not the base held it);
    # None in bundles written before the field.
    total_size: int | None = None

    @property
    def carries_source_index(self) -> bool:
        return self.source_digest is not None and self.source_media_type is not None


@dataclass(frozen=True)
class RefEntry:
    name: str
    target: str


@dataclass(frozen=True)
class RepoEntry:
    name: str
    url: str
    member: str
    object_format: str
    refs: tuple[RefEntry, ...]
    head: str | None = None
    prerequisites: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScanIssue:
    """An image reference found in a carried repository that the bundle lacks."""

    ref: str
    file: str  # repo:ref:path
    line: int
    kind: str


@dataclass(frozen=True)
class Unscanned:
    """A file the image scan could not read (a Helm template, broken YAML)."""

    file: str
    reason: str


@dataclass(frozen=True)
class ScanSummary:
    files: int
    references: int
    missing: tuple[ScanIssue, ...] = ()
    not_scanned: tuple[Unscanned, ...] = ()


@dataclass(frozen=True)
class SeekTableRef:
    """Where the content region's seek table is, and its sha256.

    `offset` counts from the start of the content region (40 + P): it is the
    compressed size of the frames the table lists.
    """

    offset: int
    size: int
    digest: Digest


# What export's draft manifest (sized before the content is written) holds in
# place of the seek table: every number as wide as the schema allows, so the
# final manifest is never longer.
SEEK_TABLE_DRAFT = SeekTableRef((1 << 63) - 1, (1 << 63) - 1, Digest("sha256", "0" * 64))


@dataclass(frozen=True)
class BundleInfo:
    name: str
    id: str
    created: datetime
    tool: str
    channel: str = DEFAULT_CHANNEL
    sequence: int = 0
    expires: datetime | None = None


@dataclass(frozen=True)
class BundleManifest:
    bundle: BundleInfo
    members: tuple[MemberEntry, ...]
    images: tuple[ImageEntry, ...]
    repos: tuple[RepoEntry, ...]
    scan: ScanSummary | None = None
    # An incremental bundle: what the other side must already hold (earlier
    # bundles or inventories), for messages that say what to import first.
    base: tuple[Mapping[str, str], ...] = ()
    # Bundles written before the seek table have none (format version 1 still).
    seek_table: SeekTableRef | None = None
    # What the exporter checked about each image (export --policy,
    # --vet-command): docs/bundle-format.md, format/vetting.py.
    vetting: VettingRecord | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)
    # Helm charts (each also an images[] entry: an OCI artifact) and files.
    charts: tuple[ChartEntry, ...] = ()
    files: tuple[FileEntry, ...] = ()

    @property
    def format_version(self) -> int:
        return FILES_FORMAT_VERSION if self.files else FORMAT_VERSION

    @cached_property
    def member_index(self) -> dict[str, MemberEntry]:
        return {m.path: m for m in self.members}

    @property
    def total_size(self) -> int:
        return sum(m.size for m in self.members)

    def to_json(self) -> dict[str, Any]:
        b = self.bundle
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "formatVersion": self.format_version,
            "bundle": {
                "name": b.name,
                "id": b.id,
                "created": format_time(b.created),
                "tool": b.tool,
                "channel": b.channel,
                "sequence": b.sequence,
                "expires": format_time(b.expires) if b.expires else None,
            },
            "members": [
                {"path": m.path, "size": m.size, "digest": str(m.digest)} for m in self.members
            ],
            "images": [_image_json(i) for i in self.images],
            "repos": [_repo_json(r) for r in self.repos],
            **({"scan": _scan_json(self.scan)} if self.scan is not None else {}),
            **({"base": [dict(b) for b in self.base]} if self.base else {}),
            **({"seekTable": _seek_table_json(self.seek_table)} if self.seek_table else {}),
            **({"vetting": self.vetting.to_json()} if self.vetting is not None else {}),
            **({"charts": [c.to_json() for c in self.charts]} if self.charts else {}),
            **({"files": [f.to_json() for f in self.files]} if self.files else {}),
        }

    def to_bytes(self) -> bytes:
        """Deterministic bytes: the same manifest always serialises the same way."""
        text = json.dumps(self.to_json(), indent=1, sort_keys=True, ensure_ascii=False)
        return (text + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> BundleManifest:
        doc = loads_strict(
            data,
            what="bundle manifest",
            max_bytes=limits.max_manifest_bytes,
            max_depth=limits.max_json_depth,
            error=ManifestError,
        )
        for error in schemas.errors(schemas.BUNDLE_MANIFEST, doc):
            raise ManifestError(
                f"bundle manifest: field {schemas.json_path(error)}: {error.message}"
            )
        try:
            return _from_json(doc, limits)
        except FormatError as exc:
            raise ManifestError(f"bundle manifest: {exc.message}") from exc


def _scan_json(s: ScanSummary) -> dict[str, Any]:
    out: dict[str, Any] = {
        "files": s.files,
        "references": s.references,
        "missing": [
            {"ref": m.ref, "file": m.file, "line": m.line, "kind": m.kind} for m in s.missing
        ],
    }
    if s.not_scanned:
        # Optional, so that bundles without unreadable files keep their bytes.
        out["notScanned"] = [{"file": u.file, "reason": u.reason} for u in s.not_scanned]
    return out


def _scan(doc: dict[str, Any] | None) -> ScanSummary | None:
    if doc is None:
        return None
    return ScanSummary(
        doc["files"],
        doc["references"],
        tuple(ScanIssue(m["ref"], m["file"], m["line"], m["kind"]) for m in doc["missing"]),
        tuple(Unscanned(u["file"], u["reason"]) for u in doc.get("notScanned", ())),
    )


def _seek_table_json(t: SeekTableRef) -> dict[str, Any]:
    return {"offset": t.offset, "size": t.size, "digest": str(t.digest)}


def _seek_table(doc: dict[str, Any] | None) -> SeekTableRef | None:
    if doc is None:
        return None
    return SeekTableRef(doc["offset"], doc["size"], _digest(doc["digest"], "seekTable.digest"))


def _image_json(i: ImageEntry) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ref": str(i.ref),
        "source": i.source,
        "digest": str(i.digest),
        "mediaType": i.media_type,
        "size": i.size,
        "platforms": list(i.platforms),
    }
    if i.source_digest is not None:
        out["sourceDigest"] = str(i.source_digest)
    if i.source_media_type is not None and i.source_size is not None:
        out["sourceMediaType"] = i.source_media_type
        out["sourceSize"] = i.source_size
    if i.requested_by:
        out["requestedBy"] = list(i.requested_by)
    if i.total_size is not None:
        out["totalSize"] = i.total_size
    return out


def _repo_json(r: RepoEntry) -> dict[str, Any]:
    return {
        "name": r.name,
        "url": r.url,
        "member": r.member,
        "objectFormat": r.object_format,
        "head": r.head,
        "refs": [{"name": ref.name, "target": ref.target} for ref in r.refs],
        "prerequisites": list(r.prerequisites),
    }


def _from_json(doc: dict[str, Any], limits: Limits) -> BundleManifest:
    b = doc["bundle"]
    info = BundleInfo(
        name=b["name"],
        id=b["id"],
        created=parse_time(b["created"], where="bundle.created"),
        tool=b["tool"],
        channel=b["channel"],
        sequence=b["sequence"],
        expires=parse_time(b["expires"], where="bundle.expires") if b.get("expires") else None,
    )
    members = tuple(_member(i, m) for i, m in enumerate(doc["members"]))
    manifest = BundleManifest(
        bundle=info,
        members=members,
        images=tuple(_image(i, m) for i, m in enumerate(doc["images"])),
        repos=tuple(_repo(i, r, limits) for i, r in enumerate(doc["repos"])),
        scan=_scan(doc.get("scan")),
        base=tuple(dict(b) for b in doc.get("base", [])),
        seek_table=_seek_table(doc.get("seekTable")),
        vetting=_vetting(doc["vetting"]) if "vetting" in doc else None,
        extra={k: v for k, v in doc.items() if k not in _KNOWN},
        charts=tuple(_chart(i, c) for i, c in enumerate(doc.get("charts", []))),
        files=tuple(_file(i, f) for i, f in enumerate(doc.get("files", []))),
    )
    if doc["formatVersion"] != manifest.format_version:
        raise ManifestError(
            f"bundle manifest: formatVersion {doc['formatVersion']} but the bundle "
            + ("carries files (version 2)" if manifest.files else "carries no files (version 1)")
        )
    _check_consistency(manifest)
    _check_charts_and_files(manifest)
    return manifest


_KNOWN = {
    "apiVersion",
    "kind",
    "formatVersion",
    "bundle",
    "members",
    "images",
    "repos",
    "scan",
    "base",
    "seekTable",
    "vetting",
    "charts",
    "files",
}


def _member(i: int, m: dict[str, Any]) -> MemberEntry:
    where = f"members[{i}]"
    path = check_member_path(m["path"], error=ManifestError)
    digest = _digest(m["digest"], f"{where}.digest")
    if path.startswith(BLOB_PREFIX):
        named = _digest("sha256:" + path[len(BLOB_PREFIX) :], f"{where}.path")
        if named != digest:
            raise ManifestError(f"{where}: blob {path!r} is listed with digest {digest}")
    elif path.startswith(FILE_PREFIX):
        check_file_name(path[len(FILE_PREFIX) :], error=ManifestError)
    elif not (
        path in (f"{OCI_LAYOUT_DIR}/oci-layout", f"{OCI_LAYOUT_DIR}/index.json")
        or path.startswith(f"{REPO_DIR}/")
    ):
        raise ManifestError(f"{where}: member path {path!r} is outside images/, repos/ and files/")
    return MemberEntry(path, m["size"], digest)


def _digest(text: str, where: str) -> Digest:
    try:
        return Digest.parse(text)
    except FormatError as exc:
        raise ManifestError(f"{where}: {exc.message}") from exc


def _image(i: int, m: dict[str, Any]) -> ImageEntry:
    where = f"images[{i}]"
    try:
        ref = ImageReference.parse(m["ref"])
    except FormatError as exc:
        raise ManifestError(f"{where}.ref: {exc.message}") from exc
    if str(ref) != m["ref"]:
        raise ManifestError(f"{where}.ref: {m['ref']!r} is not in normalized form ({ref})")
    digest = _digest(m["digest"], f"{where}.digest")
    source_digest = m.get("sourceDigest")
    source = _digest(source_digest, f"{where}.sourceDigest") if source_digest else None
    # The importer publishes the root under this name (or the source's own
    # index, where the bundle carries it too): the name's digest must not lie.
    carried = {digest, source} if m.get("sourceMediaType") is not None else {digest}
    if ref.digest is not None and ref.digest not in carried:
        raise ManifestError(
            f"{where}.ref: {ref} names digest {ref.digest}, but the image's root is {digest}"
        )
    requested = tuple(m.get("requestedBy", ()))
    total = m.get("totalSize")
    if total is not None and total < m["size"]:
        raise ManifestError(
            f"{where}.totalSize: {total} is less than the root manifest's own size ({m['size']})"
        )
    return ImageEntry(
        ref=ref,
        source=m["source"],
        digest=digest,
        media_type=m["mediaType"],
        size=m["size"],
        platforms=tuple(m["platforms"]),
        source_digest=source,
        source_media_type=m.get("sourceMediaType"),
        source_size=m.get("sourceSize"),
        requested_by=requested,
        total_size=total,
    )


def _repo(i: int, r: dict[str, Any], limits: Limits) -> RepoEntry:
    where = f"repos[{i}]"
    name = check_repo_name(r["name"], error=ManifestError)
    if r["member"] != repo_member_path(name):
        raise ManifestError(f"{where}.member must be {repo_member_path(name)!r}")
    if len(r["refs"]) > limits.max_refs_per_repo:
        raise ManifestError(f"{where}: more than {limits.max_refs_per_repo} refs")
    refs = []
    for j, ref in enumerate(r["refs"]):
        try:
            check_ref_name(ref["name"], error=ManifestError)
            check_object_id(ref["target"], error=ManifestError)
        except ManifestError as exc:
            raise ManifestError(f"{where}.refs[{j}]: {exc.message}") from None
        refs.append(RefEntry(ref["name"], ref["target"]))
    head = r.get("head")
    if head is not None:
        check_ref_name(head, error=ManifestError)
    prereqs = tuple(check_object_id(p, error=ManifestError) for p in r.get("prerequisites", []))
    return RepoEntry(
        name=name,
        url=r["url"],
        member=r["member"],
        object_format=r["objectFormat"],
        refs=tuple(refs),
        head=head,
        prerequisites=prereqs,
    )


def _check_consistency(m: BundleManifest) -> None:
    paths: set[str] = set()
    for entry in m.members:
        if entry.path in paths:
            raise ManifestError(f"bundle manifest lists member {entry.path!r} twice")
        paths.add(entry.path)
    # A path may not be a file in one member and a folder in another.
    folders = {p.rsplit("/", 1)[0] for p in paths if "/" in p}
    for folder in list(folders):
        while "/" in folder:
            folder = folder.rsplit("/", 1)[0]
            folders.add(folder)
    clash = paths & folders
    if clash:
        raise ManifestError(f"bundle manifest: {sorted(clash)[0]!r} is both a file and a folder")
    for i, image in enumerate(m.images):
        if blob_member_path(image.digest) not in paths:
            raise ManifestError(
                f"images[{i}] ({image.ref}): its manifest blob {image.digest} is not in the bundle"
            )
    if m.vetting is not None:
        m.vetting.check_against(m.images)
    names: set[str] = set()
    for repo in m.repos:
        if repo.name in names:
            raise ManifestError(f"bundle manifest lists repo {repo.name!r} twice")
        names.add(repo.name)
        if repo.member not in paths:
            raise ManifestError(f"repo {repo.name!r}: member {repo.member!r} is not in the bundle")
        ref_names = [r.name for r in repo.refs]
        if len(set(ref_names)) != len(ref_names):
            raise ManifestError(f"repo {repo.name!r} lists a ref twice")


def _vetting(doc: Any) -> VettingRecord:
    from airbundle.format.vetting import VettingRecord

    return VettingRecord.from_json(doc)


def _chart(i: int, c: dict[str, Any]) -> ChartEntry:
    try:
        return ChartEntry.from_json(c, f"charts[{i}]")
    except FormatError as exc:
        raise ManifestError(f"bundle manifest: {exc.message}") from None


def _file(i: int, f: dict[str, Any]) -> FileEntry:
    where = f"files[{i}]"
    name = check_file_name(f["name"], error=ManifestError)
    return FileEntry(
        name, f["size"], _digest(f["digest"], f"{where}.digest"), f["source"], f["executable"]
    )


def _check_charts_and_files(m: BundleManifest) -> None:
    """Each chart travels as one of the images; each carried file member is
    listed in `files` with its size and digest (a file whose member is absent
    is one an incremental bundle leaves to the target, as a blob)."""
    images = {i.ref: i for i in m.images}
    charts: set[tuple[str, str]] = set()
    for i, chart in enumerate(m.charts):
        image = images.get(chart.ref)
        if image is None or image.digest != chart.digest:
            raise ManifestError(
                f"charts[{i}] ({chart.name} {chart.version}): {chart.ref}@{chart.digest} is not "
                "one of the bundle's images"
            )
        if (chart.name, chart.version) in charts:
            raise ManifestError(f"charts[{i}]: chart {chart.name} {chart.version} is listed twice")
        charts.add((chart.name, chart.version))
    files = {f.name: f for f in m.files}
    if len(files) != len(m.files):
        raise ManifestError("bundle manifest lists a file twice")
    paths = set(m.member_index)
    for name in files:
        # A file may not sit where another file's folder is.
        parent = name.rsplit("/", 1)[0] if "/" in name else None
        while parent is not None:
            if parent in files:
                raise ManifestError(f"files: {parent!r} is both a file and a folder")
            parent = parent.rsplit("/", 1)[0] if "/" in parent else None
    for path in paths:
        if not path.startswith(FILE_PREFIX):
            continue
        entry = files.get(path[len(FILE_PREFIX) :])
        member = m.member_index[path]
        if entry is None or (entry.size, entry.digest) != (member.size, member.digest):
            raise ManifestError(f"member {path!r} is not listed in files with its size and digest")
