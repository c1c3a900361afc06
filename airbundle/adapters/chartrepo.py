"""Where charts come from on the connected side: a Helm HTTP repository (its
index.yaml and the .tgz files it points at), a chart folder (packaged here, as
`helm package` would, but reproducibly) or a packaged .tgz; and the image
source a chart becomes once it is an OCI artifact.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from airbundle.adapters.httpfetch import HttpFetcher, redact
from airbundle.adapters.images import ResolvedImage
from airbundle.errors import ChartRepositoryError, FormatError, PinMismatchError, SourceError
from airbundle.format import helm
from airbundle.format.digest import Digest
from airbundle.format.oci import OCI_MANIFEST, Descriptor
from airbundle.limits import DEFAULT_LIMITS, Limits


@dataclass
class HttpChartRepository:
    """A Helm repository served over HTTP(S): index.yaml at its URL."""

    url: str  # as written in the spec
    fetcher: HttpFetcher
    limits: Limits = DEFAULT_LIMITS
    _index: str | None = field(default=None, repr=False)

    @property
    def index_url(self) -> str:
        return self.url.rstrip("/") + "/index.yaml"

    def describe(self) -> str:
        return f"chart repository {redact(self.url)}"

    def _index_text(self) -> str:
        if self._index is None:
            data = self.fetcher.get_bytes(
                self.index_url, max_bytes=self.limits.max_chart_index_bytes, what=self.describe()
            )
            try:
                self._index = data.decode("utf-8-sig")
            except UnicodeDecodeError:
                raise ChartRepositoryError(
                    f"{self.describe()}: index.yaml is not UTF-8 text: not a Helm repository"
                ) from None
        return self._index

    def versions(self, name: str) -> list[helm.IndexVersion]:
        try:
            return helm.parse_index_versions(
                self._index_text(), name, where=f"{redact(self.index_url)}", limits=self.limits
            )
        except FormatError as exc:
            raise ChartRepositoryError(exc.message, hint="check the repository URL") from None

    def fetch(self, entry: helm.IndexVersion) -> bytes:
        """The chart's .tgz, checked against the digest the index gives (if any)."""
        url = helm.chart_url(self.index_url, entry.urls[0])
        what = f"{self.describe()}: chart {entry.name} {entry.version}"
        data = self.fetcher.get_bytes(url, max_bytes=self.limits.max_chart_bytes, what=what)
        if entry.digest is not None and Digest.sha256_of(data) != entry.digest:
            raise PinMismatchError(
                f"{what}: {redact(url)} has digest {Digest.sha256_of(data)}, the index says "
                f"{entry.digest}"
            )
        return data


def local_chart(path: Path, *, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """A chart from disk: a packaged .tgz as it is, or a folder packaged."""
    try:
        info = path.stat()
    except OSError as exc:
        raise SourceError(f"chart {path}: {exc.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        return package_folder(path, limits=limits)
    if info.st_size > limits.max_chart_bytes:
        raise SourceError(f"chart {path}: larger than {limits.max_chart_bytes} bytes")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SourceError(f"chart {path}: {exc.strerror}") from None


def package_folder(folder: Path, *, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """`helm package` of a chart folder, reproducibly: the files .helmignore
    keeps, under the chart's name, in name order, with fixed times."""
    try:
        meta = helm.parse_chart_yaml(
            (folder / "Chart.yaml").read_text("utf-8"), where=f"{folder}/Chart.yaml"
        )
        ignore_file = folder / ".helmignore"
        ignore = helm.HelmIgnore(ignore_file.read_text("utf-8") if ignore_file.exists() else "")
    except OSError as exc:
        raise SourceError(f"chart folder {folder}: {exc.strerror} ({exc.filename})") from None
    except (FormatError, UnicodeDecodeError) as exc:
        message = exc.message if isinstance(exc, FormatError) else "not UTF-8 text"
        raise SourceError(f"chart folder {folder}: {message}") from None
    files: list[tuple[str, bytes, bool]] = []
    total = 0
    for rel, full in _walk(folder, ignore):
        if len(files) >= limits.max_chart_entries:
            raise SourceError(f"chart folder {folder}: more than {limits.max_chart_entries} files")
        try:
            data = full.read_bytes()
            executable = bool(full.stat().st_mode & 0o111)
        except OSError as exc:
            raise SourceError(f"chart folder {folder}: {rel}: {exc.strerror}") from None
        total += len(data)
        if total > limits.max_chart_unpacked_bytes:
            raise SourceError(
                f"chart folder {folder}: more than {limits.max_chart_unpacked_bytes} bytes"
            )
        files.append((rel, data, executable))
    data = helm.package_chart(meta.name, files)
    if len(data) > limits.max_chart_bytes:
        raise SourceError(
            f"chart folder {folder}: packs to more than {limits.max_chart_bytes} bytes"
        )
    return data


def _walk(root: Path, ignore: helm.HelmIgnore) -> Iterator[tuple[str, Path]]:
    """Files under `root` that .helmignore keeps (relative path, full path).
    A symbolic link to a file is carried as the file; one to a folder is refused
    (it may loop, and Helm reads through it differently by version)."""
    for current, dirs, names in os.walk(root):
        base = Path(current)
        rel_base = base.relative_to(root).as_posix()
        prefix = "" if rel_base == "." else rel_base + "/"
        for d in sorted(dirs):
            if (base / d).is_symlink():
                raise SourceError(f"chart folder {root}: {prefix}{d} is a link to a folder")
        dirs[:] = sorted(d for d in dirs if not ignore.ignored(prefix + d, folder=True))
        for name in sorted(names):
            rel = prefix + name
            if ignore.ignored(rel, folder=False):
                continue
            full = base / name
            if not full.is_file():
                raise SourceError(f"chart folder {root}: {rel} is not a regular file")
            yield rel, full


class ChartArtifactSource:
    """An ImageSource over a chart made into an OCI artifact in memory (a chart
    from an HTTP repository or from disk)."""

    def __init__(self, artifact: helm.ChartArtifact, text: str) -> None:
        self.artifact = artifact
        self.text = text
        self._blobs = {
            Digest.sha256_of(artifact.config): artifact.config,
            Digest.sha256_of(artifact.chart): artifact.chart,
        }

    def describe(self) -> str:
        return self.text

    def resolve(self) -> ResolvedImage:
        data = self.artifact.manifest
        return ResolvedImage(Descriptor(OCI_MANIFEST, Digest.sha256_of(data), len(data)), None)

    def read_manifest(self, descriptor: Descriptor) -> bytes:
        if descriptor.digest != self.artifact.manifest_digest:
            raise SourceError(f"{self.text}: no manifest {descriptor.digest}")
        return self.artifact.manifest

    def open_blob(self, descriptor: Descriptor) -> Iterator[bytes]:
        data = self._blobs.get(descriptor.digest)
        if data is None:
            raise SourceError(f"{self.text}: no blob {descriptor.digest}")
        return iter([data])
