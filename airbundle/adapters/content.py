"""What `serve` serves from: the ContentStore protocol.

The HTTP layer (adapters/serve_http.py) talks only to this protocol, so the
same handlers serve an OCI layout with bare repositories as `import` writes
them (adapters/layout_store.py) or a bundle read in place
(adapters/bundle_store.py). A store is read-only and keeps no state of its own
beyond a cache of what it read: any number of instances over the same folders
or media give the same answers.

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
    # A descriptor the store holds open on `path` (the very file it checked):
    # the sender reads through a duplicate of it rather than opening the path
    # again, so a file replaced on the media in between never goes out.
    fd: int | None = field(default=None, compare=False)


class Blob(Protocol):
    """One blob, found in a repository."""

    @property
    def digest(self) -> Digest: ...

    @property
    def size(self) -> int: ...

    def check(self) -> None:
        """Raise (an AirbundleError) unless the store can vouch for every byte of
        the blob, before any is sent: a bundle member is hashed in full against
        the signed manifest the first time. May take long: call it off the
        event loop."""
        ...

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
        """The bare repository `git http-backend` serves for `name`, if published.
        May take long the first time (a bundle's repo is indexed into the cache),
        and raises if the repo cannot be vouched for: call it off the event loop."""
        ...

    def repo_summary(self, name: str) -> RepoSummary | None:
        """Refs and HEAD of a served repository, for the page (no indexing)."""
        ...

    def details(self) -> dict[str, Any]:
        """More for the page at `/` (a bundle's name, signers, channel...)."""
        ...

    def close(self) -> None: ...
