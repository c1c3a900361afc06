"""The interfaces every image source and image target adapter implements.

Sources: an OCI layout on disk, a docker-save archive, a registry (HTTP).
Targets: an OCI layout on disk, a registry. The export and import code talk
only to these protocols, so adding a transport touches no pipeline code.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from airbundle.format.digest import Digest
from airbundle.format.oci import Descriptor


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


class ImageTarget(Protocol):
    """Where imported images land. Blobs first, then manifests, tags last."""

    def describe(self) -> str: ...

    def prepare(self) -> None:
        """Create what must exist before anything is written."""
        ...

    def has_blob(self, digest: Digest) -> bool: ...

    def write_blob(self, digest: Digest, size: int, chunks: Iterable[bytes]) -> None:
        """Store a blob; must not be visible under its digest until complete
        and checked. Raises IntegrityError if the bytes do not match."""
        ...

    def tag(self, entries: list[tuple[str, Descriptor]]) -> None:
        """Point each full reference at its root descriptor, atomically."""
        ...
