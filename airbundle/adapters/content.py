"""What `serve` serves from: the ContentStore protocol.

The HTTP layer (adapters/serve_http.py) talks only to this protocol, so the
same handlers serve an OCI layout with bare repositories as `import` writes
them (adapters/layout_store.py) or, later, a bundle read in place. A store is
read-only and keeps no state of its own beyond a cache of what it read: any
number of instances over the same folders give the same answers.

Names are repository names as clients ask for them (already mapped, as
`import --registry HOST/PREFIX` maps them); references are tags or digests.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from airbundle.format.digest import Digest
from airbundle.format.oci import Platform


@dataclass(frozen=True)
class FileSpan:
    """`length` bytes of a file from `offset`: what can go out by sendfile."""

    path: Path
    offset: int
    length: int


class Blob(Protocol):
    """One blob, found in a repository."""

    @property
    def digest(self) -> Digest: ...

    @property
    def size(self) -> int: ...

    def spans(self, start: int, end: int) -> Sequence[FileSpan] | None:
        """File spans holding exactly bytes [start, end) of the blob, in order, for
        zero-copy sending; None if the bytes must be read through `chunks`."""
        ...

    def chunks(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) of the blob; raises if the store cannot vouch for them."""
        ...


@dataclass(frozen=True)
class Manifest:
    media_type: str
    digest: Digest
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class ImageSummary:
    """One tag (or untagged manifest) for the page at `/`."""

    repository: str
    tag: str | None
    source: str  # the name the image was carried under
    digest: Digest
    media_type: str
    platforms: tuple[Platform, ...]
    size: int  # manifests, configs and layers, each blob counted once


@dataclass(frozen=True)
class RepoSummary:
    name: str
    head: str | None
    refs: tuple[tuple[str, str], ...]  # (ref, commit)
    subjects: dict[str, str] = field(default_factory=dict)  # commit -> subject line


class ContentStore(Protocol):
    def describe(self) -> str:
        """What is served, for messages (`oci:/srv/images`, a bundle path)."""
        ...

    def revision(self) -> Hashable:
        """A cheap token (a stat, no read) that changes whenever what the store
        serves may have changed; compared on every request."""
        ...

    def refresh(self) -> list[str]:
        """Read the content again (may be slow: call it off the event loop); the
        old view keeps answering until the new one is complete, so a half-written
        state is never served. Returns warnings (images left out, and why)."""
        ...

    def repositories(self) -> list[str]: ...

    def tags(self, repository: str) -> list[str] | None:
        """The repository's tags, or None if there is no such repository."""
        ...

    def manifest(self, repository: str, reference: str) -> Manifest | None:
        """The manifest a tag or digest names in the repository."""
        ...

    def blob(self, repository: str, digest: Digest) -> Blob | None:
        """A blob (config, layer, or manifest) the repository's images reference."""
        ...

    def referrers(self, repository: str, subject: Digest) -> list[dict[str, Any]]:
        """Descriptors of the manifests whose `subject` is `subject` (with
        `artifactType` and `annotations`, as the referrers API lists them)."""
        ...

    def images(self) -> list[ImageSummary]: ...

    def git_repos(self) -> list[str]:
        """Names of the git repositories served (published ones only)."""
        ...

    def git_dir(self, name: str) -> Path | None:
        """The bare repository `git http-backend` serves for `name`, if published."""
        ...
