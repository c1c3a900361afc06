"""The interfaces every image source and image target adapter implements.

Sources: an OCI layout on disk, a docker-save archive, a registry (HTTP).
Targets: an OCI layout on disk, a registry. The export and import code talk
only to these protocols, so adding a transport touches no pipeline code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from airbundle.errors import TargetError
from airbundle.format.digest import Digest
from airbundle.format.mirrorconfig import CarriedImage, MirrorTrust
from airbundle.format.oci import Descriptor
from airbundle.format.reference import ImageReference


@dataclass(frozen=True)
class ResolvedImage:
    """The root of an image as a source holds it."""

    descriptor: Descriptor
    # The name the source records for the image (a layout's ref name, an
    # archive's RepoTag), used when the spec does not give one.
    recorded_name: str | None


class ImageSource(Protocol):
    def describe(self) -> str:
        """How to name this source in messages (the spec's ref text)."""
        ...

    def resolve(self) -> ResolvedImage: ...

    def read_manifest(self, descriptor: Descriptor) -> bytes:
        """The exact bytes of a manifest or index, checked against its digest."""
        ...

    def open_blob(self, descriptor: Descriptor) -> Iterator[bytes]:
        """The blob's bytes in chunks; the caller checks size and digest."""
        ...


class ReferringSource(ImageSource, Protocol):
    """A source that also finds the artifacts referring to an image
    (signatures, SBOMs, attestations): a registry."""

    def referrers(self, subject: Digest) -> list[tuple[Descriptor, str | None]]:
        """The artifacts that refer to `subject`: descriptor, and the tag it
        was found under (to keep in the target) or None."""
        ...

    def descriptor_of(self, digest: Digest) -> Descriptor | None:
        """A manifest by digest (a referrer pinned in a lock file), or None
        if the source no longer has it."""
        ...


@dataclass(frozen=True)
class MirrorEntries:
    """What mirror configuration lists for the images a target received."""

    images: list[CarriedImage]
    # How the import reached the mirror (plain HTTP, unchecked TLS, a private
    # CA): clients must be told the same.
    trust: MirrorTrust = field(default_factory=MirrorTrust)
    # Where that CA came from (--ca-file), for the import report.
    ca_file: Path | None = None

    @property
    def insecure(self) -> bool:
        return self.trust.insecure


class ImageTarget(Protocol):
    """Where imported images land. Blobs first, then manifests, tags last.

    `repo` strings are the target's own names for where an image lives: a
    registry repository path, or the full reference in an OCI layout.
    """

    def describe(self) -> str: ...

    def state_key(self) -> str:
        """The name the import state is kept under (`images=...`)."""
        ...

    def state_dir(self) -> Path | None:
        """Where the import state lives by default (inside a layout), or None
        for the user's state folder."""
        ...

    def report_folder(self) -> Path | None:
        """Where the import report goes by default (inside a layout), or None
        for none unless asked for."""
        ...

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Held for the whole import: another import into the same target waits."""
        ...

    def assign(
        self, refs: Sequence[ImageReference], *, max_nested_paths: int | None = None
    ) -> None:
        """Decide where each image goes, before anything is written (a registry
        maps references to repositories; two onto one is a UsageError);
        `max_nested_paths` flattens deeper paths, where the target needs it."""
        ...

    def preflight(self) -> dict[str, TargetError]:
        """For each assigned repository where a push cannot start, why (the
        target's refusal, with its status and codes); asked before anything is
        written and leaving nothing behind."""
        ...

    def referrers_api(self) -> bool | None:
        """Whether the target lists referrers itself (None: not known)."""
        ...

    def accepts_repeated_layers(self) -> bool | None:
        """Whether it takes a manifest listing one layer twice (None: not known)."""
        ...

    def index_referrers(self, repo: str, subject: Digest, referrers: Sequence[Descriptor]) -> None:
        """Make `referrers` findable from `subject` where the target has no
        referrers API of its own (a registry: the sha256-HEX fallback tag)."""
        ...

    def mirror_host(self) -> str | None:
        """The host clusters pull the imported images from, for mirror
        configuration; None where nothing pulls by host name (a layout)."""
        ...

    def mirror_entries(self) -> MirrorEntries:
        """Mirror configuration for the images assigned."""
        ...

    def list_blobs(self) -> set[Digest]:
        """Every blob and manifest digest the target holds (for an inventory)."""
        ...

    def prepare(self) -> None:
        """Create what must exist before anything is written."""
        ...

    def locate(self, ref: ImageReference) -> str:
        """The target repository for an image carried under `ref`."""
        ...

    def warm(self, needed: dict[Digest, list[str]]) -> None:
        """Learn, in one go, which of these blobs the target already has."""
        ...

    def has_blob(self, digest: Digest, repos: Sequence[str], *, anywhere: bool = False) -> bool:
        """True if the blob is available to every repo in `repos` (with
        `anywhere`, a copy elsewhere in the target that can be linked counts)."""
        ...

    def write_blob(
        self, digest: Digest, size: int, chunks: Iterable[bytes], repos: Sequence[str]
    ) -> None:
        """Store a blob; it must not be visible under its digest until complete
        and checked. `chunks` raises if the bytes do not match the manifest."""
        ...

    def drain(self) -> None:
        """Wait until every blob written so far is stored (background uploads)."""
        ...

    def read_blob(self, repo: str, digest: Digest, size: int) -> Iterator[bytes]:
        """The bytes of a blob the target holds (a chart an incremental bundle
        left out, for import --charts); the caller checks size and digest."""
        ...

    def put_manifest(self, repo: str, digest: Digest, media_type: str, data: bytes) -> None:
        """Store a manifest or index by digest (children before parents)."""
        ...

    def tag(self, repo: str, ref: ImageReference, media_type: str, data: bytes) -> str:
        """Make the image findable under `ref`; returns where, for the report."""
        ...

    def finish(self) -> None:
        """Make the tags visible (atomically, where the target allows)."""
        ...

    def published(self, ref: ImageReference) -> Digest | None:
        """What the target answers now for the image published under `ref` (by
        its tag, or by its digest when it has no tag), as a client asking for
        it would see it; None if it does not answer. The proof of an import."""
        ...


class FixedRootSource:
    """Another image of the same source, rooted at a known descriptor (an
    artifact found through the referrers of an image)."""

    def __init__(self, source: ImageSource, root: Descriptor, text: str) -> None:
        self._source = source
        self._root = root
        self._text = text

    def describe(self) -> str:
        return self._text

    def resolve(self) -> ResolvedImage:
        return ResolvedImage(self._root, None)

    def read_manifest(self, descriptor: Descriptor) -> bytes:
        return self._source.read_manifest(descriptor)

    def open_blob(self, descriptor: Descriptor) -> Iterator[bytes]:
        return self._source.open_blob(descriptor)
