"""Images pulled straight from a registry during export."""

from __future__ import annotations

from collections.abc import Iterator

from airbundle.adapters.blobcache import BlobCache
from airbundle.adapters.images import ResolvedImage
from airbundle.adapters.registry.client import FetchedManifest, RegistryClient
from airbundle.errors import SourceError
from airbundle.format.digest import Digest
from airbundle.format.oci import OCI_INDEX, OCI_MANIFEST, Descriptor, parse_manifest
from airbundle.format.reference import ImageReference


class RegistryImageSource:
    def __init__(
        self,
        ref: ImageReference,
        client: RegistryClient,
        *,
        text: str,
        cache: BlobCache | None = None,
    ) -> None:
        self.ref = ref
        self.client = client
        self.text = text
        self.cache = cache
        self._root: FetchedManifest | None = None

    def describe(self) -> str:
        return self.text

    def resolve(self) -> ResolvedImage:
        reference = str(self.ref.digest) if self.ref.digest else (self.ref.tag or "latest")
        fetched = self.client.get_manifest(self.ref.repository, reference, expect=self.ref.digest)
        if not fetched.media_type:
            raise SourceError(f"{self.text}: registry sent no Content-Type for the manifest")
        self._root = fetched
        desc = Descriptor(fetched.media_type, fetched.digest, len(fetched.data))
        return ResolvedImage(desc, str(self.ref))

    def read_manifest(self, descriptor: Descriptor) -> bytes:
        if self._root is not None and self._root.digest == descriptor.digest:
            return self._root.data
        fetched = self.client.get_manifest(
            self.ref.repository, str(descriptor.digest), expect=descriptor.digest
        )
        if len(fetched.data) != descriptor.size:
            raise SourceError(
                f"{self.text}: manifest {descriptor.digest} has {len(fetched.data)} "
                f"bytes, its descriptor says {descriptor.size}"
            )
        return fetched.data

    def referrers(self, subject: Digest) -> list[tuple[Descriptor, str | None]]:
        """Artifacts that refer to `subject`: (descriptor, tag to keep or None).

        The referrers API when the registry has it, else the OCI fallback tag
        (sha256-HEX, an index kept under that tag); plus cosign's own tags
        (sha256-HEX.sig/.att/.sbom), which most signed images still use.
        """
        repo = self.ref.repository
        found: list[tuple[Descriptor, str | None]] = []
        fallback_tag = f"{subject.algorithm}-{subject.hex}"
        index = self.client.referrers(repo, subject)
        if index is None:
            index = self.client.find_manifest(repo, fallback_tag)
            if index is not None:
                found.append(
                    (
                        Descriptor(index.media_type or OCI_INDEX, index.digest, len(index.data)),
                        fallback_tag,
                    )
                )
        if index is not None:
            parsed = parse_manifest(
                index.data, declared_type=OCI_INDEX, where=f"{self.text}: referrers of {subject}"
            )
            found += [(child, None) for child in parsed.children]
        for suffix in ("sig", "att", "sbom"):
            tag = f"{fallback_tag}.{suffix}"
            fetched = self.client.find_manifest(repo, tag)
            if fetched is not None:
                found.append(
                    (
                        Descriptor(
                            fetched.media_type or OCI_MANIFEST, fetched.digest, len(fetched.data)
                        ),
                        tag,
                    )
                )
        unique: dict[Digest, tuple[Descriptor, str | None]] = {}
        for desc, keep_tag in found:
            if desc.digest not in unique or keep_tag:
                unique[desc.digest] = (desc, keep_tag)
        return list(unique.values())

    def descriptor_of(self, digest: Digest) -> Descriptor | None:
        """A manifest of this repository by digest (a referrer pinned in a lock),
        or None if the registry no longer has it."""
        fetched = self.client.find_manifest(self.ref.repository, str(digest), expect=digest)
        if fetched is None:
            return None
        return Descriptor(fetched.media_type or OCI_MANIFEST, fetched.digest, len(fetched.data))

    def open_blob(self, descriptor: Descriptor) -> Iterator[bytes]:
        if self.cache is not None:
            cached = self.cache.get(descriptor.digest, descriptor.size)
            if cached is not None:
                return cached
        chunks = self.client.blob_chunks(self.ref.repository, descriptor.digest, descriptor.size)
        if self.cache is not None:
            return self.cache.tee(descriptor.digest, descriptor.size, chunks)
        return chunks
