"""Where files and charts land on import, besides the registry and git:
`--files DIR` (every carried file under its name) and `--charts DIR` (a
static Helm repository: the .tgz files and an index.yaml with their digests
and relative URLs, for `helm repo add` over any web server).

Files are written while the archive streams, under temporary names in their
final folders, each checked against its signed size and sha256; they are
renamed over their names only in the publish phase, once the whole bundle
verified. A file already there with the same content is left alone (a re-run
changes nothing); one whose content changed is replaced by rename, so a
reader sees the old file or the new one. The chart repository is written in
the publish phase, after the images: the charts are read back from the image
target (an incremental bundle may have left a chart's bytes there), checked,
written the same way, and index.yaml is replaced last.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airbundle.adapters.files import SafeFolder, Staged
from airbundle.adapters.images import ImageTarget
from airbundle.errors import FormatError, TargetError
from airbundle.format import helm
from airbundle.format.digest import Digest
from airbundle.format.files import FileEntry
from airbundle.format.manifest import BundleManifest, MemberEntry, format_time
from airbundle.format.oci import Descriptor, parse_manifest
from airbundle.limits import DEFAULT_LIMITS, Limits

INDEX_NAME = "index.yaml"


@dataclass
class FilesLanding:
    """import --files DIR."""

    root: Path
    manifest: BundleManifest
    limits: Limits = DEFAULT_LIMITS
    staged: list[Staged] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    # Files an incremental bundle left out, found elsewhere in the folder.
    copies: list[tuple[FileEntry, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.folder = SafeFolder(self.root, limits=self.limits)
        self.by_member = {f.member: f for f in self.manifest.files}

    def state_key(self) -> str:
        return f"files={self.root}"

    def describe(self) -> str:
        return f"files folder {self.root}"

    def prepare(self, hint: str) -> None:
        """Before anything is written: the folder exists, and every file the
        bundle lists but does not carry (an incremental bundle) is there, or
        elsewhere in the folder to copy from."""
        self.folder.prepare()
        self.folder.remove_stale_temps()
        carried = set(self.manifest.member_index)
        absent = [f for f in self.manifest.files if f.member not in carried]
        elsewhere: dict[Digest, str] | None = None
        for entry in absent:
            if self.folder.holds(entry.name, entry.size, entry.digest):
                continue
            if elsewhere is None:
                elsewhere = self.folder.digests()
            source = elsewhere.get(entry.digest)
            if source is None:
                raise TargetError(
                    f"file {entry.name} ({entry.digest}) is neither in the bundle nor in "
                    f"{self.describe()}",
                    hint=hint,
                )
            self.copies.append((entry, source))

    def sink(self, entry: MemberEntry, chunks: Iterator[bytes]) -> None:
        """A file member as it streams past: kept if new or changed (under a
        temporary name), else left to drain."""
        carried = self.by_member[entry.path]
        if self.folder.holds(carried.name, carried.size, carried.digest):
            self.present.append(carried.name)
            return
        self.staged.append(
            self.folder.stage(
                carried.name, carried.size, carried.digest, chunks, executable=carried.executable
            )
        )

    def publish(self) -> None:
        """Every staged file renamed over its name; left-out files copied in;
        executable bits set as the manifest says."""
        for entry, source in self.copies:
            self.staged.append(
                self.folder.stage(
                    entry.name,
                    entry.size,
                    entry.digest,
                    self.folder.read(source),
                    executable=entry.executable,
                )
            )
        staged, self.staged = self.staged, []
        try:
            for item in staged:
                self.folder.commit(item)
                self.written.append(item.name)
        finally:
            for item in staged:
                self.folder.discard(item)
        written = set(self.written)
        for entry in self.manifest.files:
            if entry.name not in written:  # new files got their mode when created
                self.folder.set_executable(entry.name, entry.executable)

    def discard(self) -> None:
        for item in self.staged:
            self.folder.discard(item)
        self.staged = []

    def report(self) -> list[dict[str, Any]]:
        written = set(self.written)
        return [
            {
                "name": f.name,
                "digest": str(f.digest),
                "size": f.size,
                "target": str(self.root / f.name),
                "written": f.name in written,
            }
            for f in self.manifest.files
        ]


@dataclass
class ChartsLanding:
    """import --charts DIR: a static Helm repository."""

    root: Path
    limits: Limits = DEFAULT_LIMITS
    written: list[str] = field(default_factory=list)
    charts: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.folder = SafeFolder(self.root, limits=self.limits)

    def state_key(self) -> str:
        return f"charts={self.root}"

    def describe(self) -> str:
        return f"chart repository {self.root}"

    def prepare(self) -> None:
        self.folder.prepare()
        self.folder.remove_stale_temps()
        self._existing()  # an index.yaml that cannot be read stops the import now

    def publish(
        self, manifest: BundleManifest, documents: dict[Digest, bytes], target: ImageTarget
    ) -> None:
        """Each chart's .tgz (if not there with its digest), then index.yaml."""
        created = format_time(manifest.bundle.created)
        entries: dict[tuple[str, str], dict[str, Any]] = {
            (e["name"], str(e["version"])): e for e in self._existing()
        }
        staged: list[Staged] = []
        try:
            for chart in manifest.charts:
                config, layer = self._descriptors(chart, documents)
                repo = target.locate(chart.ref)
                config_bytes = b"".join(
                    _checked(target.read_blob(repo, config.digest, config.size), config, chart.name)
                )
                entry = helm.index_entry(
                    config_bytes, chart.chart_digest, created, where=chart.name
                )
                if (entry["name"], entry["version"]) != (chart.name, chart.version):
                    raise TargetError(
                        f"chart {chart.name} {chart.version}: its config names "
                        f"{entry['name']} {entry['version']}"
                    )
                name = helm.archive_name(chart.name, chart.version)
                if not self.folder.holds(name, chart.chart_size, chart.chart_digest):
                    chunks = _checked(target.read_blob(repo, layer.digest, layer.size), layer, name)
                    staged.append(
                        self.folder.stage(name, layer.size, layer.digest, chunks, executable=False)
                    )
                entries[(chart.name, chart.version)] = entry
                self.charts.append(
                    {
                        "name": chart.name,
                        "version": chart.version,
                        "ref": str(chart.ref),
                        "digest": str(chart.chart_digest),
                        "target": str(self.root / name),
                    }
                )
            for item in staged:
                self.folder.commit(item)
                self.written.append(item.name)
        finally:
            for item in staged:
                self.folder.discard(item)
        self._write_index(list(entries.values()), created)

    def _descriptors(
        self, chart: helm.ChartEntry, documents: dict[Digest, bytes]
    ) -> tuple[Descriptor, Descriptor]:
        data = documents.get(chart.digest)
        if data is None:
            raise TargetError(f"chart {chart.name} {chart.version}: its manifest was not read")
        parsed = parse_manifest(
            data, declared_type=None, where=f"chart {chart.name}", limits=self.limits
        )
        layers = [
            b
            for b in parsed.blobs[1:]
            if b.digest == chart.chart_digest and b.media_type in helm.CHART_LAYER_TYPES
        ]
        if not parsed.blobs or parsed.blobs[0].media_type != helm.CONFIG_MEDIA_TYPE or not layers:
            raise TargetError(
                f"chart {chart.name} {chart.version}: its manifest is not a Helm chart's "
                f"with the layer {chart.chart_digest}"
            )
        if parsed.blobs[0].size > self.limits.max_oci_manifest_bytes:
            raise TargetError(f"chart {chart.name}: its config is too large")
        return parsed.blobs[0], layers[0]

    def _existing(self) -> list[dict[str, Any]]:
        """The entries of the index.yaml an earlier import wrote (none if absent)."""
        data = b""
        try:
            for chunk in self.folder.read(INDEX_NAME):
                data += chunk
                if len(data) > self.limits.max_chart_index_bytes:
                    raise TargetError(f"{self.root / INDEX_NAME}: larger than the limit")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise TargetError(f"{self.root / INDEX_NAME}: cannot read it: {exc.strerror}") from None
        try:
            return helm.read_index_entries(
                data.decode("utf-8"), where=str(self.root / INDEX_NAME), limits=self.limits
            )
        except (FormatError, UnicodeDecodeError) as exc:
            message = exc.message if isinstance(exc, FormatError) else "not UTF-8"
            raise TargetError(
                f"{self.root / INDEX_NAME}: {message}",
                hint="move it away; import writes it again from the charts it imports",
            ) from None

    def _write_index(self, entries: list[dict[str, Any]], generated: str) -> None:
        data = helm.render_index(entries, generated)
        digest = Digest.sha256_of(data)
        if self.folder.holds(INDEX_NAME, len(data), digest):
            return
        self.folder.commit(
            self.folder.stage(INDEX_NAME, len(data), digest, [data], executable=False)
        )
        self.written.append(INDEX_NAME)


def _checked(chunks: Iterable[bytes], desc: Descriptor, what: str) -> Iterator[bytes]:
    """A blob read back from the image target, checked against its descriptor."""
    h = hashlib.sha256()
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > desc.size:
            break
        h.update(chunk)
        yield chunk
    if size != desc.size or Digest.from_hasher(h) != desc.digest:
        raise TargetError(
            f"{what}: the image target's copy of {desc.digest} is not what it should be"
        )
