"""The OCI layouts vet commands read (export --vet-command ... {layout}).

Every blob an export vets is downloaded once into a store beside the output
(checked against its digest), and each image gets a layout of its own that
holds just that image: its documents and hard links to the store's blobs,
read-only. The bundle is then written from the store, so vetting costs no
second download. `MemorySource` serves an artifact made on the spot (a vet
report) to the bundle writer.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from airbundle.adapters.fsutil import TEMP_MARK
from airbundle.adapters.images import ImageSource, ResolvedImage
from airbundle.errors import SourceError
from airbundle.format.digest import Digest
from airbundle.format.oci import LAYOUT_FILE, REF_NAME, Descriptor, layout_index
from airbundle.format.reference import ImageReference
from airbundle.limits import DEFAULT_LIMITS, Limits

_READ_ONLY = 0o444


class BlobStore:
    """Blobs by digest in `root/blobs/sha256/`, each written once, complete
    and checked before it gets its name."""

    def __init__(self, root: Path, *, limits: Limits = DEFAULT_LIMITS) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.limits = limits
        self._lock = threading.Lock()
        self._busy: dict[Digest, threading.Lock] = {}

    def path(self, digest: Digest) -> Path:
        return self.blobs / digest.hex

    def has(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def put_bytes(self, digest: Digest, data: bytes) -> Path:
        return self._fill(digest, len(data), iter([data]), what=f"document {digest}")

    def fetch(self, desc: Descriptor, source: ImageSource) -> Path:
        return self._fill(desc.digest, desc.size, source.open_blob(desc), what=source.describe())

    def _fill(self, digest: Digest, size: int, chunks: Iterator[bytes], *, what: str) -> Path:
        with self._lock:
            busy = self._busy.setdefault(digest, threading.Lock())
        with busy:  # two images sharing a layer download it once
            path = self.path(digest)
            if path.is_file():
                return path
            temp = path.with_name(f"{TEMP_MARK}{digest.hex}")
            h = hashlib.sha256()
            count = 0
            try:
                with temp.open("wb") as fh:
                    for chunk in chunks:
                        count += len(chunk)
                        if count > size:
                            break
                        h.update(chunk)
                        fh.write(chunk)
                if count != size or h.hexdigest() != digest.hex:
                    raise SourceError(f"{what}: blob {digest} does not match its digest or size")
                temp.chmod(_READ_ONLY)
                temp.replace(path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    temp.unlink()
            return path

    def layout(
        self, folder: Path, ref: ImageReference, root: Descriptor, blobs: list[Digest]
    ) -> Path:
        """An OCI layout at `folder` holding just the image rooted at `root`
        (whose documents and blobs, `blobs`, are in the store)."""
        folder.mkdir(parents=True)
        target = folder / "blobs" / "sha256"
        target.mkdir(parents=True)
        for digest in dict.fromkeys(blobs):
            link = target / digest.hex
            try:
                os.link(self.path(digest), link)
            except OSError:
                shutil.copyfile(self.path(digest), link)
                link.chmod(_READ_ONLY)
        (folder / "oci-layout").write_bytes(LAYOUT_FILE)
        annotations = {REF_NAME: ref.tag} if ref.tag else {}
        entry = Descriptor(root.media_type, root.digest, root.size, annotations=annotations)
        (folder / "index.json").write_bytes(layout_index([entry]))
        return folder


class StoreSource:
    """An image source whose blobs come from the store where present (vetted
    images), else from where they were found."""

    def __init__(self, store: BlobStore, fallback: ImageSource) -> None:
        self.store = store
        self.fallback = fallback
        self.chunk = store.limits.io_chunk_bytes

    def describe(self) -> str:
        return self.fallback.describe()

    def resolve(self) -> ResolvedImage:
        return self.fallback.resolve()

    def read_manifest(self, descriptor: Descriptor) -> bytes:
        return self.fallback.read_manifest(descriptor)

    def open_blob(self, descriptor: Descriptor) -> Iterator[bytes]:
        if not self.store.has(descriptor.digest):
            return self.fallback.open_blob(descriptor)
        return self._read(self.store.path(descriptor.digest))

    def _read(self, path: Path) -> Iterator[bytes]:
        with path.open("rb") as fh:
            while chunk := fh.read(self.chunk):
                yield chunk


class MemorySource:
    """An artifact made by the export itself (a vet report): its manifest and
    blobs are bytes in memory."""

    def __init__(self, text: str, root: Descriptor, documents: dict[Digest, bytes]) -> None:
        self.text = text
        self.root = root
        self.documents = documents

    def describe(self) -> str:
        return self.text

    def resolve(self) -> ResolvedImage:
        return ResolvedImage(self.root, None)

    def read_manifest(self, descriptor: Descriptor) -> bytes:
        return self.documents[descriptor.digest]

    def open_blob(self, descriptor: Descriptor) -> Iterator[bytes]:
        return iter([self.documents[descriptor.digest]])
