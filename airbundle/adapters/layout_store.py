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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airbundle.adapters.content import FileSpan, ImageSummary, Manifest
from airbundle.adapters.git_serve import published
from airbundle.errors import FormatError, TargetError, UsageError
from airbundle.format.digest import Digest
from airbundle.format.distribution import referrer_descriptor
from airbundle.format.jsonutil import loads_strict
from airbundle.format.mapping import MappingOptions, RegistryLocation, target_repository
from airbundle.format.oci import REF_NAME, SPARSE_INDEX, Descriptor, Platform, parse_manifest
from airbundle.format.paths import check_repo_name
from airbundle.format.reference import ImageReference
from airbundle.limits import DEFAULT_LIMITS, Limits

# The host part is dropped by the mapping; a placeholder keeps RegistryLocation whole.
_HERE = RegistryLocation("serve.invalid", "")


@dataclass(frozen=True)
class FileBlob:
    digest: Digest
    size: int
    path: Path

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


@dataclass
class _Doc:
    manifest: Manifest
    children: tuple[Descriptor, ...]
    blobs: tuple[Descriptor, ...]
    subject: Digest | None
    referrer: dict[str, Any]


@dataclass
class _Repo:
    tags: dict[str, Digest] = field(default_factory=dict)
    manifests: set[Digest] = field(default_factory=set)
    blobs: set[Digest] = field(default_factory=set)
    referrers: dict[Digest, dict[Digest, dict[str, Any]]] = field(default_factory=dict)
    roots: list[tuple[str | None, str, Digest]] = field(default_factory=list)  # tag, source


