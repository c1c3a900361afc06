"""A ContentStore over what `import` writes: an OCI layout and a folder of bare repos.

The layout's `index.json` names every image by its full reference; the
import replaces that file atomically (temporary file, rename) only after
every blob and manifest it names is in place. So a view built from one read
of `index.json` is always complete, and its inode changing is the cheap
signal that a new view is due. Blobs are immutable files named by digest,
written under a temporary name and renamed, so a path that exists holds the
whole blob. Manifests are hashed when read; blobs go out as they are (every
client checks their digest).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airbundle.adapters.content import FileSpan, ImageSummary, Manifest, RepoSummary
from airbundle.adapters.fsutil import open_regular, read_regular
from airbundle.adapters.git_serve import published, summary
from airbundle.adapters.image_view import ImageView, ImageWalker
from airbundle.errors import FormatError, TargetError, UsageError
from airbundle.format import schemas
from airbundle.format.digest import Digest
from airbundle.format.jsonutil import loads_strict
from airbundle.format.oci import REF_NAME, Descriptor
from airbundle.format.paths import check_repo_name
from airbundle.limits import DEFAULT_LIMITS, Limits


@dataclass(frozen=True)
class FileBlob:
    digest: Digest
    size: int
    path: Path

    def check(self) -> None:
        """A file in the layout import wrote: clients check its digest."""

    def spans(self, start: int, end: int) -> Sequence[FileSpan] | None:
        return [FileSpan(self.path, start, end - start)]

    def chunks(self, start: int, end: int) -> Iterator[bytes]:
        with self.path.open("rb") as fh:
            fh.seek(start)
            left = end - start
            while left > 0:
                chunk = fh.read(min(left, 1 << 20))
                if not chunk:
                    raise TargetError(f"{self.path}: ends before byte {end}")
                left -= len(chunk)
                yield chunk


class LayoutStore:
    def __init__(
        self,
        layout: Path | None,
        git: Path | None,
        *,
        keep_source_host: bool = False,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.layout = layout.resolve() if layout is not None else None
        self.git = git.resolve() if git is not None else None
        self.limits = limits
        self._walker = ImageWalker(
            self._read, present=self._present, keep_source_host=keep_source_host, limits=limits
        )
        self._view = ImageView(revision=("never read",))

    def describe(self) -> str:
        parts = []
        if self.layout is not None:
            parts.append(f"oci:{self.layout}")
        if self.git is not None:
            parts.append(f"git {self.git}")
        return ", ".join(parts)

    # --- refresh --------------------------------------------------------------

    def revision(self) -> Hashable:
        if self.layout is None:
            return None
        try:
            st = (self.layout / "index.json").stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def refresh(self) -> list[str]:
        if self.layout is None:
            self._view = ImageView()
            return []
        path = self.layout / "index.json"
        try:
            # A regular file only (a FIFO must not hang the server).
            with open_regular(
                path, limit=None, what="the layout's index", error=TargetError
            ) as fh:
                # The revision of exactly the file read (a rename may follow).
                st = os.fstat(fh.fileno())
                data = fh.read(self.limits.max_oci_manifest_bytes + 1)
        except TargetError:
            if not path.exists():
                self._view = ImageView()
                return []
            raise
        except OSError as exc:
            raise TargetError(f"{path}: cannot read the layout's index: {exc.strerror}") from None
        roots = [(e.annotations.get(REF_NAME, ""), e) for e in self._entries(path, data)]
        view, warnings = self._walker.view(
            roots, where=str(path), revision=(st.st_ino, st.st_mtime_ns, st.st_size)
        )
        self._view = view  # one assignment: requests see the old view or the new one
        return warnings

    def _entries(self, path: Path, data: bytes) -> list[Descriptor]:
        doc = loads_strict(
            data,
            what=str(path),
            max_bytes=self.limits.max_oci_manifest_bytes,
            max_depth=self.limits.max_json_depth,
            error=TargetError,
        )
        if isinstance(doc, dict):
            schemas.check(schemas.OCI_MANIFEST, doc, what=str(path), error=TargetError)
        manifests = doc.get("manifests") if isinstance(doc, dict) else None
        if not isinstance(manifests, list):
            raise TargetError(f"{path}: not an OCI index (no manifests list)")
        try:
            return [
                Descriptor.from_json(d, f"{path}: manifests[{i}]") for i, d in enumerate(manifests)
            ]
        except FormatError as exc:
            raise TargetError(exc.message) from None

    def _present(self, desc: Descriptor) -> bool:
        assert self.layout is not None
        return (self.layout / desc.digest.blob_path).is_file()

    def _read(self, desc: Descriptor) -> bytes:
        assert self.layout is not None
        path = self.layout / desc.digest.blob_path
        data = read_regular(
            path, limit=desc.size, what=f"manifest {desc.digest}", error=TargetError
        )
        if len(data) != desc.size or Digest.sha256_of(data) != desc.digest:
            raise TargetError(f"{path} does not match its digest or size")
        return data

    # --- registry ---------------------------------------------------------------

    def repositories(self) -> list[str]:
        return self._view.repositories()

    def tags(self, repository: str) -> list[str] | None:
        return self._view.tags(repository)

    def manifest(self, repository: str, reference: str) -> Manifest | None:
        return self._view.manifest(repository, reference)

    def blob(self, repository: str, digest: Digest) -> FileBlob | None:
        if self.layout is None or not self._view.has_blob(repository, digest):
            return None
        path = self.layout / digest.blob_path
        try:
            size = path.stat().st_size
        except OSError:
            return None
        return FileBlob(digest, size, path)

    def referrers(self, repository: str, subject: Digest) -> list[dict[str, Any]]:
        return self._view.referrers(repository, subject)

    def images(self) -> list[ImageSummary]:
        return self._view.images()

    # --- git ---------------------------------------------------------------------

    def git_repos(self) -> list[str]:
        if self.git is None:
            return []
        try:
            entries = sorted(p.name for p in self.git.iterdir())
        except OSError:
            return []
        names = [e[: -len(".git")] for e in entries if e.endswith(".git")]
        return [n for n in names if self.git_dir(n) is not None]

    def git_dir(self, name: str) -> Path | None:
        if self.git is None:
            return None
        try:
            check_repo_name(name, error=UsageError)
        except UsageError:
            return None
        path = self.git / f"{name}.git"
        return path if published(path) else None

    def repo_summary(self, name: str) -> RepoSummary | None:
        path = self.git_dir(name)
        return summary(name, path, max_refs=self.limits.max_page_refs) if path else None

    # --- the page, closing ----------------------------------------------------------

    def details(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        """Nothing held open between requests."""