@dataclass
class _View:
    revision: Hashable = None
    repos: dict[str, _Repo] = field(default_factory=dict)


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
        self.mapping = MappingOptions(keep_source_host=keep_source_host)
        self.limits = limits
        self._view = _View(revision=("never read",))
        # Manifests are content-addressed: a digest read once never changes.
        self._docs: dict[Digest, _Doc] = {}

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
            self._view = _View()
            return []
        warnings: list[str] = []
        path = self.layout / "index.json"
        try:
            with path.open("rb") as fh:
                # The revision of exactly the file read (a rename may follow).
                st = os.fstat(fh.fileno())
                data = fh.read(self.limits.max_oci_manifest_bytes + 1)
        except FileNotFoundError:
            self._view = _View()
            return []
        except OSError as exc:
            raise TargetError(f"{path}: cannot read the layout's index: {exc.strerror}") from None
        view = _View(revision=(st.st_ino, st.st_mtime_ns, st.st_size))
        owners: dict[str, str] = {}
        for entry in self._entries(path, data):
            name = entry.annotations.get(REF_NAME, "")
            try:
                ref = ImageReference.parse(name)
                repo_name = target_repository(ref, _HERE, self.mapping)
            except (FormatError, UsageError) as exc:
                warnings.append(f"{path}: image {name!r} left out: {exc.message}")
                continue
            owner = owners.setdefault(repo_name, ref.name)
            if owner != ref.name:
                warnings.append(
                    f"{path}: {ref} left out: {owner} is already served as {repo_name} "
                    "(serve with --keep-source-host to keep both)"
                )
                continue
            repo = view.repos.get(repo_name) or _Repo()
            try:
                self._walk(repo, entry)
            except (FormatError, TargetError) as exc:
                warnings.append(f"{path}: image {name!r} left out: {exc.message}")
                continue
            view.repos[repo_name] = repo
            repo.roots.append((ref.tag, str(ref), entry.digest))
            if ref.tag is not None:
                repo.tags[ref.tag] = entry.digest
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
        manifests = doc.get("manifests") if isinstance(doc, dict) else None
        if not isinstance(manifests, list):
            raise TargetError(f"{path}: not an OCI index (no manifests list)")
        try:
            return [
                Descriptor.from_json(d, f"{path}: manifests[{i}]") for i, d in enumerate(manifests)
            ]
        except FormatError as exc:
            raise TargetError(exc.message) from None

    def _walk(self, repo: _Repo, root: Descriptor) -> None:
        """Every manifest under `root` (an index's children, nested), the blobs
        they reference, and the referrers among them."""
        pending = [(root, 0)]
        found: list[_Doc] = []
        # A platform subset tagged under its upstream digest: the platforms
        # left behind are absent on purpose; serve what is there.
        sparse = root.annotations.get(SPARSE_INDEX) == "true"
        assert self.layout is not None
        blobs = self.layout
        while pending:
            desc, depth = pending.pop()
            if depth > 4:
                raise TargetError(f"index {desc.digest} nests deeper than 4 levels")
            if sparse and depth == 1 and not (blobs / desc.digest.blob_path).is_file():
                continue
            doc = self._doc(desc)
            found.append(doc)
            pending.extend((child, depth + 1) for child in doc.children)
        # Only once the whole image is readable does any of it join the repo.
        for doc in found:
            digest = doc.manifest.digest
            repo.manifests.add(digest)
            repo.blobs.update(b.digest for b in doc.blobs)
            if doc.subject is not None:
                repo.referrers.setdefault(doc.subject, {})[digest] = doc.referrer

    def _doc(self, desc: Descriptor) -> _Doc:
        known = self._docs.get(desc.digest)
        if known is not None:
            return known
        assert self.layout is not None
        path = self.layout / desc.digest.blob_path
        if desc.size > self.limits.max_oci_manifest_bytes:
            raise TargetError(f"manifest {desc.digest} is too large ({desc.size} bytes)")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TargetError(f"manifest {desc.digest} is missing ({exc.strerror})") from None
        if len(data) != desc.size or Digest.sha256_of(data) != desc.digest:
            raise TargetError(f"{path} does not match its digest or size")
        parsed = parse_manifest(
            data, declared_type=desc.media_type, where=f"manifest {desc.digest}", limits=self.limits
        )
        raw = loads_strict(
            data,
            what=str(path),
            max_bytes=self.limits.max_oci_manifest_bytes,
            max_depth=self.limits.max_json_depth,
            error=TargetError,
        )
        manifest = Manifest(parsed.media_type, desc.digest, data)
        referrer = referrer_descriptor(
            raw, media_type=parsed.media_type, digest=desc.digest, size=len(data)
        )
        subject = parsed.subject.digest if parsed.subject is not None else None
        doc = _Doc(manifest, parsed.children, parsed.blobs, subject, referrer)
        self._docs[desc.digest] = doc
        return doc

    # --- registry ---------------------------------------------------------------

    def repositories(self) -> list[str]:
        return sorted(self._view.repos)

    def tags(self, repository: str) -> list[str] | None:
        repo = self._view.repos.get(repository)
        return None if repo is None else sorted(repo.tags)

    def manifest(self, repository: str, reference: str) -> Manifest | None:
        repo = self._view.repos.get(repository)
        if repo is None:
            return None
        digest = repo.tags.get(reference) if ":" not in reference else Digest.parse(reference)
        if digest is None or digest not in repo.manifests:
            return None
        doc = self._docs.get(digest)
        return doc.manifest if doc is not None else None

    def blob(self, repository: str, digest: Digest) -> FileBlob | None:
        repo = self._view.repos.get(repository)
        if repo is None or self.layout is None:
            return None
        if digest not in repo.blobs and digest not in repo.manifests:
            return None
        path = self.layout / digest.blob_path
        try:
            size = path.stat().st_size
        except OSError:
            return None
        return FileBlob(digest, size, path)

    def referrers(self, repository: str, subject: Digest) -> list[dict[str, Any]]:
        repo = self._view.repos.get(repository)
        if repo is None:
            return []
        found = repo.referrers.get(subject, {})
        return [found[d] for d in sorted(found)]

    def images(self) -> list[ImageSummary]:
        out = []
        for name, repo in sorted(self._view.repos.items()):
            for tag, source, digest in sorted(repo.roots, key=lambda r: (r[0] or "", r[1])):
                doc = self._docs[digest]
                platforms: list[Platform] = []
                sizes: dict[Digest, int] = {}
                pending = [doc]
                while pending:
                    current = pending.pop()
                    sizes[current.manifest.digest] = current.manifest.size
                    sizes.update((b.digest, b.size) for b in current.blobs)
                    for child in current.children:
                        if child.platform is not None:
                            platforms.append(child.platform)
                        if child.digest in self._docs:
                            pending.append(self._docs[child.digest])
                out.append(
                    ImageSummary(
                        name,
                        tag,
                        source,
                        digest,
                        doc.manifest.media_type,
                        tuple(platforms),
                        sum(sizes.values()),
                    )
                )
        return out

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
